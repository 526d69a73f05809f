"""Mask autoencoder reconstruction baseline (Galati & Zuluaga 2021; Liu et al. 2019).

A small convolutional autoencoder learns, from the EXPERT masks of the reference cases
only, the manifold of plausible shapes. A candidate mask is encoded and decoded: a
plausible shape comes back nearly unchanged, an implausible one (ragged borders,
holes, false-positive blobs, fragments) is pulled towards the closest plausible shape.
The QC score of a label is then ``Dice(candidate, reconstruction)``, measured on the
ORIGINAL grid (the reconstruction is mapped back with `segqc.plan.preprocess.invert_mask`).

Design choices, and why:

* 2D on the plan's axial model-space slices (``S × S``): 3D volumes are processed
  slice by slice, every slice (empty ones too), and restacked — one network serves 2D
  photos and 3D scans, and CPU training stays in minutes.
* Input and output are one-hot with ``L + 1`` channels (background + labels); the loss
  is Dice + cross-entropy (MONAI ``DiceCELoss``).
* A real bottleneck (``latent_channels × (S/8)²`` with the defaults: a stride-4
  patchify stage, then stride 2) and *denoising* training (input: the expert mask
  lightly corrupted by smooth random boundary noise, label growth/shrinkage and small
  blobs/holes; target: the expert mask) keep the network from learning the identity,
  which would score every candidate 1.0.
* The mask alone is judged, never the image: a plausible shape in the wrong place is
  invisible to this method (that is what the image-aware methods are for).
"""

from __future__ import annotations

import itertools
import math
import time

import numpy as np

from segqc.data.case import Case
from segqc.data.labels import to_index, to_labels
from segqc.methods.base import FitContext, Param, QCMethod, RawScore, check_is_fitted, check_labels, fraction, positive
from segqc.utils import round_up, torch_threads

__all__ = ["MaskAutoencoder", "build_mask_autoencoder"]

# Slices per forward pass at scoring time (bounded memory for large volumes).
_INFER_BATCH = 64
# At most this many model-space slices are kept for training (uint8, S × S each).
_MAX_TRAIN_SLICES = 20_000
# Steps timed before the schedule's length is fitted to the time budget.
_TIMING_STEPS = 10
# Denoising corruption: the largest smooth-noise amplitude (one-hot units; ~0.3 wobbles
# borders, ~0.6 also sprinkles blobs and holes) and the spread of the per-label bias
# (0.15 grows / shrinks a label by ~1 px of model space).
_NOISE_MAX = 0.35
_BIAS_STD = 0.15


