"""Load a model file as a `SegModel`; refer to it from a bundle by path + kind + sha256.

Preprocessing of a TorchScript / ONNX file is read from a JSON beside it (``<file>.json``,
else ``config.json`` in its folder) in the same format as a MONAI ``config.json``
(``input_size``, ``segqc_preprocessing``...); without one the network gets the image as it is.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np

from segqc.user_models.base import MODEL_KINDS, Preprocessing, SegModel, TorchModel
from segqc.utils import look_up_option, sha256_file

__all__ = ["load_model", "load_monai", "OnnxModel", "model_ref", "models_from_refs"]


def _sidecar(path: Path) -> dict:
    for cand in (path.with_name(path.name + ".json"), path.with_suffix(".json"), path.parent / "config.json"):
        if cand.exists() and cand != path:
            return json.loads(cand.read_text())
    return {}


def _monai_weights(folder: Path, cfg: dict) -> Path:
    """The final epoch of a benchmark-style model folder (``ep<N>.pt``, N = ``epochs``), else the highest N."""
    files = {int(m.group(1)): p for p in folder.glob("ep*.pt") if (m := re.fullmatch(r"ep(\d+)\.pt", p.name))}
    if not files:
        pts = sorted(folder.glob("*.pt")) + sorted(folder.glob("*.pth"))
        if len(pts) == 1:
            return pts[0]
        raise FileNotFoundError(f"no weights (ep<N>.pt or a single .pt) in {folder}")
    epochs = cfg.get("epochs")
    return files.get(int(epochs), files[max(files)]) if epochs is not None else files[max(files)]


def load_monai(path: str | Path, *, device: str = "auto") -> TorchModel:
    """A MONAI network from ``config.json`` (``class``, ``kwargs``) + a ``state_dict``.

    ``path`` is the weights file (config.json beside it) or the model folder (final epoch).
    Weights load with ``weights_only=True``: a state_dict of tensors, never pickled code.
    """
    import torch
    from monai.networks import nets

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"a monai model needs {cfg_path} with 'class' and 'kwargs'")
    cfg = json.loads(cfg_path.read_text())
    weights = _monai_weights(folder, cfg) if path.is_dir() else path
    name = cfg.get("class")
    if not name or not hasattr(nets, name):
        raise ValueError(f"{cfg_path}: 'class' must name a network of monai.networks.nets, got {name!r}")
    net = getattr(nets, name)(**cfg.get("kwargs", {}))
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    net.load_state_dict(state)  # casts float16 weights to the network's float32
    return TorchModel(net, Preprocessing.from_config(cfg), device=device, path=str(weights), kind="monai")


class OnnxModel(SegModel):
    """An ONNX file run with onnxruntime (CUDA provider when present and the device is a GPU)."""

    kind = "onnx"

    def __init__(self, path: str | Path, preprocessing: Preprocessing | None = None, *, device: str = "auto"):
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - onnxruntime is a dependency
            raise ImportError("the onnx model kind needs onnxruntime: pip install onnxruntime") from e
        super().__init__(preprocessing, device=device, path=str(path))
        providers = ["CPUExecutionProvider"]
        if self.device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # like torch_threads(1): the CPU is shared by the batch
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        self.input_name = self.session.get_inputs()[0].name

    def _forward(self, x, dropout: bool):
        import torch

        out = self.session.run(None, {self.input_name: x.detach().cpu().numpy().astype(np.float32)})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))


def load_model(path: str | Path, kind: str = "monai", *, device: str = "auto",
               preprocessing: Preprocessing | dict | None = None) -> SegModel:
    """Open a model file: ``kind`` is ``monai``, ``torchscript`` or ``onnx``."""
    import torch

    kind = look_up_option(kind, MODEL_KINDS, "model kind")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model {path} does not exist")
    if kind == "monai":
        model = load_monai(path, device=device)
        if preprocessing is not None:
            model.preprocessing = preprocessing if isinstance(preprocessing, Preprocessing) else \
                Preprocessing.from_dict(preprocessing)
        return model
    if isinstance(preprocessing, dict):
        preprocessing = Preprocessing.from_dict(preprocessing)
    pp = preprocessing or Preprocessing.from_config(_sidecar(path))
    if kind == "torchscript":
        module = torch.jit.load(str(path), map_location="cpu")
        return TorchModel(module, pp, device=device, path=str(path), kind="torchscript")
    return OnnxModel(path, pp, device=device)


def model_ref(model: SegModel) -> dict:
    """How a bundle remembers a model: path, kind, sha256 and preprocessing (JSON, no code)."""
    if not model.path:
        raise ValueError(f"{model!r} has no file; save it (monai / torchscript / onnx) to keep it in a bundle")
    path = Path(model.path).resolve()
    return {"path": str(path), "kind": model.kind, "sha256": sha256_file(path),
            "preprocessing": model.preprocessing.to_dict()}


def models_from_refs(refs: list[dict], *, device: str = "auto") -> list[SegModel]:
    """Reopen the models a bundle refers to; warn when a file changed since fitting."""
    out = []
    for ref in refs:
        path = Path(ref["path"])
        if not path.exists():
            raise FileNotFoundError(f"the bundle's segmentation model {path} is missing; pass it again with --model")
        if ref.get("sha256") and sha256_file(path) != ref["sha256"]:
            warnings.warn(f"segmentation model {path} changed since the bundle was fitted", stacklevel=2)
        out.append(load_model(path, ref["kind"], device=device, preprocessing=ref.get("preprocessing")))
    return out
