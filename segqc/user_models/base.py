"""`SegModel`: image on its own grid → logits in model space → probabilities on the image's grid.

The forward path is split in three so that `segqc.components.uncertainty` can act in model space
(test-time augmentation is applied to the network's input and undone on its logits):

    prepare(image)          (C, *spatial) float32 → (1, C, *input_size) tensor (resize, intensity)
    logits(x, dropout)      (B, C, *input_size)   → (B, K, *input_size) raw network output
    to_proba(logits, shape) (B, K, *input_size)   → (B, L + 1, *shape) probabilities, channel 0 = background

Logits are resized back to the image grid *before* the activation (bilinear / trilinear,
``align_corners=False``), as the Kvasir benchmark networks were used; a 1-channel output is
a sigmoid foreground, several channels a softmax over background + labels.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np

from segqc.utils import look_up_option, resolve_device

__all__ = ["Preprocessing", "SegModel", "TorchModel", "CallableModel", "MODEL_KINDS"]

MODEL_KINDS = ("monai", "torchscript", "onnx")
INTENSITY = ("none", "divide255", "zscore")
RESIZE = ("pil", "torch")
ACTIVATION = ("auto", "sigmoid", "softmax")


@dataclass(frozen=True)
class Preprocessing:
    """How the network expects its input, and how its output maps to labels.

    Attributes:
        input_size: spatial size the network was trained on, ``(Y, X)`` / ``(Z, Y, X)``;
            None = the image's own grid.
        intensity: ``divide255`` (photos: pixel / 255), ``zscore`` (per image and channel) or ``none``;
            applied after resizing.
        resize: ``pil`` (Pillow bilinear, what most 2D photo pipelines use: an integer-valued RGB /
            grey image is resized as uint8, exactly like training did) or ``torch`` (``interpolate``,
            antialiased when shrinking; always used in 3D).
        activation: ``sigmoid`` (1 foreground channel), ``softmax`` or ``auto`` (1 channel → sigmoid).
        labels: label value of each foreground output channel (default 1..K).
    """

    input_size: tuple[int, ...] | None = None
    intensity: str = "none"
    resize: str = "pil"
    activation: str = "auto"
    labels: tuple[int, ...] | None = None

    def __post_init__(self):
        look_up_option(self.intensity, INTENSITY, "intensity")
        look_up_option(self.resize, RESIZE, "resize")
        look_up_option(self.activation, ACTIVATION, "activation")
        if self.input_size is not None and (len(self.input_size) not in (2, 3) or min(self.input_size) < 1):
            raise ValueError(f"input_size must be 2 or 3 positive ints, got {self.input_size}")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        d = dict(d)
        for k in ("input_size", "labels"):
            if d.get(k) is not None:
                d[k] = tuple(int(v) for v in d[k])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    @classmethod
    def from_config(cls, cfg: dict) -> "Preprocessing":
        """Read a model ``config.json``: a ``segqc_preprocessing`` block if present, else the
        benchmark format (``input_size`` + free-text ``preprocessing`` naming ``pixel/255``)."""
        if "segqc_preprocessing" in cfg:
            return cls.from_dict(cfg["segqc_preprocessing"])
        text = str(cfg.get("preprocessing", "")).replace(" ", "").lower()
        intensity = "divide255" if "/255" in text else ("zscore" if "zscore" in text else "none")
        size = cfg.get("input_size")
        return cls(input_size=tuple(int(v) for v in size) if size else None, intensity=intensity,
                   activation="sigmoid" if "sigmoid" in str(cfg.get("output", "")).lower() else "auto")


def _resize(x, size: tuple[int, ...], method: str):
    """(1, C, *spatial) tensor → (1, C, *size); linear, antialiased when shrinking."""
    import torch
    import torch.nn.functional as F

    if tuple(x.shape[2:]) == tuple(size):
        return x
    if method == "pil" and len(size) == 2:
        from PIL import Image

        a = x[0].cpu().numpy()
        integral = a.min() >= 0 and a.max() <= 255 and np.all(a == np.round(a)) and a.shape[0] in (1, 3)
        if integral:  # an 8-bit photo: resize it as the uint8 image the network was trained on
            arr = a.astype(np.uint8)
            im = Image.fromarray(arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1))
            out = np.asarray(im.resize((size[1], size[0]), Image.BILINEAR), dtype=np.float32)
            out = out[None] if out.ndim == 2 else np.moveaxis(out, -1, 0)
        else:
            out = np.stack([np.asarray(Image.fromarray(c.astype(np.float32), mode="F")
                                       .resize((size[1], size[0]), Image.BILINEAR)) for c in a])
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))[None]
    mode = "bilinear" if len(size) == 2 else "trilinear"
    shrink = any(o < i for i, o in zip(x.shape[2:], size))
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=shrink and len(size) == 2)


class SegModel:
    """Base adapter: subclasses implement `_forward` (and say whether dropout can be switched on)."""

    kind: str = "model"

    def __init__(self, preprocessing: Preprocessing | None = None, *, device: str = "auto",
                 path: str | None = None):
        self.preprocessing = preprocessing or Preprocessing()
        self.device = resolve_device(device)
        self.path = path

    # -- what subclasses provide --------------------------------------------------------
    @property
    def supports_dropout(self) -> bool:
        return False

    def _forward(self, x, dropout: bool):
        raise NotImplementedError

    # -- the pipeline ------------------------------------------------------------------
    def prepare(self, image: np.ndarray):
        """(C, *spatial) float32 image → (1, C, *input_size) float32 tensor on the model's device."""
        import torch

        image = np.asarray(image, dtype=np.float32)
        if image.ndim not in (3, 4):
            raise ValueError(f"image must be (C, Y, X) or (C, Z, Y, X), got shape {image.shape}")
        pp = self.preprocessing
        if pp.input_size is not None and len(pp.input_size) != image.ndim - 1:
            raise ValueError(f"the model takes {len(pp.input_size)}D input {pp.input_size}, "
                             f"the image is {image.ndim - 1}D {image.shape[1:]}")
        x = torch.from_numpy(np.ascontiguousarray(image))[None]
        if pp.input_size is not None:
            x = _resize(x, tuple(pp.input_size), pp.resize)
        if pp.intensity == "divide255":
            x = x / 255.0
        elif pp.intensity == "zscore":
            dims = tuple(range(2, x.ndim))
            x = (x - x.mean(dims, keepdim=True)) / (x.std(dims, keepdim=True) + 1e-6)
        return x.to(self.device)

    def logits(self, x, *, dropout: bool = False):
        """(B, C, *input_size) → (B, K, *input_size) float32 logits, no gradient."""
        import torch

        if dropout and not self.supports_dropout:
            raise ValueError(f"{type(self).__name__} ({self.kind}) cannot run with dropout on: the network has no "
                             "dropout layers or its format fixes inference mode (ONNX); use TTA or an ensemble")
        with torch.no_grad():
            out = self._forward(x.to(self.device), dropout)
        if out.ndim != x.ndim:
            raise ValueError(f"model output has shape {tuple(out.shape)}; expected (B, K, *spatial) "
                             f"for input {tuple(x.shape)}")
        return out.float()

    def to_proba(self, logits, shape: tuple[int, ...]) -> np.ndarray:
        """(B, K, *input_size) logits → (B, L + 1, *shape) float32 probabilities (channel 0 background)."""
        import torch
        import torch.nn.functional as F

        shape = tuple(int(s) for s in shape)
        if tuple(logits.shape[2:]) != shape:
            mode = "bilinear" if len(shape) == 2 else "trilinear"
            logits = F.interpolate(logits, size=shape, mode=mode, align_corners=False)
        act = self.preprocessing.activation
        if act == "auto":
            act = "sigmoid" if logits.shape[1] == 1 else "softmax"
        if act == "sigmoid":
            if logits.shape[1] != 1:
                raise ValueError(f"sigmoid output needs 1 channel, got {logits.shape[1]} (multi-label regions "
                                 "are not supported; export a softmax model)")
            p = torch.sigmoid(logits)
            p = torch.cat([1 - p, p], 1)
        else:
            p = torch.softmax(logits, 1)
        return p.cpu().numpy().astype(np.float32)

    def predict_proba(self, image: np.ndarray, *, dropout: bool = False) -> np.ndarray:
        """(C, *spatial) image → (L + 1, *spatial) probabilities on the same grid."""
        return self.to_proba(self.logits(self.prepare(image), dropout=dropout), image.shape[1:])[0]

    def output_labels(self, n_channels: int) -> np.ndarray:
        """Label value of each probability channel (channel 0 → label 0)."""
        labels = self.preprocessing.labels or tuple(range(1, n_channels))
        if len(labels) != n_channels - 1:
            raise ValueError(f"the model has {n_channels - 1} foreground channel(s) but labels {labels} were given")
        return np.array((0, *labels), dtype=np.int64)

    def predict_mask(self, image: np.ndarray) -> np.ndarray:
        """The model's own segmentation (argmax; sigmoid > 0.5) as label values on the image grid."""
        p = self.predict_proba(image)
        return self.output_labels(p.shape[0])[p.argmax(0)].astype(np.uint8)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, path={self.path!r}, device={self.device!r})"


