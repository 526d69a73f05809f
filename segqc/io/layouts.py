"""Find the cases of a dataset on disk, whatever its layout.

Layouts:
  * ``nnunet``: ``imagesTr/<id>_0000.nii.gz`` (+ ``_0001``... channels), ``labelsTr/<id>.nii.gz``;
    ``imagesTs`` with ``split="Ts"``.
  * ``msd``: Medical Segmentation Decathlon, ``imagesTr/<id>.nii.gz`` (4D for several
    modalities) + ``labelsTr/<id>.nii.gz`` (+ ``dataset.json``).
  * ``flat``: ``images/`` and ``masks/`` (or ``labels/``) folders whose files share a
    name stem, as in Kvasir-SEG; or any two folders given explicitly.
  * ``csv``: a manifest with columns ``case_id,image,mask`` (optional ``truth``,
    ``group``; several channel files joined by ``;``), paths relative to the CSV.

Listing never reads pixels: a `CaseRef` is loaded only when the batch reaches it, so
one unreadable file fails one case, not the run.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segqc.case import Case
from segqc.errors import CaseError
from segqc.io.images import MEDICAL_SUFFIXES, PHOTO_SUFFIXES, read_image, read_mask, suffix_of

__all__ = ["CaseRef", "load_dataset", "detect_layout", "read_manifest", "LAYOUTS"]

LAYOUTS = ("auto", "nnunet", "msd", "flat", "csv")
_CHANNEL = re.compile(r"^(?P<id>.+)_(?P<ch>\d{4})$")


@dataclass(frozen=True)
class CaseRef:
    """Where one case lives on disk; `load()` reads and checks it."""

    case_id: str
    image: tuple[Path, ...]
    mask: Path | None = None
    truth: Path | None = None
    group: str | None = None
    extra: dict = field(default_factory=dict, hash=False, compare=False)

    def load(self, *, require_mask: bool = True, tol: float = 1e-3) -> Case:
        """Read image, mask and (optional) truth, and check they share one grid.

        Raises:
            CaseError: naming this case and the reason (missing file, unreadable file,
                shape or geometry mismatch, non-label mask, NaNs).
        """
        try:
            image, geometry = read_image(list(self.image) if len(self.image) > 1 else self.image[0])
            mask = truth = None
            if self.mask is not None:
                mask = self._read_on_grid(self.mask, image, geometry, tol, "mask")
            elif require_mask:
                raise ValueError("no mask file for this case")
            if self.truth is not None:
                truth = self._read_on_grid(self.truth, image, geometry, tol, "truth")
        except CaseError:
            raise
        except (OSError, ValueError, RuntimeError) as e:
            raise CaseError(self.case_id, str(e)) from None
        meta = {"image": [str(p) for p in self.image], "mask": str(self.mask) if self.mask else None,
                "group": self.group, **self.extra}
        return Case(self.case_id, image, mask, geometry, truth=truth, meta=meta)

    @staticmethod
    def _read_on_grid(path: Path, image: np.ndarray, geometry, tol: float, what: str) -> np.ndarray:
        mask, mgeo = read_mask(path)
        if mask.shape != image.shape[1:]:
            raise ValueError(f"{what} shape {mask.shape} differs from image shape {image.shape[1:]} ({path.name})")
        why = geometry.mismatch(mgeo, tol)
        if why:
            raise ValueError(f"{what} geometry differs from the image: {why} ({path.name})")
        return mask


def _strip(path: Path) -> str:
    return path.name[: -len(suffix_of(path))]


def _list_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and suffix_of(p) in MEDICAL_SUFFIXES + PHOTO_SUFFIXES
                  and not p.name.startswith("."))


def detect_layout(path: str | Path) -> str:
    """Guess the layout of ``path`` (see module docstring)."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return "csv"
    if not path.is_dir():
        raise FileNotFoundError(f"dataset not found: {path}")
    for images in ("imagesTr", "imagesTs"):
        if (path / images).is_dir():
            files = _list_files(path / images)
            return "nnunet" if files and all(_CHANNEL.match(_strip(f)) for f in files) else "msd"
    if (path / "images").is_dir() and any((path / m).is_dir() for m in ("masks", "labels")):
        return "flat"
    raise ValueError(f"cannot tell the layout of {path}: expected imagesTr/ + labelsTr/ (nnU-Net, MSD), "
                     "images/ + masks/ (flat) or a .csv manifest")


