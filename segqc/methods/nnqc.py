"""nnQC (Marcianò et al.): a diffusion model writes a pseudo ground truth; QC = candidate vs pGT.

1. Every case goes through the plan's `segqc.plan.preprocess` (2D photos and 3D volumes
   alike, volumes as axial slices); every map comes back through its exact inverse.
2. Stage 1: a VAE-GAN (`segqc.nets.mask_ldm`) learns a latent space of plausible expert
   mask slices; its held-out reconstruction Dice is kept in ``fit_info_["stage1"]``.
3. A Team of Experts (`segqc.nets.team_of_experts`): an image expert, a positional expert
   (relative position of the slice within the structure, 0.5 in 2D) and per-sample weights
   over the experts form the cross-attention context.
4. Stage 2: a latent diffusion UNet learns the EXPERT mask's latent, conditioned by the
   context and the candidate's latent, on realistic bad masks (`segqc.data.corrupt` + the
   model-made pairs of ``ctx.pairs``), so it learns to correct a candidate rather than copy
   it. The training loops are `segqc.nets.nnqc_training`.
5. Scoring: K DDIM samples, majority vote → pGT, plus the share of samples disagreeing with
   the pGT (uncertainty) and with the candidate (error map), on the ORIGINAL grid, where
   Dice and HD95 (mm) against the pGT are measured (`segqc.components.pgt_scoring`).

Beyond the public code: runs on CPU (GPU when present), no hub backbone, the expert softmax
runs over experts (so position matters), metrics in mm on the original grid, never NaN.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np

from segqc.components.pgt_scoring import score_against_pgt
from segqc.data.case import Case
from segqc.data.labels import to_index, to_labels
from segqc.methods.base import FitContext, Param, QCMethod, RawScore, check_is_fitted, non_negative, one_of, positive
from segqc.nets import nnqc_training as training
from segqc.nets.nnqc_training import INFER_BATCH, encode, relative_positions
from segqc.utils import round_up, torch_threads

__all__ = ["NNQC", "CONFIGS"]

# Defaults per hardware; a parameter left None takes its value from the chosen config.
# ``cpu``: the fit is capped at 20 min (preparation included), so that `segqc fit` on the
# Kvasir reference ids (reference segmenter ≤ 10 min + this + scoring the calibration
# pairs) stays within ~45 min on 2 cores; it works on 64 px slices with small networks.
# ``gpu``: full 128 px slices, wider networks, larger batches.
CONFIGS: dict[str, dict] = {
    "cpu": {"work_size": 64, "ae_channels": (16, 32, 32), "latent_channels": 4, "unet_channels": (32, 64),
            "expert_channels": (16, 32, 32), "context_dim": 64, "stage1_steps": 3000, "stage2_steps": 20000,
            "batch_size": 16, "max_minutes": 20.0},
    "gpu": {"work_size": 0, "ae_channels": (32, 64, 64), "latent_channels": 4, "unet_channels": (64, 128, 256),
            "expert_channels": (32, 64, 128), "context_dim": 128, "stage1_steps": 6000, "stage2_steps": 40000,
            "batch_size": 64, "max_minutes": 20.0},
}
_CONFIG_KEYS = tuple(CONFIGS["cpu"])
_NETWORKS = ("vae_", "unet_", "toe_", "scheduler_")


class _SliceInputs(NamedTuple):
    """One case in model space: the networks' inputs, then what its votes are compared with and mapped by."""

    imgs: np.ndarray     # (Z, C, P, P) image slices
    cand: np.ndarray     # (Z, P, P) candidate channel indices at the work size, padded
    pos: np.ndarray      # (Z,) relative positions
    cand_s: np.ndarray   # (Z, S, S) candidate channel indices at the plan's slice size
    props: dict          # `preprocess` props: the way back to the original grid


def _below_one(v) -> str | None:
    return None if 0.0 <= v < 1.0 else "must be in [0, 1)"


