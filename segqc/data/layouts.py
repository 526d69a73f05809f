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

from segqc.data.case import Case
from segqc.data.errors import CaseError
from segqc.data.images import MEDICAL_SUFFIXES, PHOTO_SUFFIXES, read_image, read_mask, suffix_of

__all__ = ["LAYOUTS", "CaseRef", "detect_layout", "guess_root", "load_dataset", "read_manifest"]

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
    # why this case cannot be loaded, found while listing (no mask file, empty manifest cell): raised by `load()`
    problem: str | None = None

    def load(self, *, require_mask: bool = True, tol: float = 1e-3) -> Case:
        """Read image, mask and (optional) truth, and check they share one grid.

        Raises:
            CaseError: naming this case and the reason (a problem found while listing it,
                missing or unreadable file, shape or geometry mismatch, non-label mask, NaNs).
        """
        if self.problem:
            raise CaseError(self.case_id, self.problem)
        if not self.image:
            raise CaseError(self.case_id, "no image file for this case")
        reading = self.image[0]  # the file being read, for an error that does not name it
        try:
            image, geometry = read_image(list(self.image) if len(self.image) > 1 else self.image[0])
            mask = truth = None
            if self.mask is not None:
                reading = self.mask
                mask = self._read_on_grid(self.mask, image, geometry, tol, "mask")
            elif require_mask:
                raise ValueError("no mask file for this case")
            if self.truth is not None:
                reading = self.truth
                truth = self._read_on_grid(self.truth, image, geometry, tol, "truth")
        except CaseError:
            raise
        except MemoryError:
            raise CaseError(self.case_id, f"not enough memory to read {reading} "
                                          "(SEGQC_MAX_VOXELS limits the size of a case)") from None
        except (OSError, ValueError, RuntimeError) as e:
            raise CaseError(self.case_id, str(e)) from None
        except Exception as e:  # a reader's own defect: still this case's error, not the batch's
            raise CaseError(self.case_id, f"cannot read {reading}: {type(e).__name__}: {e}") from e
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
        require_masks: an image without a mask is an error (of its own case, raised by
            `CaseRef.load`); otherwise its `CaseRef` simply has no mask.

    Returns:
        `CaseRef` list sorted by case id.

    Raises:
        FileNotFoundError: no such dataset, or masks are required and no image has one.
        ValueError: unknown layout, or a malformed folder or manifest.
    """
    from segqc.utils import look_up_option

    layout = look_up_option(layout, LAYOUTS)
    path = Path(path)
    if masks is not None and layout == "auto" and path.is_dir() and not (path / "imagesTr").is_dir():
        return _pair(_singles(_list_files(path)), Path(masks), require_masks)
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
        require = require_masks and label_dir.is_dir()  # no labels folder: an unlabelled (test) split
        if layout == "nnunet":
            groups: dict[str, list[Path]] = {}
            for f in files:
                m = _CHANNEL.match(_strip(f))
                if not m:
                    raise ValueError(f"{f.name} in an nnU-Net folder lacks the _0000 channel suffix")
                groups.setdefault(m["id"], []).append(f)
            return _pair([(cid, tuple(sorted(chans))) for cid, chans in sorted(groups.items())], label_dir, require)
        return _pair(_singles(files), label_dir, require)
    # flat
    mask_dir = Path(masks) if masks else next(path / m for m in ("masks", "labels") if (path / m).is_dir())
    return _pair(_singles(_list_files(path / "images")), mask_dir, require_masks)


def _singles(files: list[Path]) -> list[tuple[str, tuple[Path, ...]]]:
    """One case per file, named by its stem."""
    return [(_strip(f), (f,)) for f in files]


def _find(folder: Path, stem: str, prefer_suffix: str) -> Path | None:
    if not folder.is_dir():
        return None
    for s in (prefer_suffix,) + MEDICAL_SUFFIXES + PHOTO_SUFFIXES:
        p = folder / f"{stem}{s}"
        if p.exists():
            return p
    return None


def _pair(cases: list[tuple[str, tuple[Path, ...]]], mask_dir: Path, require: bool) -> list[CaseRef]:
    """A `CaseRef` per ``(case id, image files)`` with its mask from ``mask_dir``.

    A case without a mask is listed all the same, to fail alone when loaded (one error row,
    not a refused run); but when no case has one, the folder or the naming is wrong.

    Raises:
        FileNotFoundError: masks are required and no case has one.
    """
    refs = []
    # a.png and a.jpg side by side share a stem: the second one is listed as a~2 (ids stay unique)
    for (cid, images), key in zip(cases, _unique_ids([(cid, True) for cid, _ in cases])):
        mask = _find(mask_dir, cid, suffix_of(images[0]))
        problem = f"no mask named {cid}.* in {mask_dir}" if mask is None and require else None
        refs.append(CaseRef(key, images, mask, problem=problem))
    if require and refs and all(r.mask is None for r in refs):
        if not mask_dir.is_dir():
            raise FileNotFoundError(f"mask folder {mask_dir} does not exist")
        raise FileNotFoundError(f"no image has a mask in {mask_dir}: masks must be named like their images, "
                                f"e.g. {refs[0].case_id}{suffix_of(refs[0].image[0])}")
    return refs


def read_manifest(path: str | Path, *, root: str | Path | None = None, image_col: str = "image",
                  mask_col: str = "mask", truth_col: str = "truth", group_col: str = "group",
                  id_col: str = "case_id") -> list[CaseRef]:
    """Read a CSV manifest; other columns are kept in ``CaseRef.extra``.

    UTF-8 (with or without a BOM), any line ends; cells are stripped. Missing files are not
    checked here, and a row without an image path is listed all the same: a bad row fails its
    own case when loaded, never the listing.

    Case ids are unique: the first row with an id keeps it; a repeated id (the same image with
    one candidate mask per model) becomes ``<id>~2``, ``<id>~3``... and a row without one
    ``row<N>`` (N: its row in the file, the header being row 1), skipping ids already used
    anywhere in the manifest. ``extra["source_id"]`` keeps the id as written (or ``row<N>``),
    so that candidates of one image can be matched with it.
    """
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            reader.fieldnames = [c.strip() for c in reader.fieldnames or []]
            missing = {id_col, image_col} - set(reader.fieldnames)
            if missing:
                raise ValueError(f"manifest {path} lacks column(s) {sorted(missing)}; has {reader.fieldnames}")
            rows = []
            for row in reader:
                # short rows give None cells; cells beyond the header (key None) have no column to go to
                cells = {k: (v or "").strip() for k, v in row.items() if k is not None}
                if any(cells.values()):  # a row of empty cells (a spreadsheet's padding) lists nothing
                    rows.append((reader.line_num, cells))
    except UnicodeDecodeError as e:
        raise ValueError(f"manifest {path} is not UTF-8 text ({e})") from None
    used = {id_col, image_col, mask_col, truth_col, group_col}
    wanted = [(cells[id_col] or f"row{n}", bool(cells[id_col])) for n, cells in rows]

    def resolve(p: str) -> Path | None:
        return (root / p) if p else None  # an absolute p stays itself

    refs = []
    for (n, cells), key, (source, _) in zip(rows, _unique_ids(wanted), wanted):
        images = tuple(root / p for p in (p.strip() for p in cells[image_col].split(";")) if p)
        refs.append(CaseRef(
            case_id=key,
            image=images,
            mask=resolve(cells.get(mask_col, "")),
            truth=resolve(cells.get(truth_col, "")),
            group=cells.get(group_col) or None,
            extra={**{k: v for k, v in cells.items() if k not in used}, "source_id": source},
            problem=None if images else f"manifest row {n} has no image path",
        ))
    return refs


def _unique_ids(wanted: list[tuple[str, bool]]) -> list[str]:
    """Ids for ``(id, written in the manifest)`` pairs: each as is when free, else ``<id>~2``, ``<id>~3``...

    An id written in the manifest is reserved for its first row, so that no generated id takes it.
    """
    written = {w for w, given in wanted if given}
    used: set[str] = set()
    out = []
    for w, given in wanted:
        key, k = w, 1
        while key in used or (key in written and not (given and key == w)):
            k += 1
            key = f"{w}~{k}"
        used.add(key)
        out.append(key)
    return out


def guess_root(cases: Path) -> Path:
    """The folder a benchmark's relative paths start from: walk up from ``cases`` until the first path resolves.

    (The shared benchmarks' ``cases.csv`` paths are relative to ``shared/``.)
    """
    import sys

    cases = Path(cases)
    listed = [r for r in read_manifest(cases, root=cases.parent) if r.image]
    if not listed:
        return cases.parent
    rel = listed[0].image[0].relative_to(cases.parent)
    for parent in [cases.parent, *cases.parents]:
        if (parent / rel).exists():
            return parent
    print(f"segqc: cannot resolve {rel} above {cases}; using its folder", file=sys.stderr)
    return cases.parent
