"""nnQC's fitting (`segqc.methods.nnqc`): which slices each stage learns from, and the two stages.

The method turns reference cases and training pairs into model-space index slices; this
module picks the slices (a few empty ones teach "nothing in, nothing out"; caps bound the
memory), trains the VAE-GAN (stage 1) and the latent diffusion model with its Team of
Experts (stage 2) within the fit's time budget (`segqc.nets.mask_ldm`), and encodes masks
into latents for both fitting and scoring.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from segqc.metrics import binary_dice

__all__ = ["INFER_BATCH", "Stage2Slices", "cap_stage2", "encode", "fit_networks", "heldout_dice",
           "pick_pair_slices", "pick_stage1_slices", "relative_positions"]

# At most this many stage-1 slices / stage-2 training slices (memory on small machines).
MAX_STAGE1 = 30_000
MAX_STAGE2 = 40_000
# Slices (× samples) through a network per forward pass.
INFER_BATCH = 128


@dataclass
class Stage2Slices:
    """Stage 2's training slices: each a candidate / expert index slice of one model-space image."""

    images: list[np.ndarray]   # (C, Z, P, P) float16 network inputs, one per image
    img: list[int]             # per slice: its image
    z: list[int]               # per slice: its index in that image
    cand: list[np.ndarray]     # per slice: (P, P) candidate channel indices
    true: list[np.ndarray]     # per slice: (P, P) expert channel indices
    pos: list[float]           # per slice: relative position of the slice (`relative_positions`)


