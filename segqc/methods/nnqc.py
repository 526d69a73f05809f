"""nnQC (Marcianò et al.): a diffusion model writes a pseudo ground truth; QC = candidate vs pGT.

1. Fingerprint adaptation: every case goes through the plan's `segqc.plan.preprocess`
   (in-plane resampling, intensity normalisation by modality, crop / pad to ``S × S``)
   and every map comes back with its exact inverse — the same code for 2D RGB photos and
   3D MRI, which nnQC processes as axial slices.
2. Stage 1, a VAE-GAN (`segqc.nets.mask_ldm`) learns a latent space of plausible expert
   mask slices (one-hot). Its reconstruction Dice on held-out reference masks is kept in
   ``fit_info_["stage1"]["heldout_recon_dice"]``.
3. A Team of Experts (`segqc.nets.team_of_experts`): an image expert (CNN on the image
   slice, trained jointly), a positional expert (relative axial position of the slice
   within the structure, 0.5 for 2D) and a weighting module that learns per-sample
   weights over the experts and forms the cross-attention context.
4. Stage 2, latent diffusion: a ``DiffusionModelUNet`` learns the EXPERT mask's latent
   from noise, conditioned by the context and by the candidate's latent (concatenated
   as input channels), on realistic bad masks (`segqc.data.corrupt` + the reference
   segmenter's snapshot predictions passed as ``extra_pairs``), so it learns to
   correct a candidate rather than to copy it.
5. Scoring: K samples with a few DDIM steps, decoded, majority vote → pGT, plus the
   fraction of samples that disagree with the pGT (uncertainty) and with the candidate
   (error map); slices are restacked, mapped back to the ORIGINAL grid, and Dice per
   label and HD95 in mm are measured there between candidate and pGT. Empty candidates,
   empty pGTs and missing slices are scored like anything else: never NaN.

The public code's gaps this version closes: runs on CPU (GPU when present), no hub
backbone, the expert-weighting softmax runs over experts (so position matters), metrics
in the original space in mm, and finite scores for empty masks.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np

from segqc.data.case import Case
from segqc.data.labels import to_index, to_labels
from segqc.methods.base import QCMethod, RawScore, check_is_fitted, check_labels, make_training_pairs
from segqc.metrics import binary_dice, binary_hd95
from segqc.nets.weights import load_net_arrays, net_to_arrays
from segqc.utils import look_up_option, torch_threads

__all__ = ["NNQC", "CONFIGS", "relative_positions"]

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
# At most this many stage-1 slices / stage-2 training slices (memory on small machines).
_MAX_STAGE1 = 30_000
_MAX_STAGE2 = 40_000
# Slices × samples decoded per forward pass at scoring time.
_INFER_BATCH = 128


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


def _mask_to_ms(mask: np.ndarray, props: dict, plan) -> np.ndarray:
    """A label array on the original grid → model space ``(Z, S, S)`` along ``props`` (as `preprocess`)."""
    from segqc.plan.preprocess import resize_labels

    m = np.asarray(mask)
    if m.ndim == 2:
        m = m[None]
    size = tuple(int(v) for v in props["resampled_shape"])
    kw = plan.resampling["mask"].get("kwargs", {})
    aa = bool(kw.get("antialias", True)) and any(o < i for i, o in zip(m.shape[-2:], size))
    m = resize_labels(m, size, mode=plan.resampling["mask"]["name"], antialias=aa)
    (c0, c1), (d0, d1) = props["crop"]
    m = m[..., c0:c1, d0:d1]
    if any(p for pp in props["pad"] for p in pp):
        m = np.pad(m, [(0, 0)] + [tuple(p) for p in props["pad"]])
    return np.ascontiguousarray(m)


class _SliceInputs(NamedTuple):
    """One case in model space: the networks' inputs, then what its votes are compared with and mapped by."""

    imgs: np.ndarray     # (Z, C, P, P) image slices
    cand: np.ndarray     # (Z, P, P) candidate channel indices at the work size, padded
    pos: np.ndarray      # (Z,) relative positions
    cand_s: np.ndarray   # (Z, S, S) candidate channel indices at the plan's slice size
    props: dict          # `preprocess` props: the way back to the original grid


