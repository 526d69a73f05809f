"""Training samples of segqc's segmenter networks: axial slices for a 2D network, whole volumes for a
volumetric one (`segqc.components.segmenter`). Both hold the cases on the training device and hand out
batches by index, so that the training loop is the same for either."""

from __future__ import annotations

import numpy as np

from segqc.utils import round_up

__all__ = ["MAX_DEPTH", "SliceSamples", "VolumeSamples", "padded_depth"]

# a volumetric network's training crop is at most this many slices deep
MAX_DEPTH = 64


def padded_depth(depth: int, channels) -> int:
    """``depth`` rounded up to what a volumetric UNet of these widths divides: it halves the depth at each of
    its strides."""
    return round_up(depth, 2 ** (len(channels) - 1))


class SliceSamples:
    """A 2D network's training samples: every axial slice; empty slices of 3D volumes are kept, fewer of them."""

    def __init__(self, data, rng: np.random.Generator, dev: str):
        import torch

        xs, ys = [], []
        for image, mask in data:
            for z in range(mask.shape[0]):
                if mask[z].any() or rng.random() < 0.3:
                    xs.append(image[:, z])
                    ys.append(mask[z])
        # on a GPU the slices stay there: batches, flips and appearance changes are made on it
        self.x = torch.from_numpy(np.stack(xs)).float().to(dev)
        self.y = torch.from_numpy(np.stack(ys).astype(np.int64))[:, None].to(dev)

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, idx):
        return self.x[idx], self.y[idx]


class VolumeSamples:
    """A volumetric network's training samples: whole volumes, each cropped (at a random depth) or padded to one
    depth, at most `MAX_DEPTH` slices, so that they batch."""

    def __init__(self, data, rng: np.random.Generator, channels, dev: str):
        import torch

        self.depth = padded_depth(min(MAX_DEPTH, max(mk.shape[0] for _, mk in data)), channels)
        self.rng = rng
        self.x, self.y = [], []
        for image, mask in data:
            pad = max(0, self.depth - mask.shape[0])  # zero below: the normalised images' mean, background
            self.x.append(torch.from_numpy(np.pad(image, ((0, 0), (0, pad), (0, 0), (0, 0)))).float().to(dev))
            self.y.append(torch.from_numpy(np.pad(mask, ((0, pad), (0, 0), (0, 0))).astype(np.int64))[None].to(dev))

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, idx):
        import torch

        xs, ys = [], []
        for i in idx.tolist():
            z = int(self.rng.integers(self.x[i].shape[1] - self.depth + 1))
            xs.append(self.x[i][:, z:z + self.depth])
            ys.append(self.y[i][:, z:z + self.depth])
        return torch.stack(xs), torch.stack(ys)
