"""segqc — quality control of medical image segmentations without a manual ground truth."""

__version__ = "0.1.0"

from segqc.data.case import Case, Geometry  # noqa: E402

__all__ = ["Case", "Geometry", "__version__"]