def build_mask_autoencoder(n_classes: int, channels: tuple[int, ...] = (32, 64), latent_channels: int = 4,
                           norm: str = "batch", head_channels: int = 8, latent_dim: int | None = None,
                           size: int | None = None):
    """The 2D convolutional mask autoencoder, from MONAI ``Convolution`` blocks.

    The encoder starts with a non-overlapping 4 × 4 "patchify" convolution (stride 4) and
    halves the side again at each further stage; the decoder mirrors it with stride-2
    transposed convolutions, a 4 × 4 stride-4 transposed convolution back to full
    resolution and a small 3 × 3 head. No convolution runs on many channels at full
    resolution, which keeps CPU training of ~600 slices of 128² within minutes.

    Args:
        n_classes: input/output channels, ``L + 1`` (background + foreground labels).
        channels: feature channels per encoder stage (first at ``S/4``, then ``S/8``, ...):
            the latent is ``latent_channels × (S / 2**(len(channels) + 1))²``, i.e.
            ``4 × (S/8)²`` with the defaults.
        latent_channels: channels of the bottleneck.
        norm: MONAI norm name (``batch``, ``instance``) used in every block.
        head_channels: channels of the full-resolution head.
        latent_dim: if given, the spatial bottleneck is further squeezed through a dense
            ``latent_dim`` vector (a global shape code, as in Galati & Zuluaga); needs ``size``.
        size: slice side the dense latent is built for (after padding to the total stride).

    Returns:
        ``torch.nn.Module`` mapping one-hot ``(B, n_classes, H, W)`` to logits of the same
        shape; ``H``, ``W`` need not be multiples of the total stride (padded inside with
        background).
    """
    import torch
    import torch.nn.functional as F
    from monai.networks.blocks import Convolution

    channels = tuple(int(c) for c in channels)
    if not channels:
        raise ValueError("channels must name at least one stage, got ()")
    factor = 2 ** (len(channels) + 1)
    if latent_dim is not None and (size is None or size % factor):
        raise ValueError(f"a dense latent needs the padded slice side, a multiple of {factor}; got size={size}")

    def block(c_in: int, c_out: int, **kw):
        return Convolution(2, c_in, c_out, kernel_size=3, act="PRELU", norm=norm, **kw)

    def resample(c_in: int, c_out: int, k: int, transposed: bool):
        return Convolution(2, c_in, c_out, kernel_size=k, strides=k, padding=0, act="PRELU", norm=norm,
                           is_transposed=transposed, **({"output_padding": 0} if transposed else {}))

    class _MaskAE(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            enc: list = [resample(n_classes, channels[0], 4, False), block(channels[0], channels[0])]
            for a, b in itertools.pairwise(channels):
                enc += [resample(a, b, 2, False), block(b, b)]
            enc.append(Convolution(2, channels[-1], latent_channels, kernel_size=1, conv_only=True))
            rev = channels[::-1]
            dec: list = [block(latent_channels, rev[0])]
            for a, b in itertools.pairwise(rev):
                dec += [resample(a, b, 2, True), block(b, b)]
            dec += [resample(rev[-1], head_channels, 4, True),
                    Convolution(2, head_channels, n_classes, kernel_size=3, conv_only=True)]
            self.encoder = torch.nn.Sequential(*enc)
            self.decoder = torch.nn.Sequential(*dec)
            self.factor = factor
            if latent_dim is not None:
                g = size // factor
                self.grid = (latent_channels, g, g)
                self.to_latent = torch.nn.Linear(latent_channels * g * g, latent_dim)
                self.from_latent = torch.nn.Linear(latent_dim, latent_channels * g * g)

        def encode(self, x):
            z = self.encoder(x)
            return self.to_latent(z.flatten(1)) if latent_dim is not None else z

        def decode(self, z):
            if latent_dim is not None:
                z = self.from_latent(z).view(-1, *self.grid)
            return self.decoder(z)

        def forward(self, x):
            h, w = x.shape[-2:]
            ph, pw = (-h) % self.factor, (-w) % self.factor
            if ph or pw:
                # pad with background: channel 0 = 1, the others 0
                x = F.pad(x, (0, pw, 0, ph))
                x[:, 0, h:, :] = 1.0
                x[:, 0, :, w:] = 1.0
            return self.decode(self.encode(x))[..., :h, :w]

    return _MaskAE()


def _corrupt_onehot(y, gen, p_corrupt: float):
    """Light, shape-level corruption of one-hot masks ``(B, C, H, W)`` for denoising training.

    Each label's indicator is box-smoothed, shifted by a per-sample, per-label bias
    (grow / shrink a few pixels) and perturbed by smooth random noise (wobbly borders, and
    at higher amplitude small blobs and holes), then re-discretised by argmax. A fraction
    ``1 - p_corrupt`` of the batch is left clean so that good masks come back unchanged.
    """
    import torch
    import torch.nn.functional as F

    dev = y.device
    pick = torch.nonzero(torch.rand(y.shape[0], generator=gen, device=dev) < p_corrupt).flatten()
    if pick.numel() == 0:
        return y
    yc = y[pick]
    B, C, H, W = yc.shape
    k = 7
    smooth = F.avg_pool2d(yc, k, stride=1, padding=k // 2, count_include_pad=False)
    g = (4, 8, 16)[int(torch.randint(0, 3, (1,), generator=gen, device=dev).item())]
    low = torch.randn(B, C, max(2, H // g), max(2, W // g), generator=gen, device=dev)
    noise = F.interpolate(low, size=(H, W), mode="bilinear", align_corners=False)
    sigma = _NOISE_MAX * torch.rand(B, 1, 1, 1, generator=gen, device=dev)
    bias = _BIAS_STD * torch.randn(B, C, 1, 1, generator=gen, device=dev)
    logits = smooth + sigma * noise + bias
    out = y.clone()
    out[pick] = F.one_hot(logits.argmax(1), C).permute(0, 3, 1, 2).to(y.dtype)
    return out


def _positive_ints(v) -> str | None:
    ok = len(v) >= 1 and all(not isinstance(c, bool) and int(c) == c and c >= 1 for c in v)
    return None if ok else "must be one or more positive integers"


class MaskAutoencoder(QCMethod):
    """Denoising mask autoencoder; QC score = Dice(candidate, its reconstruction) per label.

    Parameters:
        epochs: passes over the reference slices (training also stops at ``max_minutes``).
        batch_size: slices per step.
        lr: peak AdamW learning rate, cosine decay to 0 over the run; when the first steps
            show that ``epochs`` would overrun ``max_minutes``, the run is shortened to
            fit and still annealed.
        latent_channels: bottleneck channels; the latent is ``latent_channels × (S/8)²``.
        channels: encoder feature channels per stage (first at ``S/4``, then ``S/8``, ...;
            the decoder mirrors them); see `build_mask_autoencoder`.
        latent_dim: None for the spatial latent, or the size of a dense latent vector
            the spatial latent is squeezed through (a tighter, global shape code).
        denoise: fraction of training inputs that are lightly corrupted (0 = plain AE).
        max_minutes: wall-clock cap on the training loop.
        n_threads: torch CPU threads while fitting / scoring (restored afterwards); None
            keeps torch's setting. On a shared machine 1 avoids thread oversubscription,
            which can slow small convolutions down a hundredfold.
        seed: seed of weights, batches and corruptions; None draws one from ``ctx.rng``.
    """

    name = "autoencoder"
    params = {
        "epochs": Param(60, check=positive),
        "batch_size": Param(32, check=positive),
        "lr": Param(3e-3, check=positive),
        "latent_channels": Param(4, check=positive),
        "channels": Param((32, 64), check=_positive_ints),
        "latent_dim": Param(None, int, positive),
        "denoise": Param(0.7, check=fraction),
        "max_minutes": Param(4.5, check=positive),
        "n_threads": Param(None, int, positive),
        "seed": Param(None, int),
    }

    # -- fitting -----------------------------------------------------------------------
    def _fit(self, reference: list[Case], ctx: FitContext) -> None:
        """Train on the expert masks of ``reference`` in the plan's model space.

        ``ctx.pairs`` are ignored: the autoencoder learns plausible shapes from expert
        masks only, never from candidates.
        """
        with torch_threads(self.n_threads):
            self._train(reference, ctx)

    def _train(self, cases: list[Case], ctx: FitContext) -> None:
        import torch
        from monai.losses import DiceCELoss

        from segqc.plan.preprocess import preprocess

        plan, rng, labels, device = self.plan_, ctx.rng, self.labels_, self.device_
        if not labels:
            raise ValueError("the plan has no foreground labels; nothing to learn")
        seed = int(rng.integers(2**31)) if self.seed is None else int(self.seed)

        slices, n_empty = [], 0
        for case in cases:
            if not isinstance(case, Case) and hasattr(case, "load"):
                case = case.load()
            check_labels(case.mask, labels, f"expert mask of {case.case_id}")
            _, m_ms, _ = preprocess(case, plan)
            idx = to_index(m_ms, labels, what=f"expert mask of {case.case_id}")
            slices.append(idx)
            n_empty += int((~idx.reshape(len(idx), -1).any(1)).sum())
            ctx.progress(f"autoencoder: prepared {case.case_id}")
        data = np.concatenate(slices, axis=0)
        nonempty = data.reshape(len(data), -1).any(1)
        # empty slices teach "nothing in, nothing out", but should not swamp the shapes
        keep = np.flatnonzero(nonempty)
        empty = np.flatnonzero(~nonempty)
        n_keep_empty = min(len(empty), max(len(keep), 1))
        keep = np.concatenate([keep, rng.choice(empty, n_keep_empty, replace=False)]) if len(empty) else keep
        if len(keep) > _MAX_TRAIN_SLICES:
            keep = rng.choice(keep, _MAX_TRAIN_SLICES, replace=False)
        data_t = torch.from_numpy(np.ascontiguousarray(data[np.sort(keep)])).to(device)
        n, n_classes = len(data_t), len(labels) + 1

        net_args = {"n_classes": n_classes, "channels": [int(c) for c in self.channels],
                    "latent_channels": int(self.latent_channels), "norm": "batch", "head_channels": 8}
        if self.latent_dim is not None:
            net_args.update(latent_dim=int(self.latent_dim),
                            size=round_up(plan.slice_size, 2 ** (len(self.channels) + 1)))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build_mask_autoencoder(**net_args).to(device)
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        order_rng = np.random.default_rng(seed)
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=1e-4)
        loss_fn = DiceCELoss(softmax=True, batch=True)
        bs = min(int(self.batch_size), n)
        steps_per_epoch = max(1, n // bs)  # drop the ragged last batch (batch norm)
        total = int(self.epochs) * steps_per_epoch
        budget = 60.0 * float(self.max_minutes)
        t0 = time.perf_counter()
        step, epochs_run, losses = 0, 0, []
        net.train()
        done = False
        for _ in range(int(self.epochs)):
            perm = torch.from_numpy(order_rng.permutation(n)).to(device)
            epoch_loss = []
            for b in range(steps_per_epoch):
                elapsed = time.perf_counter() - t0
                if step == _TIMING_STEPS and total > step:
                    # the time budget fixes the schedule's length once, so that a run that
                    # fits the budget is reproducible and a capped one is still annealed
                    afford = step + int((budget - elapsed) / max(elapsed / step, 1e-9))
                    total = max(step + 1, min(total, afford))
                if step >= total or elapsed >= budget:
                    done = True
                    break
                frac = step / total
                warm = min(1.0, (step + 1) / 20)
                for group in opt.param_groups:
                    group["lr"] = self.lr * warm * 0.5 * (1 + math.cos(math.pi * frac))
                y = torch.nn.functional.one_hot(data_t[perm[b * bs:(b + 1) * bs]].long(), n_classes)
                y = y.permute(0, 3, 1, 2).float()
                x = _corrupt_onehot(y, gen, self.denoise) if self.denoise > 0 else y
                loss = loss_fn(net(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                epoch_loss.append(float(loss.detach()))
                step += 1
            if epoch_loss:
                epochs_run += 1
                losses.append(float(np.mean(epoch_loss)))
            ctx.progress(f"autoencoder epoch {epochs_run}/{int(self.epochs)}")
            if done:
                break
        net.eval()
        self.net_args_ = net_args
        self.net_ = net
        self.n_train_slices_ = int(n)
        self.history_ = {"epochs_run": epochs_run, "steps": step, "train_seconds": time.perf_counter() - t0,
                         "loss": losses, "seed": seed, "n_empty_slices": int(n_empty)}

    def _build_network(self, key: str):
        """The untrained autoencoder of ``net_args_`` (``net_`` is the only network)."""
        return build_mask_autoencoder(**self.net_args_)

    # -- scoring -----------------------------------------------------------------------
    def _probs(self, idx_ms: np.ndarray) -> np.ndarray:
        """Softmax reconstruction ``(Z, L+1, S, S)`` float32 of model-space index slices ``(Z, S, S)``."""
        import torch

        dev = next(self.net_.parameters()).device
        n_classes = len(self.labels_) + 1
        out = np.empty((idx_ms.shape[0], n_classes, *idx_ms.shape[1:]), dtype=np.float32)
        with torch.inference_mode():
            for s in range(0, idx_ms.shape[0], _INFER_BATCH):
                t = torch.from_numpy(np.ascontiguousarray(idx_ms[s:s + _INFER_BATCH])).to(dev).long()
                x = torch.nn.functional.one_hot(t, n_classes).permute(0, 3, 1, 2).float()
                out[s:s + _INFER_BATCH] = torch.softmax(self.net_(x), dim=1).cpu().numpy()
        return out

    def reconstruct(self, case: Case) -> tuple[np.ndarray, np.ndarray, dict]:
        """Reconstruction of ``case.mask``: model-space probabilities ``(Z, L+1, S, S)``,
        model-space candidate channel indices ``(Z, S, S)`` and the preprocessing props."""
        check_is_fitted(self)
        with torch_threads(self.n_threads):
            return self._reconstruct_many([case])[0]

    def _reconstruct_many(self, cases: list[Case]) -> list[tuple[np.ndarray, np.ndarray, dict]]:
        """`reconstruct` of several cases: their model-space slices go through the network together."""
        from segqc.nets.batching import split_counts
        from segqc.plan.preprocess import preprocess

        idx, props = [], []
        for case in cases:
            _, m_ms, pr = preprocess(case, self.plan_)
            idx.append(to_index(m_ms, self.labels_, what="candidate mask"))
            props.append(pr)
        probs = split_counts(self._probs(np.concatenate(idx)), [len(i) for i in idx])
        return list(zip(probs, idx, props))

    def _score_cases(self, cases: list[Case]) -> list[RawScore]:
        """Dice and HD95 (mm) of the candidate against its reconstruction, on the original grid.

        The reconstruction is a pGT: `segqc.components.pgt_scoring.score_against_pgt`
        (both empty → Dice 1, HD95 0; exactly one empty → Dice 0, HD95 the image
        diagonal). Maps (original
        grid): ``pgt`` the reconstruction's labels, ``error`` float32 in [0, 1], the
        autoencoder's probability that the candidate's label is wrong. Features:
        ``soft_dice_<label>`` (candidate vs reconstruction probabilities, model space) and
        ``error_mean_fg``.
        """
        with torch_threads(self.n_threads):
            return [self._score(c, *r) for c, r in zip(cases, self._reconstruct_many(cases))]

    def _score(self, case: Case, probs: np.ndarray, idx: np.ndarray, props: dict) -> RawScore:
        from segqc.components.pgt_scoring import score_against_pgt
        from segqc.plan.preprocess import invert_map, invert_mask

        recon = invert_mask(to_labels(probs.argmax(1), self.labels_), props)
        p_cand = np.take_along_axis(probs, idx[:, None], axis=1)[:, 0]
        error = np.clip(invert_map(1.0 - p_cand, props, fill=0.0), 0.0, 1.0).astype(np.float32)
        cand = case.mask
        dice, hd = score_against_pgt(cand, recon, self.labels_, case.spacing)
        feats = {}
        for i, k in enumerate(self.labels_, start=1):
            # soft Dice in model space: a smoother variant for fusion / calibration
            ci, pi = idx == i, probs[:, i]
            denom = float(ci.sum() + pi.sum())
            feats[f"soft_dice_{k}"] = 1.0 if denom < 1e-6 else float(2.0 * pi[ci].sum() / denom)
        fg = (cand > 0) | (recon > 0)
        feats["error_mean_fg"] = float(error[fg].mean()) if fg.any() else 0.0
        return RawScore(dice=dice, hd95=hd, maps={"pgt": recon, "error": error}, features=feats)