def load_dataset(path: str | Path, *, layout: str = "auto", masks: str | Path | None = None,
                 split: str = "Tr", require_masks: bool = True) -> list[CaseRef]:
    """List the cases of a dataset.

    Args:
        path: dataset folder, images folder (with ``masks``) or CSV manifest.
        layout: one of ``LAYOUTS``; ``auto`` detects it.
        masks: a masks folder to pair with the images folder ``path`` (flat layout);
            overrides the dataset's own labels (e.g. candidate masks of a model).
        split: ``Tr`` or ``Ts`` for nnU-Net / MSD folders.
        require_masks: raise when an image has no mask.

    Returns:
        `CaseRef` list sorted by case id.
    """
    from segqc.utils import look_up_option

    layout = look_up_option(layout, LAYOUTS)
    path = Path(path)
    if masks is not None and layout == "auto" and path.is_dir() and not (path / "imagesTr").is_dir():
        return _pair(_list_files(path), Path(masks), require_masks, str_id=_strip)
    if layout == "auto":
        layout = detect_layout(path)
    if layout == "csv":
        return read_manifest(path)
    if layout in ("nnunet", "msd"):
        images = path / f"images{split}"
        if not images.is_dir():
            raise FileNotFoundError(f"{images} does not exist")
        label_dir = Path(masks) if masks is not None else path / f"labels{split}"
        files = _list_files(images)
        if layout == "nnunet":
            groups: dict[str, list[Path]] = {}
            for f in files:
                m = _CHANNEL.match(_strip(f))
                if not m:
                    raise ValueError(f"{f.name} in an nnU-Net folder lacks the _0000 channel suffix")
                groups.setdefault(m["id"], []).append(f)
            refs = []
            for cid, chans in sorted(groups.items()):
                mask = _find(label_dir, cid, suffix_of(chans[0]))
                if mask is None and require_masks and label_dir.is_dir():
                    raise FileNotFoundError(f"no label for case {cid} in {label_dir}")
                refs.append(CaseRef(cid, tuple(sorted(chans)), mask))
            return refs
        require = require_masks and label_dir.is_dir()
        return _pair(files, label_dir, require, str_id=_strip)
    # flat
    mask_dir = Path(masks) if masks else next(path / m for m in ("masks", "labels") if (path / m).is_dir())
    return _pair(_list_files(path / "images"), mask_dir, require_masks, str_id=_strip)


def _find(folder: Path, stem: str, prefer_suffix: str) -> Path | None:
    if not folder.is_dir():
        return None
    for s in (prefer_suffix,) + MEDICAL_SUFFIXES + PHOTO_SUFFIXES:
        p = folder / f"{stem}{s}"
        if p.exists():
            return p
    return None


def _pair(images: list[Path], mask_dir: Path, require: bool, str_id) -> list[CaseRef]:
    refs = []
    for img in images:
        cid = str_id(img)
        mask = _find(mask_dir, cid, suffix_of(img))
        if mask is None and require:
            raise FileNotFoundError(f"no mask named {cid}.* in {mask_dir} for image {img.name}")
        refs.append(CaseRef(cid, (img,), mask))
    return refs


def read_manifest(path: str | Path, *, root: str | Path | None = None, image_col: str = "image",
                  mask_col: str = "mask", truth_col: str = "truth", group_col: str = "group",
                  id_col: str = "case_id") -> list[CaseRef]:
    """Read a CSV manifest; other columns are kept in ``CaseRef.extra``.

    Missing files are not checked here: they fail their own case when it is loaded.
    """
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {id_col, image_col} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"manifest {path} lacks column(s) {sorted(missing)}; has {reader.fieldnames}")
        rows = list(reader)
    refs = []
    seen: dict[str, int] = {}
    used = {id_col, image_col, mask_col, truth_col, group_col}

    def resolve(p):
        return (root / p) if p and not Path(p).is_absolute() else (Path(p) if p else None)

    for row in rows:
        cid = row[id_col]
        # the same image may appear with several candidate masks (one per model)
        key = cid if cid not in seen else f"{cid}#{seen[cid]}"
        seen[cid] = seen.get(cid, 0) + 1
        refs.append(CaseRef(
            case_id=key,
            image=tuple(resolve(p) for p in row[image_col].split(";")),
            mask=resolve(row.get(mask_col) or ""),
            truth=resolve(row.get(truth_col) or ""),
            group=row.get(group_col) or None,
            extra={k: v for k, v in row.items() if k not in used},
        ))
    return refs
