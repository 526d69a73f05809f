"""Appearance augmentation for segqc's learned components: what another scanner or camera changes.

A network trained on one site's images learns that site's colour balance, contrast,
sharpness and noise along with the anatomy. At a new site those change and the network
fails silently — and with it every QC feature built on its opinion. Each batch here gets,
per sample, the changes a new site makes (the same family `benchmarks/shift_benchmark.py`
draws whole sites from): per-channel gain and offset (colour balance), a gamma curve,
Gaussian blur, additive noise and a lower resolution, each with some probability.

Works on model-space batches ``(B, C, H, W)`` (intensities already normalised by the plan);
the geometry is untouched, so masks need no change. Draws from torch's global generator,
which the callers seed.
"""

from __future__ import annotations

import math

__all__ = ["appearance_jitter"]


def _blur(x, sigma: float):
    """Gaussian blur of ``x`` (B, C, H, W), separable, edges replicated.

    As a weighted sum of shifted copies, one axis then the other: on a CPU torch's grouped
    (depthwise) convolution of a training batch cost ~26 ms, an eighth of a segmenter step,
    and these sums ~8 ms."""
    import torch.nn.functional as F

    radius = max(1, int(round(2.5 * sigma)))
    t = [i - radius for i in range(2 * radius + 1)]
    k = [math.exp(-0.5 * (i / sigma) ** 2) for i in t]
    k = [v / sum(k) for v in k]
    h, w = x.shape[-2:]
    x = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    x = sum(v * x[..., i:i + w] for i, v in enumerate(k))
    x = F.pad(x, (0, 0, radius, radius), mode="replicate")
    return sum(v * x[..., i:i + h, :] for i, v in enumerate(k))


def appearance_jitter(x, p: float = 0.5):
    """A new-site look for every sample of ``x`` (B, C, H, W); each change applied with probability ``p``.

    Vectorised over the batch (a per-sample loop costs half a training step on a CPU); blur
    and resolution draw one strength per batch for the samples they change.
    """
    import torch
    import torch.nn.functional as F

    b, c, h, w = x.shape
    # the draws are made on the CPU (the same numbers whatever the device), then sent to x's device
    dev = x.device
    use = torch.rand(5, b, 1, 1, 1) < torch.tensor([p, p, p, p, p / 2]).view(5, 1, 1, 1, 1)
    on = use.to(dev)
    # colour balance / window: per-channel gain and offset
    gain, offset = (1 + 0.15 * torch.randn(b, c, 1, 1)).to(dev), (0.2 * torch.randn(b, c, 1, 1)).to(dev)
    x = torch.where(on[0], x * gain + offset, x)
    # a gamma curve on each sample's own intensity range
    lo = x.amin(dim=(-1, -2), keepdim=True)
    span = x.amax(dim=(-1, -2), keepdim=True) - lo + 1e-6
    gamma = torch.exp(0.35 * torch.randn(b, 1, 1, 1)).to(dev)
    x = torch.where(on[1], ((x - lo) / span).clamp(0, 1) ** gamma * span + lo, x)
    if use[2].any():  # softer optics, on the samples that get it only
        blurred = use[2].view(-1).nonzero().view(-1).to(dev)
        x = x.index_copy(0, blurred, _blur(x[blurred], float(0.5 + 1.0 * torch.rand(1))))
    # sensor noise
    x = torch.where(on[3], x + (0.1 * torch.rand(b, 1, 1, 1)).to(dev) * torch.randn_like(x), x)
    if use[4].any():  # a lower-resolution camera, brought back to the plan's grid
        f = float(0.5 + 0.4 * torch.rand(1))
        small = F.interpolate(x, size=(max(4, int(h * f)), max(4, int(w * f))), mode="bilinear", align_corners=False)
        x = torch.where(on[4], F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False), x)
    return x
