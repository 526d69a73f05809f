"""Save and load a fitted QC bundle: one folder, no pickles.

Layout::

    bundle/
      bundle.json                  schema_version, versions, plan, fingerprint, methods'
                                   parameters and calibrators, sha256 of every data file,
                                   and the integrity digest of all of it
      <method>.safetensors         the method's arrays (network weights, trees as arrays...)
      <method>.calib.safetensors   its calibrator's breakpoints
      fusion.calib.safetensors     the fused answer's calibrator (when ≥ 2 methods)
      appearance.safetensors       the reference images' appearance descriptors (shift score)

Integrity: ``bundle.json`` ends with ``"integrity": {"algorithm": "sha256", "document": <hex>}``,
the sha256 of the canonical JSON of every other field (`document_digest`). Those fields hold
the sha256 of every data file, so the digest covers everything an answer depends on. Loading
refuses, with one `BundleError` (a ValueError) naming the folder: invalid JSON, a document of
the wrong shape, a missing or mismatching digest, a data file that is read but not listed, is
missing or does not match its sha256, unknown methods or parameters, and any state a method
cannot be rebuilt from. It warns when segqc's version differs from the one that wrote it.

The digest detects corruption and naive edits, not a deliberate forger: whoever can write the
folder can recompute it. For authenticity, set ``SEGQC_BUNDLE_KEY`` when fitting: the digest is
then also signed (``integrity.hmac``, HMAC-SHA256 with that key). Loading with the key set
refuses a bundle whose signature is missing or wrong; loading a signed bundle without the key
warns that its authenticity is not checked.

Loading never executes code from the bundle: it reads JSON, safetensors and LightGBM's text
model format only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import warnings
from pathlib import Path

import numpy as np

from segqc import __version__
from segqc.calibration.calibrator import DiceCalibrator
from segqc.pipeline.answering import QCBundle
from segqc.utils import sha256_file

__all__ = ["KEY_ENV", "SCHEMA_VERSION", "BundleError", "QCBundle", "document_digest", "load_bundle", "save_bundle"]

SCHEMA_VERSION = 3  # 2: an integrity digest; 3: methods' state as the method contract saves it (`QCMethod.state`)
KEY_ENV = "SEGQC_BUNDLE_KEY"
_APPEARANCE = "appearance.safetensors"

# top-level fields of bundle.json that must hold a JSON object
_OBJECT_FIELDS = ("versions", "plan", "fingerprint", "methods", "info", "sha256")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# what a parsed JSON value is, for messages
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
               float: "a number", type(None): "null"}


class BundleError(ValueError):
    """A bundle that cannot be trusted or rebuilt; the message is one line naming the folder and the problem."""

    def __init__(self, folder: Path, reason: str):
        # one line: the reason may quote a library's multi-line message
        super().__init__(f"bundle {folder}: {' '.join(reason.split())}")


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
    if bundle.appearance is not None:  # the reference images' appearance (segqc.calibration.shift)
        _save_arrays(folder / _APPEARANCE, {"appearance": np.asarray(bundle.appearance, np.float64)})
        hashes[_APPEARANCE] = sha256_file(folder / _APPEARANCE)
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
    # the digest must cover exactly what load_bundle will parse: numpy scalars, tuples and int keys
    # become plain JSON first
    doc = json.loads(json.dumps(doc, default=_json_default))
    doc["integrity"] = _integrity(doc)  # last: it covers every other field
    path = folder / "bundle.json"
    path.write_text(json.dumps(doc, indent=1))
    return path


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"cannot save {type(o).__name__} in bundle.json")


def document_digest(doc: dict) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of ``doc`` without its ``integrity`` field."""
    body = {k: v for k, v in doc.items() if k != "integrity"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _signature(digest: str, key: str) -> str:
    return hmac.new(key.encode(), digest.encode(), hashlib.sha256).hexdigest()


def _integrity(doc: dict) -> dict:
    digest = document_digest(doc)
    integrity = {"algorithm": "sha256", "document": digest}
    if key := os.environ.get(KEY_ENV):
        integrity["hmac"] = _signature(digest, key)
    return integrity


def _same(a: str, b: str) -> bool:
    # bytes: compare_digest refuses non-ASCII str, which a damaged bundle.json may hold
    return hmac.compare_digest(a.encode(), b.encode())


def bundle_hash(folder: str | Path) -> str:
    """A short hash identifying a bundle (for run records)."""
    return sha256_file(Path(folder) / "bundle.json")[:16]


def load_bundle(folder: str | Path, methods: list[str] | None = None, device: str = "auto") -> QCBundle:
    """Read a bundle written by `save_bundle` (only the named methods if given), verifying it first.

    The methods' networks are placed on ``device`` (``auto``: a GPU when present).

    Raises FileNotFoundError when there is no bundle.json, and `BundleError` (a ValueError whose
    message names the folder and the problem) for anything else that is wrong with the bundle.
    The digest check catches corruption and naive edits, not a forger who recomputes the digest:
    set ``SEGQC_BUNDLE_KEY`` (see the module docstring) to check authenticity too.
    """
    folder = Path(folder)
    path = folder / "bundle.json" if folder.is_dir() else folder
    folder = path.parent
    if not path.exists():
        raise FileNotFoundError(f"no bundle.json in {folder}; create one with `segqc fit`")
    doc = _read_document(path, folder)
    _check_integrity(doc, folder)
    _check_shape(doc, folder)
    _check_files(doc["sha256"], folder)
    written_by = doc["versions"].get("segqc")
    if written_by != __version__:
        warnings.warn(f"bundle written by segqc {written_by}, loading with {__version__}", stacklevel=2)
    return _build(doc, folder, methods, device)


def _read_document(path: Path, folder: Path) -> dict:
    try:
        text = path.read_text()
    except (OSError, ValueError) as e:  # ValueError: not UTF-8
        raise BundleError(folder, f"cannot read bundle.json ({e})") from None
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as e:  # RecursionError: absurdly deep nesting
        raise BundleError(folder, f"bundle.json is not valid JSON ({e}); it was truncated or damaged: "
                                  "refit or restore it") from None
    if not isinstance(doc, dict):
        raise BundleError(folder, f"bundle.json must hold a JSON object, found {_JSON_TYPES[type(doc)]}")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(folder, f"schema_version {version!r} is not supported (this segqc reads {SCHEMA_VERSION}, "
                                  "whose bundles carry an integrity digest); refit with this version of segqc")
    return doc


def _check_integrity(doc: dict, folder: Path) -> None:
    integrity = doc.get("integrity")
    if not isinstance(integrity, dict) or not isinstance(integrity.get("document"), str):
        raise BundleError(folder, "bundle.json carries no integrity digest, so it cannot be verified; "
                                  "refit the bundle with `segqc fit`")
    if integrity.get("algorithm") != "sha256":
        raise BundleError(folder, f"unknown integrity algorithm {integrity.get('algorithm')!r} (this segqc "
                                  "checks sha256)")
    digest = document_digest(doc)
    if not _same(digest, integrity["document"]):
        raise BundleError(folder, "bundle.json was altered after it was written (it does not match its "
                                  "integrity digest); refit or restore it")
    _check_signature(integrity.get("hmac"), digest, folder)


def _check_signature(mac, digest: str, folder: Path) -> None:
    key = os.environ.get(KEY_ENV)
    if key:
        if not isinstance(mac, str):
            raise BundleError(folder, f"the bundle is not signed but {KEY_ENV} is set; refit it with the key "
                                      f"set, or unset {KEY_ENV} to load unsigned bundles")
        if not _same(mac, _signature(digest, key)):
            raise BundleError(folder, f"its signature does not match {KEY_ENV}: the bundle was altered or "
                                      "signed with another key")
    elif mac is not None:
        warnings.warn(f"bundle {folder} is signed but {KEY_ENV} is not set: its authenticity is not checked",
                      stacklevel=4)


def _check_shape(doc: dict, folder: Path) -> None:
    """The digest says the document is intact, not that its writer got it right: check before using it."""
    for key in _OBJECT_FIELDS:
        if not isinstance(doc.get(key), dict):
            raise BundleError(folder, f"bundle.json needs a JSON object under {key!r}, found "
                                      f"{_JSON_TYPES[type(doc[key])] if key in doc else 'nothing'}")
    if not doc["methods"]:
        raise BundleError(folder, "bundle.json lists no methods")
    for name, entry in doc["methods"].items():
        if not (isinstance(entry, dict) and isinstance(entry.get("class"), str)
                and isinstance(entry.get("config"), dict) and isinstance(entry.get("calibration", {}), dict)):
            raise BundleError(folder, f"method {name!r} must be a JSON object with 'class' (a string), 'config' "
                                      "and optionally 'calibration' (objects)")
    fusion = doc.get("fusion")
    if fusion is not None and not (isinstance(fusion, dict) and isinstance(fusion.get("members"), list)
                                   and all(isinstance(m, str) and m in doc["methods"] for m in fusion["members"])):
        raise BundleError(folder, "'fusion' must be null or a JSON object whose 'members' are methods of the bundle")
    if not isinstance(doc.get("default_method"), (str, type(None))):
        raise BundleError(folder, "'default_method' must be a method name or null")


def _check_files(hashes: dict, folder: Path) -> None:
    for fname, digest in hashes.items():
        # a plain name: a recorded path must not reach outside the folder
        if Path(fname).name != fname or fname in (".", "..") or not _SHA256_HEX.fullmatch(str(digest)):
            raise BundleError(folder, f"sha256 entry {fname!r} must map a file name of the folder to a hex sha256")
        if not (folder / fname).is_file():
            raise BundleError(folder, f"{fname} is missing")
        try:
            actual = sha256_file(folder / fname)
        except OSError as e:
            raise BundleError(folder, f"cannot read {fname} ({e})") from None
        if actual != digest:
            raise BundleError(folder, f"{fname} was altered (it does not match its recorded sha256); "
                                      "refit or restore it")


def _arrays(folder: Path, fname: str, hashes: dict) -> dict[str, np.ndarray]:
    """The arrays of a data file that `_check_files` verified: a file that is not listed is not read."""
    if fname not in hashes:
        raise BundleError(folder, f"{fname} has no recorded sha256 in bundle.json, so it cannot be verified; "
                                  "refit the bundle")
    try:
        return _load_arrays(folder / fname)
    except Exception as e:  # safetensors and the OS raise their own types on a damaged file
        raise BundleError(folder, f"cannot read {fname}: {type(e).__name__}: {e}") from e


def _rebuild(folder: Path, what: str, from_state, *args):
    """``from_state(*args)``, any failure a BundleError: the state comes from the bundle, and the libraries
    that rebuild it (torch, LightGBM, scipy...) raise their own exception types on data they cannot use."""
    try:
        return from_state(*args)
    except Exception as e:
        raise BundleError(folder, f"{what} cannot be rebuilt from its saved state: {type(e).__name__}: {e}") from e


def _method_class(folder: Path, name: str, entry: dict):
    """The registered class of method ``name``, refusing a class or parameters that do not match it."""
    from segqc.methods import get_method_class

    try:
        cls = get_method_class(name)
    except ValueError as e:
        raise BundleError(folder, str(e)) from None
    if entry["class"] != cls.__name__:
        raise BundleError(folder, f"method {name!r} is stored as class {entry['class']!r}, but segqc's {name} "
                                  f"is {cls.__name__}")
    params = entry["config"].get("params", {})
    if not isinstance(params, dict):
        raise BundleError(folder, f"method {name!r}: 'params' must be a JSON object")
    if unknown := sorted(set(params) - cls.param_names()):
        raise BundleError(folder, f"method {name!r} has unknown parameter(s) {unknown}; {cls.__name__} takes "
                                  f"{sorted(cls.param_names())}")
    return cls


def _build(doc: dict, folder: Path, methods: list[str] | None, device: str) -> QCBundle:
    from segqc.plan.plan import Plan

    hashes = doc["sha256"]
    bundle = QCBundle(plan=_rebuild(folder, "the plan", Plan.from_dict, doc["plan"]), fingerprint=doc["fingerprint"],
                      info=doc["info"], default_method=doc.get("default_method"))
    for name, entry in doc["methods"].items():
        if methods is not None and name not in methods:
            continue
        cls = _method_class(folder, name, entry)
        bundle.methods[name] = _rebuild(folder, f"method {name!r}", cls.from_state,
                                        _arrays(folder, f"{name}.safetensors", hashes), entry["config"],
                                        bundle.plan, device)
        if "calibration" in entry:
            bundle.calibrators[name] = _rebuild(folder, f"the calibrator of {name!r}", DiceCalibrator.from_state,
                                                _arrays(folder, f"{name}.calib.safetensors", hashes),
                                                entry["calibration"])
    if _APPEARANCE in hashes:
        arrays = _arrays(folder, _APPEARANCE, hashes)
        if "appearance" not in arrays or arrays["appearance"].ndim != 2:
            raise BundleError(folder, f"{_APPEARANCE} must hold one 2D array 'appearance'")
        bundle.appearance = arrays["appearance"]
    fusion = doc.get("fusion")
    if fusion and all(m in bundle.methods for m in fusion["members"]):
        from segqc.calibration.fusion import FUSION, Fusion

        bundle.fusion = _rebuild(folder, "the fusion", Fusion.from_state,
                                 _arrays(folder, "fusion.calib.safetensors", hashes), fusion)
        bundle.calibrators[FUSION] = bundle.fusion.calibrator_
    if methods is not None and (missing := set(methods) - set(bundle.methods)):
        raise ValueError(f"bundle {folder} has no method(s) {sorted(missing)}; it has {sorted(doc['methods'])}")
    return bundle