class NNQC(QCMethod):
    """Latent-diffusion pseudo ground truth with a Team of Experts; QC = Dice / HD95 (mm) vs the pGT.

    Args:
        config: ``auto`` (``gpu`` when the fit's device is CUDA, else ``cpu``), ``cpu`` or ``gpu``:
            the defaults of every parameter below left None (see `CONFIGS`).
        work_size: side W the model-space ``S × S`` slices are resampled to for the networks
            (0 = S); the votes are resampled back to S (linear) before the pGT is formed.
        ae_channels, unet_channels: VAE / diffusion UNet channels per level (the latent side
            is ``P / 2**(len(ae_channels) - 1)``); latent_channels: channels of the VAE latent.
        expert_channels: stride-2 stages of the image expert's CNN; context_dim: token width.
        stage1_steps, stage2_steps, batch_size: training steps (``max_minutes`` may shorten
            both) and slices per step.
        max_minutes: wall-clock budget of the whole fit (preparation included), of which
            ``stage1_share`` of what is left after preparation goes to stage 1.
        lr: AdamW peak learning rate of both stages (cosine to 0).
        kl_weight, adv_weight: stage-1 KL and adversarial weights, the adversarial term after
            ``adv_start`` of the stage-1 steps.
        pairs_per_case: synthetic bad masks (`segqc.data.corrupt`) per reference case.
        n_samples, ddim_steps: K samples per slice at scoring time, DDIM steps per sample.
        use_image_expert, use_candidate: False drops the image expert / the candidate
            conditioning (ablations; without the candidate nnQC draws a mask for the image alone).
        heldout_fraction: reference cases kept out of stage 1 to report its reconstruction Dice.
        n_threads: torch CPU threads while fitting / scoring (None: torch's setting).
        seed: weights, batches and the sampling noise; None draws one from the fit's rng.
            Scoring is deterministic for a fitted model: the noise is seeded from it.
    """

    name = "nnqc"
    params = {
        "config": Param("auto", check=one_of("auto", "cpu", "gpu")),
        "work_size": Param(None, int, non_negative),
        "ae_channels": Param(None, tuple, positive),
        "latent_channels": Param(None, int, positive),
        "unet_channels": Param(None, tuple, positive),
        "expert_channels": Param(None, tuple, positive),
        "context_dim": Param(None, int, positive),
        "stage1_steps": Param(None, int, positive),
        "stage2_steps": Param(None, int, positive),
        "batch_size": Param(None, int, positive),
        "max_minutes": Param(None, float, positive),
        "stage1_share": Param(0.3, check=_below_one),
        "lr": Param(2e-4, check=positive),
        "kl_weight": Param(1e-6, check=non_negative),
        "adv_weight": Param(0.01, check=non_negative),
        "adv_start": Param(0.3, check=_below_one),
        "pairs_per_case": Param(4, check=positive),
        "n_samples": Param(5, check=positive),
        "ddim_steps": Param(5, check=positive),
        "use_image_expert": Param(True),
        "use_candidate": Param(True),
        "heldout_fraction": Param(0.1, check=_below_one),
        "n_threads": Param(None, int),
        "seed": Param(None, int),
    }

    # -- configuration -------------------------------------------------------------------
    def _resolve(self) -> dict:
        """The effective hyper-parameters: explicit ones win over the config's defaults."""
        name = self.config
        if name == "auto":
            name = "gpu" if self.device_.startswith("cuda") else "cpu"
        cfg = {"config": name, **CONFIGS[name]}
        cfg.update({k: getattr(self, k) for k in _CONFIG_KEYS if getattr(self, k) is not None})
        for k in ("ae_channels", "unet_channels", "expert_channels"):
            cfg[k] = [int(c) for c in cfg[k]]
        return cfg

    def _pad_side(self, s: int) -> int:
        """Model-space side padded so that VAE and UNet downsampling divide it."""
        return round_up(s, 2 ** (len(self.cfg_["ae_channels"]) - 1) * 2 ** (len(self.cfg_["unet_channels"]) - 1))

    def _work_image(self, img: np.ndarray) -> np.ndarray:
        """Model-space image ``(C, Z, S, S)`` → network input ``(C, Z, P, P)`` float16 (resized to W, padded)."""
        from segqc.plan.preprocess import resize_inplane

        S, W, P = self.sides_
        if W != S:
            img = resize_inplane(img, (W, W), mode="linear", antialias=True)
        return np.pad(img, ((0, 0), (0, 0), (0, P - W), (0, P - W))).astype(np.float16)

    def _work_mask(self, idx: np.ndarray) -> np.ndarray:
        """Model-space channel indices ``(Z, S, S)`` → ``(Z, P, P)`` uint8 (one-hot linear resize to W, padded)."""
        from segqc.plan.preprocess import resize_labels

        S, W, P = self.sides_
        if W != S:
            idx = resize_labels(idx, (W, W), mode="onehot_linear", antialias=True)
        return np.pad(idx, ((0, 0), (0, P - W), (0, P - W))).astype(np.uint8)

    def _build_network(self, key: str):
        from segqc.nets.mask_ldm import build_scheduler, build_unet, build_vae
        from segqc.nets.team_of_experts import TeamOfExperts

        c = self.cfg_
        if key == "vae_":
            return build_vae(len(self.labels_) + 1, c["ae_channels"], c["latent_channels"])
        if key == "unet_":
            return build_unet(c["latent_channels"], c["unet_channels"], c["context_dim"], bool(self.use_candidate))
        if key == "toe_":
            return TeamOfExperts(int(self.plan_.n_channels), c["context_dim"], tuple(c["expert_channels"]),
                                 use_image=bool(self.use_image_expert))
        if key == "scheduler_":  # no weights: its noise schedule is fixed
            return build_scheduler()
        return super()._build_network(key)

    # -- fitting -------------------------------------------------------------------------
    def _fit(self, reference: list[Case], ctx: FitContext) -> None:
        """Stage 1 on the expert masks of ``reference``, stage 2 on their bad masks + ``ctx.pairs``."""
        if not self.labels_:
            raise ValueError("the plan has no foreground labels; nothing to learn")
        for p in ctx.pairs:
            if p.truth is None:
                raise ValueError(f"training pair of {p.reference_id} needs the expert mask of its reference case")
        with torch_threads(self.n_threads):
            self._fit_networks(reference, ctx)

    def _fit_networks(self, cases: list[Case], ctx: FitContext) -> None:
        """Every pair's slices in model space, then the two stages (`segqc.nets.nnqc_training`)."""
        from segqc.methods.base import check_labels, make_training_pairs
        from segqc.plan.preprocess import mask_to_model_space, preprocess

        t0 = time.perf_counter()
        rng, plan, dev = ctx.rng, self.plan_, self.device_
        self.cfg_ = cfg = self._resolve()
        budget = 60.0 * float(cfg["max_minutes"])
        seed = int(rng.integers(2**31)) if self.seed is None else int(self.seed)
        S = int(plan.slice_size)
        W = min(S, cfg["work_size"]) if cfg["work_size"] else S
        P = self._pad_side(W)
        self.sides_ = (S, W, P)

        # -- model space: one image per reference case; every pair's masks along its props
        images, props, truths, ids = [], [], [], {}
        for i, c in enumerate(cases):
            check_labels(c.mask, self.labels_, f"expert mask of {c.case_id}")
            img, m, pr = preprocess(c, plan)
            images.append(self._work_image(img))
            props.append(pr)
            truths.append(self._work_mask(to_index(m, self.labels_)))
            ids[c.case_id] = i
        pairs = make_training_pairs(cases, rng, int(self.pairs_per_case))
        src = [ids[p.reference_id] for p in pairs]
        for p in ctx.pairs:  # model-made failures on a reference case share its image (a simulated site's do not)
            if p.image_id in ids and cases[ids[p.image_id]].shape == p.reference.shape:
                src.append(ids[p.image_id])
            else:
                img, _, pr = preprocess(p.reference.with_mask(None), plan)
                images.append(self._work_image(img))
                props.append(pr)
                truths.append(None)
                src.append(len(images) - 1)
        pairs = pairs + list(ctx.pairs)
        s2 = training.Stage2Slices(images, [], [], [], [], [])
        for p, i in zip(pairs, src):
            # a candidate's label outside the plan (a corruption's label-1 blobs on an empty mask
            # of a {2} dataset) is background here: scoring refuses such candidates anyway
            cand = self._work_mask(to_index(mask_to_model_space(p.candidate, props[i], plan), self.labels_,
                                            strict=False))
            true = self._work_mask(to_index(mask_to_model_space(p.truth, props[i], plan), self.labels_,
                                            what=f"expert mask of {p.reference_id}"))
            pos = relative_positions(cand)
            for z in training.pick_pair_slices(cand, true, rng):
                for v, x in zip((s2.img, s2.z, s2.cand, s2.true, s2.pos), (i, int(z), cand[z], true[z], pos[z])):
                    v.append(x)
        s2 = training.cap_stage2(s2, rng)
        ctx.progress(f"nnqc: {len(cases)} reference cases, {len(pairs)} candidate pairs → {len(s2.img)} slices "
                     f"({time.perf_counter() - t0:.0f} s), config {cfg['config']} on {dev}")

        # -- stage 1: expert-mask slices, a held-out share of cases to measure reconstruction
        n_held = int(round(self.heldout_fraction * len(cases))) if len(cases) >= 10 else 0
        order = rng.permutation(len(cases))
        held, train = order[:n_held], order[n_held:]
        s1 = training.pick_stage1_slices(np.concatenate([truths[i] for i in train], axis=0), rng)
        nets = training.fit_networks(
            lambda: tuple(self._build_network(k) for k in _NETWORKS), s1, [truths[i] for i in held], s2,
            n_classes=len(self.labels_) + 1, batch_size=cfg["batch_size"], stage1_steps=cfg["stage1_steps"],
            stage2_steps=cfg["stage2_steps"], seconds=budget - (time.perf_counter() - t0),
            stage1_share=float(self.stage1_share), lr=float(self.lr), kl_weight=float(self.kl_weight),
            adv_weight=float(self.adv_weight), adv_start=float(self.adv_start),
            use_candidate=bool(self.use_candidate), seed=seed, dev=dev, progress=ctx.progress)
        self.vae_, self.unet_, self.toe_, self.scheduler_, self.scale_, info1, info2 = nets
        self.seed_ = seed
        self.fit_info_ = {"stage1": info1, "stage2": info2, "n_pairs": len(pairs), "n_stage2_slices": len(s2.img),
                          "n_stage1_slices": int(len(s1)), "seconds": round(time.perf_counter() - t0, 1),
                          "device": dev, "padded_side": P, "work_side": W}

    # -- scoring -------------------------------------------------------------------------
    def context(self, image_slices: np.ndarray, positions: np.ndarray):
        """Team-of-Experts context and expert weights for ``(N, C, P, P)`` slices at ``(N,)`` positions."""
        import torch

        check_is_fitted(self)
        img = torch.from_numpy(np.ascontiguousarray(image_slices, dtype=np.float32))
        pos = torch.from_numpy(np.asarray(positions, dtype=np.float32))
        with torch.no_grad():  # in chunks: a batch of cases may bring thousands of slices
            parts = [self.toe_(i.to(self.device_), p.to(self.device_))
                     for i, p in zip(img.split(INFER_BATCH), pos.split(INFER_BATCH))]
        return torch.cat([c for c, _ in parts]), torch.cat([w for _, w in parts])

    def sample_latents(self, image_slices: np.ndarray, cand_idx: np.ndarray, positions: np.ndarray,
                       n_samples: int | None = None, ddim_steps: int | None = None,
                       counts: list[int] | None = None):
        """K generated (unscaled) latents per slice, ``(K, N, lc, h, w)`` torch tensor on the device.

        Args:
            image_slices: ``(N, C, P, P)`` normalised image slices.
            cand_idx: ``(N, P, P)`` candidate channel indices (0 = background).
            positions: ``(N,)`` relative positions (`relative_positions` of the candidate).
            counts: slices per case when the ``N`` slices are several cases' (consecutive);
                None = one case. Each case's noise is drawn as if it were sampled alone.
        """
        import torch

        from segqc.nets.mask_ldm import ddim_sample

        check_is_fitted(self)
        k = int(n_samples or self.n_samples)
        steps = int(ddim_steps or self.ddim_steps)
        dev = self.device_
        n = len(cand_idx)
        if counts is not None and sum(counts) != n:
            raise ValueError(f"counts {list(counts)} add up to {sum(counts)} slices, not the {n} given")
        zc = encode(self.vae_, cand_idx, len(self.labels_) + 1, dev) * self.scale_ if self.use_candidate else None
        ctx, _ = self.context(image_slices, positions)
        lc = int(self.cfg_["latent_channels"])
        side = self.fit_info_["padded_side"] // 2 ** (len(self.cfg_["ae_channels"]) - 1)
        noise = torch.cat([self._noise(k, m, lc, side) for m in counts or [n]], dim=1).to(dev)
        out = torch.empty_like(noise)
        per = max(1, INFER_BATCH // k)
        for s in range(0, n, per):
            e = min(n, s + per)
            m = e - s
            x = noise[:, s:e].reshape(k * m, lc, side, side)
            c = ctx[s:e].repeat(k, 1, 1)
            z = None if zc is None else zc[s:e].repeat(k, 1, 1, 1)
            out[:, s:e] = (ddim_sample(self.unet_, self.scheduler_, x, z, c, steps) / self.scale_).reshape(
                k, m, lc, side, side)
        return out

    def _noise(self, k: int, n: int, lc: int, side: int):
        """One case's starting noise ``(K, n, lc, side, side)``: the same for every call (reproducible scores)."""
        import torch

        gen = torch.Generator(device="cpu")
        gen.manual_seed(self.seed_)
        return torch.randn(k, n, lc, side, side, generator=gen)

    def sample_slices(self, image_slices: np.ndarray, cand_idx: np.ndarray, positions: np.ndarray,
                      n_samples: int | None = None, ddim_steps: int | None = None,
                      counts: list[int] | None = None) -> np.ndarray:
        """K decoded pGT samples per slice: channel indices ``(K, N, P, P)`` uint8 (see `sample_latents`)."""
        import torch

        lat = self.sample_latents(image_slices, cand_idx, positions, n_samples, ddim_steps, counts)
        k, n = lat.shape[:2]
        flat = lat.reshape(k * n, *lat.shape[2:])
        with torch.no_grad():
            lab = torch.cat([self.vae_.decode(z).argmax(1).to(torch.uint8).cpu() for z in flat.split(INFER_BATCH)])
        return lab.numpy().reshape(k, n, *lab.shape[1:])

    def pseudo_ground_truth(self, case: Case, n_samples: int | None = None, ddim_steps: int | None = None,
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """pGT labels, disagreement map and error map of ``case.mask``, all on the ORIGINAL grid.

        ``pgt``: majority vote of K samples (label values). ``disagreement`` (float32 in
        [0, 1]): share of samples that differ from the pGT (the model's uncertainty).
        ``error``: share of samples that differ from the candidate.
        """
        check_is_fitted(self)
        return self._pseudo_ground_truths([case], n_samples, ddim_steps)[0]

    def _pseudo_ground_truths(self, cases: list[Case], n_samples: int | None = None, ddim_steps: int | None = None,
                              ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """`pseudo_ground_truth` of several cases: all their slices are sampled together."""
        from segqc.nets.batching import split_counts

        with torch_threads(self.n_threads):
            inputs = [self._slice_inputs(c) for c in cases]
            counts = [len(x.cand) for x in inputs]
            imgs, cand, pos = (np.concatenate([getattr(x, f) for x in inputs]) for f in ("imgs", "cand", "pos"))
            samples = self.sample_slices(imgs, cand, pos, n_samples, ddim_steps, counts)
            return [self._vote(s, x.cand_s, x.props) for s, x in zip(split_counts(samples, counts, axis=1), inputs)]

    def _slice_inputs(self, case: Case) -> _SliceInputs:
        from segqc.plan.preprocess import preprocess

        img, m, props = preprocess(case, self.plan_)
        cand_s = to_index(m, self.labels_, what="candidate mask")
        cand = self._work_mask(cand_s)
        imgs = self._work_image(img).astype(np.float32).transpose(1, 0, 2, 3)
        return _SliceInputs(imgs, cand, relative_positions(cand), cand_s, props)

    def _vote(self, samples: np.ndarray, cand_s: np.ndarray, props: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One case's samples ``(K, Z, P, P)`` → pGT, disagreement and error maps on the original grid."""
        from segqc.plan.preprocess import invert_map, invert_mask, resize_inplane

        S, W, _ = self.sides_
        samples = samples[..., :W, :W]
        votes = np.stack([(samples == i).mean(0) for i in range(len(self.labels_) + 1)]).astype(np.float32)
        if W != S:  # vote shares back to the plan's slice size, linearly
            votes = resize_inplane(votes, (S, S), mode="linear")
        pgt_idx = votes.argmax(0)                                        # majority vote, (Z, S, S)
        agree_pgt = np.take_along_axis(votes, pgt_idx[None], 0)[0]
        agree_cand = np.take_along_axis(votes, cand_s[None].astype(np.int64), 0)[0]
        pgt = invert_mask(to_labels(pgt_idx, self.labels_), props)
        disagreement = np.clip(invert_map(1.0 - agree_pgt, props), 0, 1).astype(np.float32)
        error = np.clip(invert_map(1.0 - agree_cand, props), 0, 1).astype(np.float32)
        return pgt, disagreement, error

    def _score_cases(self, cases: list[Case]) -> list[RawScore]:
        """Dice and HD95 (mm) per label between the candidate and the pGT (`score_against_pgt`: never NaN).

        Features: ``disagreement_mean_fg`` and ``error_mean_fg`` over candidate ∪ pGT foreground.
        """
        return [self._compare(c, *maps) for c, maps in zip(cases, self._pseudo_ground_truths(cases))]

    def _compare(self, case: Case, pgt: np.ndarray, disagreement: np.ndarray, error: np.ndarray) -> RawScore:
        cand = case.mask
        dice, hd = score_against_pgt(cand, pgt, self.labels_, case.spacing)
        fg = (cand > 0) | (pgt > 0)
        feats = {"disagreement_mean_fg": float(disagreement[fg].mean()) if fg.any() else 0.0,
                 "error_mean_fg": float(error[fg].mean()) if fg.any() else 0.0}
        return RawScore(dice=dice, hd95=hd, maps={"pgt": pgt, "error": error, "disagreement": disagreement},
                        features=feats)