def pick_pair_slices(cand: np.ndarray, true: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Slices of a pair ``(Z, P, P)`` to learn from: all with foreground, and a quarter as many empty ones."""
    keep = np.flatnonzero(cand.reshape(len(cand), -1).any(1) | true.reshape(len(true), -1).any(1))
    empty = np.setdiff1d(np.arange(len(cand)), keep)
    if empty.size:
        keep = np.concatenate([keep, rng.choice(empty, min(empty.size, max(1, keep.size // 4)), False)])
    return keep


def cap_stage2(s: Stage2Slices, rng: np.random.Generator) -> Stage2Slices:
    """At most `MAX_STAGE2` slices, drawn at random (in their order)."""
    if len(s.img) <= MAX_STAGE2:
        return s
    pick = np.sort(rng.choice(len(s.img), MAX_STAGE2, replace=False))
    return Stage2Slices(s.images, *([v[j] for j in pick] for v in (s.img, s.z, s.cand, s.true, s.pos)))


def pick_stage1_slices(s1: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Expert slices ``(N, P, P)`` for stage 1: those with foreground, a quarter as many empty ones, capped."""
    nonempty = s1.reshape(len(s1), -1).any(1)
    fg, bg = np.flatnonzero(nonempty), np.flatnonzero(~nonempty)
    keep = np.concatenate([fg, rng.choice(bg, min(bg.size, max(1, fg.size // 4)), False)]) if bg.size else fg
    if keep.size > MAX_STAGE1:
        keep = rng.choice(keep, MAX_STAGE1, replace=False)
    return np.ascontiguousarray(s1[np.sort(keep)])


def encode(vae, idx: np.ndarray, n_classes: int, dev: str):
    """Posterior means of one-hot index slices ``(N, P, P)`` → ``(N, lc, h, w)`` on the device."""
    import torch
    import torch.nn.functional as F

    out = []
    with torch.no_grad():
        for s in range(0, len(idx), INFER_BATCH):
            t = torch.from_numpy(np.ascontiguousarray(idx[s:s + INFER_BATCH])).to(dev).long()
            out.append(vae.encode(F.one_hot(t, n_classes).permute(0, 3, 1, 2).float())[0])
    return torch.cat(out)


def heldout_dice(vae, vols: list[np.ndarray], n_classes: int, dev: str) -> float | None:
    """Mean over held-out cases and labels of Dice(expert mask, VAE reconstruction), model space."""
    import torch

    if not vols:
        return None
    scores = []
    with torch.no_grad():
        for v in vols:
            z = encode(vae, v, n_classes, dev)
            rec = torch.cat([vae.decode(zz).argmax(1).cpu() for zz in z.split(INFER_BATCH)]).numpy()
            scores.append(np.mean([binary_dice(rec == i, v == i) for i in range(1, n_classes)]))
    return round(float(np.mean(scores)), 4)


def fit_networks(build: Callable[[], tuple], s1: np.ndarray, held: list[np.ndarray], s2: Stage2Slices, *,
                 n_classes: int, batch_size: int, stage1_steps: int, stage2_steps: int, seconds: float,
                 stage1_share: float, lr: float, kl_weight: float, adv_weight: float, adv_start: float,
                 use_candidate: bool, seed: int, dev: str, progress: Callable[[str], None]) -> tuple:
    """Stage 1 on expert slices ``s1``, then stage 2 on ``s2``, within ``seconds`` in all.

    ``build()`` → untrained ``(vae, unet, toe, scheduler)``, built under ``seed`` (as are
    the batches). Returns ``(vae, unet, toe, scheduler, scale, info1, info2)``, ``scale``
    making the expert latents unit-variance.
    """
    import torch

    from segqc.nets.mask_ldm import build_discriminator, train_stage1, train_stage2

    t0 = time.perf_counter()
    s1_t = torch.from_numpy(s1).to(dev)
    bs = min(int(batch_size), len(s1_t))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae, unet, toe, scheduler = build()
        disc = build_discriminator(n_classes)
    # the training's own noise (VAE sampling, diffusion noise and timesteps, dropout) comes from
    # torch's global generator: seeded here, and the caller's state restored after, so that a fit
    # is reproducible whatever ran before it in the process
    devices = [torch.device(dev).index or 0] if str(dev).startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed + 1)
        vae, unet, toe, disc = (m.to(dev) for m in (vae, unet, toe, disc))
        gen = torch.Generator(device="cpu")
        gen.manual_seed(seed)

        def batch1(_step):
            return s1_t[torch.randint(0, len(s1_t), (bs,), generator=gen).to(dev)]

        left = seconds - (time.perf_counter() - t0)
        info1 = train_stage1(vae, disc, batch1, n_classes=n_classes, steps=stage1_steps, seconds=stage1_share * left,
                             lr=lr * 5, kl_weight=kl_weight, adv_weight=adv_weight, adv_start=adv_start,
                             progress=progress)
        del disc
        vae.requires_grad_(False)
        info1["heldout_recon_dice"] = heldout_dice(vae, held, n_classes, dev)
        info1["heldout_cases"] = len(held)
        progress(f"nnqc stage 1: {info1['steps']} steps, {info1['s_per_step']} s/step, held-out reconstruction "
                 f"Dice {info1['heldout_recon_dice']}")

        # latents of every stage-2 slice (posterior means), scaled to unit variance
        z_true = encode(vae, np.stack(s2.true), n_classes, dev)
        z_cand = encode(vae, np.stack(s2.cand), n_classes, dev) if use_candidate else None
        scale = float(1.0 / max(float(z_true.std()), 1e-6))
        z_true = z_true * scale
        z_cand = None if z_cand is None else z_cand * scale
        imgs_t = [torch.from_numpy(im) for im in s2.images]  # float16, CPU: moved per batch
        s_img_a, s_z_a = np.asarray(s2.img), np.asarray(s2.z)
        pos_t = torch.tensor(np.asarray(s2.pos, dtype=np.float32))
        bs2 = min(int(batch_size), len(z_true))

        def batch2(_step):
            j = torch.randint(0, len(z_true), (bs2,), generator=gen)
            jn = j.numpy()
            img = torch.stack([imgs_t[a][:, b] for a, b in zip(s_img_a[jn], s_z_a[jn])]).float()
            return (z_true[j.to(z_true.device)], None if z_cand is None else z_cand[j.to(z_cand.device)],
                    img.to(dev), pos_t[j].to(dev))

        left = seconds - (time.perf_counter() - t0)
        info2 = train_stage2(unet, toe, scheduler, batch2, steps=stage2_steps, seconds=max(left, 1.0), lr=lr,
                             progress=progress)
        progress(f"nnqc stage 2: {info2['steps']} steps, {info2['s_per_step']} s/step, expert weights "
                 f"{info2['expert_weights_mean']}")
        return vae, unet, toe, scheduler, scale, info1, info2


def relative_positions(idx: np.ndarray) -> np.ndarray:
    """Relative axial position of each slice of ``(Z, S, S)`` within the mask's structure.

    0 at the first slice holding foreground, 1 at the last (outside: < 0 or > 1); a
    mask without foreground falls back to the position within the volume. A single
    slice (2D data) is always 0.5.
    """
    z = idx.shape[0]
    if z == 1:
        return np.array([0.5], dtype=np.float32)
    fg = np.flatnonzero(idx.reshape(z, -1).any(1))
    lo, hi = (int(fg[0]), int(fg[-1])) if fg.size else (0, z - 1)
    return ((np.arange(z) - lo + 0.5) / (hi - lo + 1)).astype(np.float32)