def _hd95_finite(a: np.ndarray, b: np.ndarray, spacing, shape) -> float:
    """HD95 in mm; when exactly one mask is empty, the image diagonal (the worst possible distance)."""
    v = binary_hd95(a, b, spacing)
    if np.isfinite(v):
        return float(v)
    return float(np.sqrt(np.sum((np.asarray(shape) * np.asarray(spacing, dtype=float)) ** 2)))


class NNQC(QCMethod):
    """Latent-diffusion pseudo ground truth with a Team of Experts; QC = Dice / HD95 (mm) vs the pGT.

    Args:
        config: ``auto`` (``gpu`` when the resolved device is CUDA, else ``cpu``), ``cpu``
            or ``gpu``: the defaults of every parameter below left None (see `CONFIGS`).
        work_size: side W the model-space ``S × S`` slices are resampled to for the networks
            (0 = S itself); the cpu config works at 64 px to fit its budget, and the votes
            are resampled back to S (linear) before the pGT is formed.
        ae_channels: VAE channels per level; the latent side is ``P / 2**(len - 1)``.
        latent_channels: channels of the VAE latent.
        unet_channels: diffusion UNet channels per level.
        expert_channels: stride-2 stages of the image expert's CNN.
        context_dim: width of the experts' tokens (cross-attention dimension).
        stage1_steps, stage2_steps: training steps (caps: ``max_minutes`` may shorten both).
        batch_size: slices per step (stage 1 and 2).
        max_minutes: wall-clock budget of the whole ``fit`` (preparation included).
        stage1_share: share of the training budget left after preparation given to stage 1.
        lr: AdamW peak learning rate of both stages (cosine to 0).
        kl_weight, adv_weight: stage-1 KL and adversarial weights; the adversarial term
            starts after ``adv_start`` of the stage-1 steps.
        pairs_per_case: synthetic bad masks (`segqc.data.corrupt`) per reference case for stage 2.
        n_samples: K, samples drawn per slice at scoring time.
        ddim_steps: DDIM steps per sample.
        use_image_expert: False drops the image expert (ablation).
        use_candidate: False drops the candidate conditioning (ablation: then nnQC
            draws a plausible mask for the image alone).
        heldout_fraction: reference cases kept out of stage 1 to report its reconstruction Dice.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        n_threads: torch CPU threads while fitting / scoring (None: torch's setting).
        seed: weights, batches and the sampling noise; None draws one from ``fit``'s rng.
            Scoring is deterministic for a fitted model: the noise is seeded from it.
    """

    name = "nnqc"

    def __init__(self, *, config: str = "auto", work_size: int | None = None,
                 ae_channels: tuple[int, ...] | None = None, latent_channels: int | None = None,
                 unet_channels: tuple[int, ...] | None = None,
                 expert_channels: tuple[int, ...] | None = None, context_dim: int | None = None,
                 stage1_steps: int | None = None, stage2_steps: int | None = None, batch_size: int | None = None,
                 max_minutes: float | None = None, stage1_share: float = 0.3, lr: float = 2e-4,
                 kl_weight: float = 1e-6, adv_weight: float = 0.01, adv_start: float = 0.3,
                 pairs_per_case: int = 4, n_samples: int = 5, ddim_steps: int = 5, use_image_expert: bool = True,
                 use_candidate: bool = True, heldout_fraction: float = 0.1, device: str = "auto",
                 n_threads: int | None = None, seed: int | None = None):
        self.config = config
        self.work_size = work_size
        self.ae_channels = ae_channels
        self.latent_channels = latent_channels
        self.unet_channels = unet_channels
        self.expert_channels = expert_channels
        self.context_dim = context_dim
        self.stage1_steps = stage1_steps
        self.stage2_steps = stage2_steps
        self.batch_size = batch_size
        self.max_minutes = max_minutes
        self.stage1_share = stage1_share
        self.lr = lr
        self.kl_weight = kl_weight
        self.adv_weight = adv_weight
        self.adv_start = adv_start
        self.pairs_per_case = pairs_per_case
        self.n_samples = n_samples
        self.ddim_steps = ddim_steps
        self.use_image_expert = use_image_expert
        self.use_candidate = use_candidate
        self.heldout_fraction = heldout_fraction
        self.device = device
        self.n_threads = n_threads
        self.seed = seed

    # -- configuration -------------------------------------------------------------------
    def _resolve(self, device: str) -> dict:
        """The effective hyper-parameters: explicit ones win over the config's defaults."""
        name = look_up_option(self.config, ("auto", "cpu", "gpu"), "nnqc config")
        if name == "auto":
            name = "gpu" if device.startswith("cuda") else "cpu"
        cfg = {"config": name, **CONFIGS[name]}
        for k in _CONFIG_KEYS:
            v = getattr(self, k)
            if v is not None:
                cfg[k] = v
        for k in ("ae_channels", "unet_channels", "expert_channels"):
            cfg[k] = [int(c) for c in cfg[k]]
        if int(cfg["work_size"]) != cfg["work_size"] or cfg["work_size"] < 0:
            raise ValueError(f"work_size must be an integer ≥ 0 (0 = the plan's slice size), got {cfg['work_size']!r}")
        cfg["work_size"] = int(cfg["work_size"])
        for k in ("latent_channels", "context_dim", "stage1_steps", "stage2_steps", "batch_size"):
            if int(cfg[k]) != cfg[k] or cfg[k] < 1:
                raise ValueError(f"{k} must be a positive integer, got {cfg[k]!r}")
            cfg[k] = int(cfg[k])
        if not float(cfg["max_minutes"]) > 0:
            raise ValueError(f"max_minutes must be > 0, got {cfg['max_minutes']!r}")
        return cfg

    def _validate_params(self) -> None:
        for k in ("n_samples", "ddim_steps", "pairs_per_case"):
            v = getattr(self, k)
            if int(v) != v or v < 1:
                raise ValueError(f"{k} must be a positive integer, got {v!r}")
        for k in ("stage1_share", "heldout_fraction", "adv_start"):
            if not 0.0 <= float(getattr(self, k)) < 1.0:
                raise ValueError(f"{k} must be in [0, 1), got {getattr(self, k)!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")

    def _pad_side(self, s: int) -> int:
        """Model-space side padded so that VAE and UNet downsampling divide it."""
        f = 2 ** (len(self.cfg_["ae_channels"]) - 1) * 2 ** (len(self.cfg_["unet_channels"]) - 1)
        return -(-int(s) // f) * f

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

    def _build(self):
        from segqc.nets.mask_ldm import build_scheduler, build_unet, build_vae
        from segqc.nets.team_of_experts import TeamOfExperts

        c = self.cfg_
        n_cls = len(self.labels_) + 1
        vae = build_vae(n_cls, c["ae_channels"], c["latent_channels"])
        unet = build_unet(c["latent_channels"], c["unet_channels"], c["context_dim"], bool(self.use_candidate))
        toe = TeamOfExperts(int(self.plan_.n_channels), c["context_dim"], tuple(c["expert_channels"]),
                            use_image=bool(self.use_image_expert))
        return vae, unet, toe, build_scheduler()

    # -- fitting -------------------------------------------------------------------------
    def fit(self, cases: list[Case], plan, rng: np.random.Generator, extra_pairs: list[Case] | None = None,
            progress=None) -> NNQC:
        """Train stage 1 on the expert masks of ``cases``, stage 2 on their bad masks + ``extra_pairs``.

        ``extra_pairs`` carry a candidate ``mask`` and the expert ``truth`` (e.g. the
        reference segmenter's predictions). ``progress(msg)`` reports the stages.
        """
        self._validate_params()
        if not cases:
            raise ValueError("NNQC.fit needs at least one reference case with an expert mask")
        if not plan.labels:
            raise ValueError("the plan has no foreground labels; nothing to learn")
        for p in extra_pairs or []:
            if p.mask is None or p.truth is None:
                raise ValueError(f"extra pair {p.case_id} needs both a candidate mask and an expert truth")
        with torch_threads(self.n_threads):
            return self._fit(cases, plan, rng, list(extra_pairs or []), progress or (lambda msg=None: None))

    def _fit(self, cases, plan, rng, extra_pairs, progress) -> NNQC:
        import torch

        from segqc.nets.mask_ldm import build_discriminator, train_stage1, train_stage2
        from segqc.plan.preprocess import preprocess
        from segqc.utils import resolve_device

        t0 = time.perf_counter()
        dev = resolve_device(self.device)
        self.labels_ = sorted(int(k) for k in plan.labels)
        self.plan_ = plan
        self.cfg_ = self._resolve(dev)
        cfg = self.cfg_
        budget = 60.0 * float(cfg["max_minutes"])
        seed = int(rng.integers(2**31)) if self.seed is None else int(self.seed)
        n_cls = len(self.labels_) + 1
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
        src = [ids[p.case_id] for p in pairs]
        for p in extra_pairs:  # model-made failures on a reference case share its image
            if p.reference_id in ids and cases[ids[p.reference_id]].shape == p.shape:
                src.append(ids[p.reference_id])
            else:
                img, _, pr = preprocess(p.with_mask(None), plan)
                images.append(self._work_image(img))
                props.append(pr)
                truths.append(None)
                src.append(len(images) - 1)
        pairs = pairs + extra_pairs
        # stage-2 slices: (image index, z, candidate index slice, truth index slice, position)
        s_img, s_z, s_cand, s_true, s_pos = [], [], [], [], []
        for p, i in zip(pairs, src):
            # a candidate's label outside the plan (a corruption's label-1 blobs on an empty mask
            # of a {2} dataset) is background here: scoring refuses such candidates anyway
            cand = self._work_mask(to_index(_mask_to_ms(p.mask, props[i], plan), self.labels_, strict=False))
            true = self._work_mask(to_index(_mask_to_ms(p.truth, props[i], plan), self.labels_,
                                            what=f"expert mask of {p.case_id}"))
            pos = relative_positions(cand)
            keep = np.flatnonzero(cand.reshape(len(cand), -1).any(1) | true.reshape(len(true), -1).any(1))
            empty = np.setdiff1d(np.arange(len(cand)), keep)
            if empty.size:  # a few empty slices teach "nothing in, nothing out"
                keep = np.concatenate([keep, rng.choice(empty, min(empty.size, max(1, keep.size // 4)), False)])
            for z in keep:
                s_img.append(i)
                s_z.append(int(z))
                s_cand.append(cand[z])
                s_true.append(true[z])
                s_pos.append(pos[z])
        if len(s_img) > _MAX_STAGE2:
            pick = np.sort(rng.choice(len(s_img), _MAX_STAGE2, replace=False))
            s_img, s_z, s_pos = ([v[j] for j in pick] for v in (s_img, s_z, s_pos))
            s_cand, s_true = [s_cand[j] for j in pick], [s_true[j] for j in pick]
        progress(f"nnqc: {len(cases)} reference cases, {len(pairs)} candidate pairs → {len(s_img)} slices "
                 f"({time.perf_counter() - t0:.0f} s), config {cfg['config']} on {dev}")

        # -- stage 1: expert-mask slices, a held-out share of cases to measure reconstruction
        n_held = int(round(self.heldout_fraction * len(cases))) if len(cases) >= 10 else 0
        order = rng.permutation(len(cases))
        held, train = order[:n_held], order[n_held:]
        s1 = np.concatenate([truths[i] for i in train], axis=0)
        nonempty = s1.reshape(len(s1), -1).any(1)
        fg, bg = np.flatnonzero(nonempty), np.flatnonzero(~nonempty)
        keep = np.concatenate([fg, rng.choice(bg, min(bg.size, max(1, fg.size // 4)), False)]) if bg.size else fg
        if keep.size > _MAX_STAGE1:
            keep = rng.choice(keep, _MAX_STAGE1, replace=False)
        s1_t = torch.from_numpy(np.ascontiguousarray(s1[np.sort(keep)])).to(dev)
        bs = min(int(cfg["batch_size"]), len(s1_t))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae, unet, toe, scheduler = self._build()
            disc = build_discriminator(n_cls)
        vae, unet, toe, disc = (m.to(dev) for m in (vae, unet, toe, disc))
        gen = torch.Generator(device="cpu")
        gen.manual_seed(seed)

        def batch1(_step):
            return s1_t[torch.randint(0, len(s1_t), (bs,), generator=gen).to(dev)]

        left = budget - (time.perf_counter() - t0)
        info1 = train_stage1(vae, disc, batch1, n_classes=n_cls, steps=cfg["stage1_steps"],
                             seconds=float(self.stage1_share) * left, lr=float(self.lr) * 5,
                             kl_weight=float(self.kl_weight), adv_weight=float(self.adv_weight),
                             adv_start=float(self.adv_start), progress=progress)
        del disc
        vae.requires_grad_(False)
        info1["heldout_recon_dice"] = self._heldout_dice(vae, [truths[i] for i in held], dev)
        info1["heldout_cases"] = int(n_held)
        progress(f"nnqc stage 1: {info1['steps']} steps, {info1['s_per_step']} s/step, held-out reconstruction "
                 f"Dice {info1['heldout_recon_dice']}")

        # -- latents of every stage-2 slice (posterior means), scaled to unit variance
        z_true = self._encode(vae, np.stack(s_true), dev)
        z_cand = self._encode(vae, np.stack(s_cand), dev) if self.use_candidate else None
        self.scale_ = float(1.0 / max(float(z_true.std()), 1e-6))
        z_true = z_true * self.scale_
        z_cand = None if z_cand is None else z_cand * self.scale_
        imgs_t = [torch.from_numpy(im) for im in images]  # float16, CPU: moved per batch
        s_img_a, s_z_a = np.asarray(s_img), np.asarray(s_z)
        pos_t = torch.tensor(np.asarray(s_pos, dtype=np.float32))
        bs2 = min(int(cfg["batch_size"]), len(z_true))

        def batch2(_step):
            j = torch.randint(0, len(z_true), (bs2,), generator=gen)
            jn = j.numpy()
            img = torch.stack([imgs_t[a][:, b] for a, b in zip(s_img_a[jn], s_z_a[jn])]).float()
            return (z_true[j.to(z_true.device)], None if z_cand is None else z_cand[j.to(z_cand.device)],
                    img.to(dev), pos_t[j].to(dev))

        left = budget - (time.perf_counter() - t0)
        info2 = train_stage2(unet, toe, scheduler, batch2, steps=cfg["stage2_steps"], seconds=max(left, 1.0),
                             lr=float(self.lr), progress=progress)
        progress(f"nnqc stage 2: {info2['steps']} steps, {info2['s_per_step']} s/step, expert weights "
                 f"{info2['expert_weights_mean']}")
        self.vae_, self.unet_, self.toe_, self.scheduler_ = vae, unet, toe, scheduler
        self.device_ = dev
        self.seed_ = seed
        self.fit_info_ = {"stage1": info1, "stage2": info2, "n_pairs": len(pairs), "n_stage2_slices": len(s_img),
                          "n_stage1_slices": int(len(s1_t)), "seconds": round(time.perf_counter() - t0, 1),
                          "device": dev, "padded_side": P, "work_side": W}
        return self

    def _encode(self, vae, idx: np.ndarray, dev: str):
        """Posterior means of one-hot index slices ``(N, P, P)`` → ``(N, lc, h, w)`` on the device."""
        import torch
        import torch.nn.functional as F

        out = []
        n_cls = len(self.labels_) + 1
        with torch.no_grad():
            for s in range(0, len(idx), _INFER_BATCH):
                t = torch.from_numpy(np.ascontiguousarray(idx[s:s + _INFER_BATCH])).to(dev).long()
                out.append(vae.encode(F.one_hot(t, n_cls).permute(0, 3, 1, 2).float())[0])
        return torch.cat(out)

    def _heldout_dice(self, vae, vols: list[np.ndarray], dev: str) -> float | None:
        """Mean over held-out cases and labels of Dice(expert mask, VAE reconstruction), model space."""
        import torch

        if not vols:
            return None
        scores = []
        with torch.no_grad():
            for v in vols:
                rec = torch.cat([vae.decode(z).argmax(1).cpu() for z in self._encode(vae, v, dev).split(_INFER_BATCH)])
                rec = rec.numpy()
                scores.append(np.mean([binary_dice(rec == i, v == i) for i in range(1, len(self.labels_) + 1)]))
        return round(float(np.mean(scores)), 4)

    # -- scoring -------------------------------------------------------------------------
    def context(self, image_slices: np.ndarray, positions: np.ndarray):
        """Team-of-Experts context and expert weights for ``(N, C, P, P)`` slices at ``(N,)`` positions."""
        import torch

        check_is_fitted(self)
        img = torch.from_numpy(np.ascontiguousarray(image_slices, dtype=np.float32))
        pos = torch.from_numpy(np.asarray(positions, dtype=np.float32))
        with torch.no_grad():  # in chunks: a batch of cases may bring thousands of slices
            parts = [self.toe_(i.to(self.device_), p.to(self.device_))
                     for i, p in zip(img.split(_INFER_BATCH), pos.split(_INFER_BATCH))]
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
        zc = self._encode(self.vae_, cand_idx, dev) * self.scale_ if self.use_candidate else None
        ctx, _ = self.context(image_slices, positions)
        lc = int(self.cfg_["latent_channels"])
        side = self.fit_info_["padded_side"] // 2 ** (len(self.cfg_["ae_channels"]) - 1)
        noise = torch.cat([self._noise(k, m, lc, side) for m in counts or [n]], dim=1).to(dev)
        out = torch.empty_like(noise)
        per = max(1, _INFER_BATCH // k)
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
            lab = torch.cat([self.vae_.decode(z).argmax(1).to(torch.uint8).cpu() for z in flat.split(_INFER_BATCH)])
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
        """Dice per label and HD95 (mm) between the candidate and the pGT, on the original grid.

        Never NaN: Dice follows `segqc.metrics` (both empty → 1, one empty → 0); HD95 is
        0 when both are empty and the image diagonal in mm when exactly one is.
        Features: ``disagreement_mean_fg`` and ``error_mean_fg`` over the union of
        candidate and pGT foreground.
        """
        return [self._compare(c, *maps) for c, maps in zip(cases, self._pseudo_ground_truths(cases))]

    def _compare(self, case: Case, pgt: np.ndarray, disagreement: np.ndarray, error: np.ndarray) -> RawScore:
        cand = case.mask
        dice, hd = {}, {}
        for k in self.labels_:
            c, r = cand == k, pgt == k
            dice[k] = float(binary_dice(c, r))
            hd[k] = _hd95_finite(c, r, case.spacing, case.shape)
        fg = (cand > 0) | (pgt > 0)
        feats = {"disagreement_mean_fg": float(disagreement[fg].mean()) if fg.any() else 0.0,
                 "error_mean_fg": float(error[fg].mean()) if fg.any() else 0.0}
        return RawScore(dice=dice, hd95=hd, maps={"pgt": pgt, "error": error, "disagreement": disagreement},
                        features=feats)

    # -- persistence ---------------------------------------------------------------------
    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        check_is_fitted(self)
        arrays = {}
        for name, net in (("vae", self.vae_), ("unet", self.unet_), ("toe", self.toe_)):
            arrays |= net_to_arrays(net, f"{name}.")
        params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.get_params().items()}
        config = {"params": params, "labels_": self.labels_, "plan_": self.plan_.to_dict(), "cfg_": self.cfg_,
                  "scale_": self.scale_, "seed_": self.seed_, "fit_info_": self.fit_info_,
                  "sides_": list(self.sides_)}
        return arrays, config

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], config: dict) -> NNQC:
        from segqc.plan.fingerprint import Plan
        from segqc.utils import resolve_device

        params = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config["params"].items()}
        m = cls(**params)
        m.labels_ = [int(k) for k in config["labels_"]]
        m.plan_ = Plan.from_dict(config["plan_"])
        m.cfg_ = dict(config["cfg_"])
        m.scale_ = float(config["scale_"])
        m.seed_ = int(config["seed_"])
        m.fit_info_ = dict(config["fit_info_"])
        m.sides_ = tuple(int(v) for v in config["sides_"])
        m.device_ = resolve_device(m.device)
        vae, unet, toe, m.scheduler_ = m._build()
        for name, net in (("vae", vae), ("unet", unet), ("toe", toe)):
            load_net_arrays(net, arrays, f"{name}.", f"nnqc {name}").to(m.device_).eval()
        m.vae_, m.unet_, m.toe_ = vae, unet, toe
        return m
