"""Diffusion implicit ensemble (Wolleb et al. 2022, "Diffusion models for implicit image segmentation ensembles").

A denoising diffusion model learns p(mask | image) on the reference cases: its input is the
noisy one-hot mask (foreground labels, scaled to [-1, 1]) concatenated with the image, in
segqc's model space (`segqc.plan.preprocess`) resized to ``size`` × ``size`` slices (3D volumes
slice by slice, with the slice's relative position as an extra channel). At QC time
``n_samples`` masks are drawn with DDIM; their mean is a pseudo ground truth and their
variance an uncertainty map, both brought back to the ORIGINAL grid. The raw score of a label
is the Dice between the candidate and the mean mask, lowered where the samples disagree about
the candidate's own voxels (mean variance inside the candidate ∪ mean mask).

The network predicts the clean mask x0 (``prediction="sample"``) rather than the noise: with
the short trainings a CPU allows, an ε-predicting model had a low noise loss (0.006 on
hippocampus) yet its DDIM samples were noise even on training images, because at large t the
x0 implied by ε = (x_t − √(1−ᾱ)·ε̂)/√ᾱ divides a small ε error by a tiny √ᾱ. Predicting x0
directly makes the first DDIM step an image-conditioned segmentation and the later steps
refine it, so few DDIM steps suffice. ``prediction="epsilon"`` keeps Wolleb et al.'s choice.

It learns from the reference cases only (image → expert mask) and ignores the training pairs
of ``ctx.pairs``: a segmenter conditioned on the image alone never sees a candidate, so
candidate masks, good or bad, have nothing to teach it.

Networks and schedulers are MONAI's (`DiffusionModelUNet`, `DDPMScheduler`, `DDIMScheduler`).
"""

from __future__ import annotations

import hashlib
import time

import numpy as np

from segqc.data.case import Case
from segqc.data.labels import to_index, to_labels
from segqc.methods.base import FitContext, Param, QCMethod, RawScore, one_of, positive
from segqc.metrics import binary_dice
from segqc.utils import torch_threads

__all__ = ["DiffusionEnsemble"]

# Rows (samples × slices) denoised per network call at scoring time (bounded memory for large batches).
_INFER_BATCH = 256


