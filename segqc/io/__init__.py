"""Reading and writing cases: formats (`images`) and dataset layouts (`layouts`)."""

from segqc.io.images import is_photo, read_image, read_mask, write_image, write_mask
from segqc.io.layouts import LAYOUTS, CaseRef, detect_layout, load_dataset, read_manifest

__all__ = ["read_image", "read_mask", "write_image", "write_mask", "is_photo",
           "CaseRef", "load_dataset", "detect_layout", "read_manifest", "LAYOUTS"]