def _is_dropout(module) -> bool:
    # scripted submodules keep their Python class name in ``original_name``
    name = getattr(module, "original_name", None) or type(module).__name__
    return "Dropout" in str(name)


class TorchModel(SegModel):
    """Any ``torch.nn.Module`` (or TorchScript module) mapping (B, C, ...) to (B, K, ...) logits.

    MC dropout switches only the dropout modules to training mode (batch-norm statistics stay frozen).
    """

    kind = "module"

    def __init__(self, module, preprocessing: Preprocessing | None = None, *, device: str = "auto",
                 path: str | None = None, kind: str | None = None):
        super().__init__(preprocessing, device=device, path=path)
        self.module = module.to(self.device).eval()
        if kind:
            self.kind = kind

    @property
    def supports_dropout(self) -> bool:
        return any(_is_dropout(m) for m in self.module.modules())

    @contextmanager
    def _dropout_on(self, on: bool):
        drops = [m for m in self.module.modules() if _is_dropout(m)] if on else []
        for m in drops:
            m.train()
        try:
            yield
        finally:
            for m in drops:
                m.eval()

    def _forward(self, x, dropout: bool):
        self.module.eval()
        with self._dropout_on(dropout):
            out = self.module(x)
        if isinstance(out, (list, tuple)):  # deep supervision: the full-resolution head comes first
            out = out[0]
        return out


class CallableModel(SegModel):
    """Any object with ``predict(image) -> probabilities`` (or a plain function), e.g. an nnU-Net predictor.

    ``predict`` takes a (C, *spatial) float32 image on its own grid and returns (L + 1, *spatial)
    probabilities on that grid. TTA works (the transforms are applied to the image it receives),
    MC dropout does not. Probabilities are passed on as log-probabilities through a softmax.
    """

    kind = "callable"

    def __init__(self, predictor, *, labels: tuple[int, ...] | None = None, device: str = "cpu"):
        super().__init__(Preprocessing(activation="softmax", labels=labels), device=device)
        self.predictor = predictor

    def _forward(self, x, dropout: bool):
        import torch

        fn = getattr(self.predictor, "predict", self.predictor)
        outs = []
        for b in range(x.shape[0]):
            p = np.asarray(fn(x[b].cpu().numpy()), dtype=np.float32)
            if p.ndim != x.ndim - 1 or p.shape[1:] != tuple(x.shape[2:]):
                raise ValueError(f"predict() returned shape {p.shape}; expected (L + 1, {tuple(x.shape[2:])})")
            outs.append(torch.from_numpy(np.log(np.clip(p, 1e-7, 1.0))))
        return torch.stack(outs)