class DiffusionEnsemble(QCMethod):
    """Image-conditioned diffusion segmenter; N samples → mean mask, variance; QC = agreement.

    Args:
        size: slice side in pixels the diffusion model works at (64–128 on a CPU).
        channels: DiffusionModelUNet block widths (attention at the last level). None picks
            them from the plan: (32, 64, 64) for 2D images, (16, 32, 32) for volumes, whose
            every slice is sampled ``n_samples`` × ``ddim_steps`` times, so that sampling
            a volume stays within seconds on a CPU.
        train_steps, batch_size, lr: training (stops early after ``max_minutes``).
        timesteps: DDPM training steps; ddim_steps: sampling steps; n_samples: masks per case.
        prediction: what the network outputs, ``sample`` (the clean mask x0) or ``epsilon``.
        n_threads: torch CPU threads; seed: sampling noise.
    """

    name = "diffusion"
    params = {
        "size": Param(64, check=positive),
        "channels": Param(None, tuple, positive),
        "train_steps": Param(20000, check=positive),
        "batch_size": Param(16, check=positive),
        "lr": Param(2e-4, check=positive),
        "timesteps": Param(1000, check=positive),
        "ddim_steps": Param(5, check=positive),
        "prediction": Param("sample", check=one_of("sample", "epsilon")),
        "n_samples": Param(5, check=positive),
        "max_minutes": Param(20.0, check=positive),
        "n_threads": Param(None, int),
        "seed": Param(0),
    }

    # -- data --------------------------------------------------------------------------
    def _slices(self, image_ms: np.ndarray):
        """(C, Z, S, S) model-space image → (Z, C [+1], size, size) conditioning tensor."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(image_ms, dtype=np.float32)).permute(1, 0, 2, 3)
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        if self.ndim_ == 3:  # where along the volume the slice is
            pos = torch.linspace(-1, 1, x.shape[0]).view(-1, 1, 1, 1).expand(-1, 1, self.size, self.size)
            x = torch.cat([x, pos], 1)
        return x

    def _targets(self, mask_ms: np.ndarray):
        """(Z, S, S) model-space labels → (Z, L, size, size) one-hot in [-1, 1] (area-resized, re-binarised)."""
        import torch
        import torch.nn.functional as F

        onehot = np.stack([mask_ms == k for k in self.labels_], 1).astype(np.float32)
        y = torch.from_numpy(onehot)
        if y.shape[-1] != self.size:
            y = (F.interpolate(y, size=(self.size, self.size), mode="area") > 0.5).float()
        return 2 * y - 1

    def _net_kwargs(self, n_in: int) -> dict:
        """`DiffusionModelUNet` arguments for ``n_in`` conditioning channels (kept in ``net_kwargs_``)."""
        widths = self.channels or ((32, 64, 64) if self.ndim_ == 2 else (16, 32, 32))
        ch = tuple(int(c) for c in widths)
        return {"spatial_dims": 2, "in_channels": len(self.labels_) + n_in, "out_channels": len(self.labels_),
                "channels": ch, "num_res_blocks": 1, "num_head_channels": ch[-1], "norm_num_groups": min(8, ch[0]),
                "attention_levels": tuple(i == len(ch) - 1 for i in range(len(ch)))}

    def _build_network(self, key: str):
        from monai.networks.nets import DiffusionModelUNet

        if key != "net_":
            return super()._build_network(key)
        return DiffusionModelUNet(**self.net_kwargs_)

    # -- fitting -----------------------------------------------------------------------
    def _fit(self, reference: list[Case], ctx: FitContext) -> None:
        """The segmenter p(mask | image) from the reference cases (``ctx.pairs`` unused: see above)."""
        import torch
        from monai.networks.schedulers import DDPMScheduler

        from segqc.plan.preprocess import preprocess

        rng, dev = ctx.rng, self.device_
        self.ndim_ = self.plan_.ndim
        xs, ys = [], []
        for c in reference:
            im, mk, _ = preprocess(c, self.plan_)
            xs.append(self._slices(im))
            ys.append(self._targets(mk))
        X, Y = torch.cat(xs), torch.cat(ys)
        gen = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
        with torch_threads(self.n_threads):
            torch.manual_seed(int(rng.integers(1 << 31)))
            self.net_kwargs_ = self._net_kwargs(X.shape[1])
            net = self._build_network("net_").to(dev)
            sched = DDPMScheduler(num_train_timesteps=self.timesteps, prediction_type=self.prediction)
            opt = torch.optim.AdamW(net.parameters(), lr=self.lr)
            t0, losses = time.time(), []
            X, Y = X.to(dev), Y.to(dev)
            for step in range(int(self.train_steps)):
                idx = torch.randint(0, len(X), (min(self.batch_size, len(X)),), generator=gen).to(dev)
                x, y = X[idx], Y[idx]
                if torch.rand(1, generator=gen).item() < 0.5:  # flips: cheap augmentation, same for both
                    x, y = x.flip(-1), y.flip(-1)
                noise = torch.randn(y.shape, generator=gen).to(dev)
                t = torch.randint(0, self.timesteps, (len(y),), generator=gen).to(dev)
                pred = net(torch.cat([sched.add_noise(y, noise, t), x], 1), timesteps=t)
                loss = torch.nn.functional.mse_loss(pred, y if self.prediction == "sample" else noise)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                if (step + 1) % 500 == 0:
                    ctx.progress(f"diffusion: step {step + 1}, loss {np.mean(losses[-500:]):.4f}, "
                                 f"{time.time() - t0:.0f} s")
                if time.time() - t0 > 60 * self.max_minutes:
                    break
        self.net_ = net.eval()
        self.train_steps_done_ = step + 1
        self.final_loss_ = float(np.mean(losses[-100:]))

    # -- sampling ----------------------------------------------------------------------
    def sample(self, case: Case) -> tuple[np.ndarray, dict]:
        """``n_samples`` foreground probabilities in model space, (N, L, Z, size, size) in [0, 1], and props."""
        return self._sample_many([case])[0]

    def _sample_many(self, cases: list[Case]) -> list[tuple[np.ndarray, dict]]:
        """`sample` of several cases: every sample of every slice of them is denoised in the same calls."""
        import torch

        from segqc.plan.preprocess import preprocess

        n, L = int(self.n_samples), len(self.labels_)
        props, conds = [], []
        for case in cases:
            im, _, pr = preprocess(case.with_mask(None), self.plan_)
            props.append(pr)
            conds.append(self._slices(im))
        rows = [n * len(c) for c in conds]
        cond = torch.cat([c.repeat(n, 1, 1, 1) for c in conds])
        x = torch.cat([self._noise(r) for r in rows])
        with torch_threads(self.n_threads), torch.no_grad():
            p = torch.cat([self._denoise(xc, cc) for xc, cc in zip(x.split(_INFER_BATCH), cond.split(_INFER_BATCH))])
        out = []
        for pc, c, pr in zip(p.split(rows), conds, props):
            pc = pc.numpy().reshape(n, len(c), L, self.size, self.size)
            out.append((pc.transpose(0, 2, 1, 3, 4), pr))
        return out

    def _noise(self, rows: int):
        """One case's starting noise ``(rows, L, size, size)``, drawn alone: the same whatever its batch."""
        import torch

        gen = torch.Generator().manual_seed(int(self.seed))
        return torch.randn((rows, len(self.labels_), self.size, self.size), generator=gen)

    def _denoise(self, x, cond):
        """DDIM from noise ``x`` conditioned on ``cond`` (CPU tensors) → probabilities in [0, 1], on the CPU."""
        import torch
        from monai.networks.schedulers import DDIMScheduler

        dev = next(self.net_.parameters()).device
        sched = DDIMScheduler(num_train_timesteps=self.timesteps, prediction_type=self.prediction)
        sched.set_timesteps(self.ddim_steps)
        x, c = x.to(dev), cond.to(dev)
        for t in sched.timesteps:
            out = self.net_(torch.cat([x, c], 1), timesteps=torch.full((len(x),), int(t), device=dev))
            x, _ = sched.step(out, int(t), x)
        return ((x.clamp(-1, 1) + 1) / 2).cpu()

    def _to_model_space(self, p: np.ndarray, props: dict) -> np.ndarray:
        """(..., Z, size, size) → (..., Z, S, S) at the plan's slice size (linear)."""
        from segqc.plan.preprocess import resize_inplane

        s = int(self.plan_.slice_size)
        return p if p.shape[-1] == s else resize_inplane(p, (s, s), mode="linear", antialias=False)

    # -- scoring -----------------------------------------------------------------------
    def _cached_samples(self, cases: list[Case]) -> list[tuple[np.ndarray, dict]]:
        """`sample` of each case, remembered per image (the candidates of one image, e.g. several
        checkpoints, share it); the images not remembered yet are sampled together, each once."""
        keys = [_image_key(c) for c in cases]
        cache = self.__dict__.setdefault("_cache", {})
        known = {k: cache[k] for k in keys if k in cache}
        todo = {k: c for k, c in zip(keys, cases) if k not in known}
        fresh = dict(zip(todo, self._sample_many(list(todo.values())))) if todo else {}
        for k, v in fresh.items():
            if len(cache) >= 512:
                cache.pop(next(iter(cache)))
            cache[k] = v
        return [(known | fresh)[k] for k in keys]

    def _score_cases(self, cases: list[Case]) -> list[RawScore]:
        return [self.score_samples(c, *s) for c, s in zip(cases, self._cached_samples(cases))]

    def score_samples(self, case: Case, p: np.ndarray, props: dict) -> RawScore:
        """QC of ``case.mask`` from samples ``p`` (N, L, Z, size, size) of `sample` and its ``props``."""
        from segqc.plan.preprocess import invert_map

        fg = p.mean(0)
        var = p.var(0).max(0)                              # (Z, s, s)
        bg = np.clip(1 - fg.sum(0, keepdims=True), 0, 1)
        mean = np.concatenate([bg, fg]) / np.maximum(np.concatenate([bg, fg]).sum(0, keepdims=True), 1e-6)
        mean_o = invert_map(self._to_model_space(mean, props), props, fill=0.0)
        mean_o[0] = np.where(mean_o.sum(0) == 0, 1.0, mean_o[0])  # voxels cropped away: background
        var_o = np.clip(4 * invert_map(self._to_model_space(var, props), props), 0, 1).astype(np.float32)
        pgt = to_labels(mean_o.argmax(0), self.labels_)
        cand = to_index(case.mask, self.labels_, what="candidate mask")
        err = 1.0 - np.take_along_axis(mean_o, cand[None].astype(np.int64), 0)[0]
        dice, feats = {}, {}
        hard = p > 0.5
        for j, k in enumerate(self.labels_):
            m, g = case.mask == k, pgt == k
            agree = binary_dice(m, g)
            roi = m | g
            v = float(var_o[roi].mean()) if roi.any() else 0.0
            pair = [binary_dice(hard[a, j], hard[b, j]) for a in range(len(p)) for b in range(a + 1, len(p))]
            feats.update({f"agreement_{k}": agree, f"variance_{k}": v,
                          f"pairwise_dice_{k}": float(np.mean(pair)) if pair else float("nan")})
            dice[k] = float(np.clip(agree * (1 - v), 0, 1))
        return RawScore(dice=dice, maps={"pgt": pgt, "variance": var_o, "error": err.astype(np.float32)},
                        features=feats)


def _image_key(case: Case) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(case.image).tobytes(), digest_size=16).digest()
