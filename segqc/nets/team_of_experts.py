"""nnQC's Team of Experts: the cross-attention context of the latent diffusion model.

Two experts each turn one view of a slice into tokens of width ``dim``:

* `ImageExpert` — a small CNN encoder of the 2D image slice (``C × S × S``), trained
  jointly with the diffusion model (no hub weights); its last feature map is pooled to a
  ``grid × grid`` set of tokens (plus a learned token-position embedding), so the
  cross-attention can look up *where* in the image something is.
* `PositionalExpert` — the relative axial position of the slice within the structure
  (0 at its first slice, 1 at its last; constant 0.5 for 2D data), as sinusoidal
  features through an MLP: one token.

`WeightedConditionalModule` learns per-sample weights over the EXPERTS (a softmax over
the expert axis, not over one expert's single token, which would always give weight 1
and let the positional expert have no say) from the experts' pooled embeddings, scales
each expert's tokens (plus a learned expert-type embedding) by its weight and
concatenates them into the context ``(B, n_tokens, dim)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ImageExpert", "PositionalExpert", "WeightedConditionalModule", "TeamOfExperts"]


def _groups(c: int) -> int:
    return math.gcd(c, 8)


class ImageExpert(nn.Module):
    """CNN encoder ``(B, C, H, W)`` → ``(B, grid², dim)`` tokens.

    Args:
        in_channels: image channels (3 for RGB, 1 for MRI).
        channels: feature channels of the stride-2 stages.
        dim: token width (the cross-attention dimension).
        grid: tokens per side after adaptive average pooling.
    """

    def __init__(self, in_channels: int, channels: tuple[int, ...] = (16, 32, 64), dim: int = 64, grid: int = 4):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(_groups(c), c), nn.SiLU(),
                       nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(_groups(c), c), nn.SiLU()]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.proj = nn.Linear(c_in, dim)
        self.token_pos = nn.Parameter(torch.zeros(1, grid * grid, dim))
        nn.init.normal_(self.token_pos, std=0.02)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        f = self.pool(self.body(image))                      # (B, c, g, g)
        return self.proj(f.flatten(2).transpose(1, 2)) + self.token_pos


class PositionalExpert(nn.Module):
    """Relative slice position ``(B,)`` → one token ``(B, 1, dim)``.

    Sinusoidal features at ``n_freq`` octaves let a small MLP resolve both the coarse
    (top / middle / bottom of the structure) and the fine position.
    """

    def __init__(self, dim: int = 64, n_freq: int = 8):
        super().__init__()
        self.register_buffer("freq", math.pi * 2.0 ** torch.arange(n_freq, dtype=torch.float32), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * n_freq + 1, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        p = pos.float().reshape(-1, 1)
        ang = p * self.freq
        return self.mlp(torch.cat([p, torch.sin(ang), torch.cos(ang)], dim=1))[:, None]


class WeightedConditionalModule(nn.Module):
    """Per-sample softmax weights over E experts → weighted, concatenated context tokens."""

    def __init__(self, n_experts: int, dim: int = 64, hidden: int = 64):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(n_experts * dim, hidden), nn.SiLU(), nn.Linear(hidden, n_experts))
        self.type_emb = nn.Parameter(torch.zeros(n_experts, dim))
        nn.init.normal_(self.type_emb, std=0.02)

    def forward(self, tokens: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        summary = torch.cat([t.mean(dim=1) for t in tokens], dim=1)      # (B, E·dim)
        w = torch.softmax(self.gate(summary), dim=1)                      # (B, E): over experts
        ctx = [w[:, e, None, None] * (t + self.type_emb[e]) for e, t in enumerate(tokens)]
        return torch.cat(ctx, dim=1), w


class TeamOfExperts(nn.Module):
    """Image (optional) + positional experts fused into a cross-attention context.

    Args:
        in_channels: image channels.
        dim: context width (``cross_attention_dim`` of the diffusion UNet).
        image_channels: stages of the image expert's CNN.
        grid: image tokens per side.
        use_image: False drops the image expert (an ablation: shape prior + position only).

    ``forward(image (B, C, H, W), pos (B,))`` → ``(context (B, T, dim), weights (B, E))``.
    """

    def __init__(self, in_channels: int, dim: int = 64, image_channels: tuple[int, ...] = (16, 32, 64),
                 grid: int = 4, use_image: bool = True):
        super().__init__()
        self.use_image = bool(use_image)
        self.image = ImageExpert(in_channels, tuple(image_channels), dim, grid) if self.use_image else None
        self.position = PositionalExpert(dim)
        self.fuse = WeightedConditionalModule(2 if self.use_image else 1, dim)

    def forward(self, image: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = ([self.image(image)] if self.image is not None else []) + [self.position(pos)]
        return self.fuse(tokens)
