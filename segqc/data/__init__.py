"""Data: the `Case` type, reading and writing images and masks, dataset layouts, label
lookup, and realistic bad masks made from good ones (`corrupt`)."""

from segqc.data.case import Case, Geometry
from segqc.data.errors import CaseError
from segqc.data.images import is_photo, read_image, read_mask, write_image, write_mask
from segqc.data.layouts import LAYOUTS, CaseRef, detect_layout, load_dataset, read_manifest

__all__ = ["LAYOUTS", "Case", "CaseError", "CaseRef", "Geometry", "detect_layout", "is_photo", "load_dataset",
           "read_image", "read_manifest", "read_mask", "write_image", "write_mask"]
