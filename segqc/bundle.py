"""Save and load a fitted QC bundle: one folder, no pickles.

Layout::

    bundle/
      bundle.json                  schema_version, versions, plan, fingerprint, methods'
                                   parameters and calibrators, sha256 of every weight file
      <method>.safetensors         the method's arrays (network weights, trees as arrays...)
      <method>.calib.safetensors   its calibrator's breakpoints
      fusion.calib.safetensors     the fused answer's calibrator (when ≥ 2 methods)

Loading checks the hashes, refuses an unknown schema and warns when segqc's version
differs from the one that wrote the bundle.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segqc import __version__
from segqc.calibration import DiceCalibrator
from segqc.utils import sha256_file

__all__ = ["QCBundle", "save_bundle", "load_bundle", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1


@dataclass
class QCBundle:
    """Everything `segqc predict` needs: the plan, fitted methods and their calibrators."""

    plan: object
    methods: dict = field(default_factory=dict)        # name → fitted QCMethod
    calibrators: dict = field(default_factory=dict)    # name → DiceCalibrator
    fingerprint: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)           # fit options, timings, validation figures
    default_method: str | None = None
    fusion: object | None = None                       # segqc.fusion.Fusion over ≥ 2 methods

    @property
    def tau(self) -> float:
        return next(iter(self.calibrators.values())).tau if self.calibrators else 0.8


def _versions() -> dict:
    import platform

    import torch

    return {"segqc": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "torch": torch.__version__}


def _save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()} or {"_empty": np.zeros(1)}, str(path))


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    arrays = load_file(str(path))
    arrays.pop("_empty", None)
    return arrays


def save_bundle(bundle: QCBundle, folder: str | Path) -> Path:
    """Write ``bundle`` to ``folder`` (created); returns the path of bundle.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries, hashes = {}, {}
    for name, method in bundle.methods.items():
        arrays, config = method.state()
        _save_arrays(folder / f"{name}.safetensors", arrays)
        entry = {"class": type(method).__name__, "config": config}
        files = [f"{name}.safetensors"]
        if name in bundle.calibrators:
            carr, ccfg = bundle.calibrators[name].state()
            _save_arrays(folder / f"{name}.calib.safetensors", carr)
            entry["calibration"] = ccfg
            files.append(f"{name}.calib.safetensors")
        for f in files:
            hashes[f] = sha256_file(folder / f)
        entries[name] = entry
    fusion_entry = None
    if bundle.fusion is not None:
        farr, fusion_entry = bundle.fusion.state()
        _save_arrays(folder / "fusion.calib.safetensors", farr)
        hashes["fusion.calib.safetensors"] = sha256_file(folder / "fusion.calib.safetensors")
    doc = {
        "schema_version": SCHEMA_VERSION,
        "versions": _versions(),
        "plan": bundle.plan.to_dict(),
        "fingerprint": bundle.fingerprint,
        "methods": entries,
        "fusion": fusion_entry,
        "default_method": bundle.default_method,
        "info": bundle.info,
        "sha256": hashes,
    }
    path = folder / "bundle.json"
    path.write_text(json.dumps(doc, indent=1, default=_json_default))
    return path


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"cannot save {type(o).__name__} in bundle.json")


def bundle_hash(folder: str | Path) -> str:
    """A short hash identifying a bundle (for run records)."""
    return sha256_file(Path(folder) / "bundle.json")[:16]


def load_bundle(folder: str | Path, methods: list[str] | None = None) -> QCBundle:
    """Read a bundle written by `save_bundle` (only the named methods if given)."""
    from segqc.fingerprint import Plan
    from segqc.methods import get_method_class

    folder = Path(folder)
    path = folder / "bundle.json" if folder.is_dir() else folder
    folder = path.parent
    if not path.exists():
        raise FileNotFoundError(f"no bundle.json in {folder}; create one with `segqc fit`")
    doc = json.loads(path.read_text())
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"bundle schema_version {doc.get('schema_version')!r} is not supported "
                         f"(this segqc reads {SCHEMA_VERSION}); refit with this version")
    written_by = doc.get("versions", {}).get("segqc")
    if written_by != __version__:
        warnings.warn(f"bundle written by segqc {written_by}, loading with {__version__}", stacklevel=2)
    for fname, digest in doc.get("sha256", {}).items():
        if not (folder / fname).exists():
            raise FileNotFoundError(f"bundle file {folder / fname} is missing")
        if sha256_file(folder / fname) != digest:
            raise ValueError(f"bundle file {folder / fname} does not match its recorded sha256; it was altered")
    bundle = QCBundle(plan=Plan.from_dict(doc["plan"]), fingerprint=doc.get("fingerprint", {}),
                      info=doc.get("info", {}), default_method=doc.get("default_method"))
    for name, entry in doc["methods"].items():
        if methods is not None and name not in methods:
            continue
        cls = get_method_class(name)
        bundle.methods[name] = cls.from_state(_load_arrays(folder / f"{name}.safetensors"), entry["config"])
        if "calibration" in entry:
            bundle.calibrators[name] = DiceCalibrator.from_state(
                _load_arrays(folder / f"{name}.calib.safetensors"), entry["calibration"])
    fusion = doc.get("fusion")
    if fusion and all(m in bundle.methods for m in fusion["members"]):
        from segqc.fusion import FUSION, Fusion

        bundle.fusion = Fusion.from_state(_load_arrays(folder / "fusion.calib.safetensors"), fusion)
        bundle.calibrators[FUSION] = bundle.fusion.calibrator_
    if methods is not None and (missing := set(methods) - set(bundle.methods)):
        raise ValueError(f"bundle {folder} has no method(s) {sorted(missing)}; it has {sorted(doc['methods'])}")
    return bundle
