"""Reading and writing cases: formats (`images`) and dataset layouts (`layouts`)."""

from segqc.io.images import is_photo, read_image, read_mask, write_image, write_mask
from segqc.io.layouts import LAYOUTS, CaseRef, detect_layout, load_dataset, read_manifest

__all__ = ["LAYOUTS", "CaseRef", "detect_layout", "is_photo", "load_dataset", "read_image", "read_manifest",
           "read_mask", "write_image", "write_mask"]
