"""A CNN that looks at the image and the candidate mask and regresses Dice (Robinson et al. 2018).

Input, in model space (`segqc.plan.preprocess`): the normalised image channels plus one soft
one-hot channel per foreground label of the candidate mask
(`segqc.plan.preprocess.soft_mask_to_model_space`); output: one sigmoid per foreground
label, its predicted Dice. 2D datasets use a 2D network on the ``S × S`` slice; 3D
datasets a 3D network on the whole ``(Z, S, S)`` volume, Z zero-padded to a fixed
multiple of 8 so that fitting and scoring see the same field of view.

The backbone is MONAI's `ResNet` (basic blocks, global average pooling, so any input
size works). It learns from realistic bad masks of the reference cases
(`segqc.data.corrupt`), freshly drawn every ``refresh_every`` epochs, plus the model-made
training pairs of ``ctx.pairs``; targets are the Dice against the expert mask measured on
the ORIGINAL grid, so resampling never biases them. Loss = MSE on the sigmoid outputs + a
RankNet term on the pairs of a batch whose true Dice differ, because QC mostly has to
*order* cases (which ones to review first) and MSE alone lets a network hedge towards the mean.

Fitting stops when ``max_minutes`` is spent; the cosine learning-rate schedule is
shortened after the first epoch so that it still ends when the budget does.
"""

from __future__ import annotations

import math
import time

import numpy as np

from segqc.data.case import Case
from segqc.methods.base import (
    FitContext,
    Param,
    QCMethod,
    RawScore,
    TrainingPair,
    make_training_pairs,
    non_negative,
    positive,
)
from segqc.utils import torch_threads

__all__ = ["CNNRegressor"]

_Z_MULTIPLE = 8


def _backbone_kwargs(spatial_dims: int, n_in: int, n_out: int, widths, layers) -> dict:
    """MONAI ResNet arguments; 3D volumes get a cheaper 3³ stem with stride 2 (CPU time)."""
    return {"block": "basic", "layers": [int(v) for v in layers], "block_inplanes": [int(v) for v in widths],
            "spatial_dims": int(spatial_dims), "n_input_channels": int(n_in), "num_classes": int(n_out),
            "conv1_t_size": 7 if spatial_dims == 2 else 3, "conv1_t_stride": 1 if spatial_dims == 2 else 2}


def _build(kwargs: dict):
    from monai.networks.nets import ResNet

    return ResNet(**kwargs)


def _ranknet(logits, target, min_gap: float):
    """Mean −log σ(z_i − z_j) over pairs of a batch (per label) whose true Dice t_i > t_j + min_gap."""
    import torch.nn.functional as F

    dz = logits[:, None, :] - logits[None, :, :]          # (B, B, L)
    dt = target[:, None, :] - target[None, :, :]
    valid = dt > min_gap
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return F.softplus(-dz[valid]).mean()


class CNNRegressor(QCMethod):
    """Image + candidate mask → MONAI ResNet → Dice per foreground label.

    Parameters:
        epochs: training epochs; None = 12 on CPU, 40 on CUDA (``max_minutes`` caps both).
        pairs_per_case: bad masks drawn per reference case for each refresh.
        refresh_every: draw fresh bad masks every this many epochs (0 = once, at the start).
        batch_size: samples per step (2D); 3D uses ``max(2, batch_size // 8)``.
        lr, weight_decay: AdamW; the learning rate follows a cosine to 0.
        rank_weight: weight of the RankNet term against the MSE.
        rank_min_gap: pairs whose true Dice differ by less are not ranked.
        widths, layers: ResNet ``block_inplanes`` and blocks per stage.
        flip: random in-plane flips / transposes; None = only for single-label datasets
            (where several labels have a fixed layout, e.g. anterior / posterior
            hippocampus, a flip would teach the network that swapped labels are fine).
        max_minutes: wall-clock budget of ``fit`` (preprocessing included).
        n_threads: torch CPU threads while fitting (None = torch's default); scoring
            never changes the thread setting.
        seed: seed of the network's initialisation (None = drawn from ``ctx.rng``).
    """

    name = "cnn"
    params = {
        "epochs": Param(None, int, positive),
        "pairs_per_case": Param(4, check=positive),
        "refresh_every": Param(1, check=non_negative),
        "batch_size": Param(32, check=positive),
        "lr": Param(1e-3, check=positive),
        "weight_decay": Param(1e-4, check=non_negative),
        "rank_weight": Param(0.1, check=non_negative),
        "rank_min_gap": Param(0.05, check=non_negative),
        "widths": Param((16, 32, 64, 128), check=positive),
        "layers": Param((1, 1, 1, 1), check=positive),
        "flip": Param(None, bool),
        "max_minutes": Param(6.0, check=positive),
        "n_threads": Param(None, int, positive),
        "seed": Param(None, int),
    }

    def _validate_params(self) -> None:
        if len(self.widths) != 4 or len(self.layers) != 4:
            raise ValueError(f"widths and layers need 4 stages each, got {self.widths} and {self.layers}")

    # -- helpers -------------------------------------------------------------------------
    def _input(self, image_ms: np.ndarray, soft_ms: np.ndarray) -> np.ndarray:
        """``(C+L, S, S)`` for 2D, ``(C+L, z_pad_, S, S)`` for 3D (zeros after the last slice)."""
        x = np.concatenate([image_ms, soft_ms.astype(np.float32, copy=False)], axis=0)
        if self.spatial_dims_ == 2:
            return x[:, 0]
        z = x.shape[1]
        zp = max(self.z_pad_, _round_up(z))
        if zp > z:
            x = np.pad(x, [(0, 0), (0, zp - z), (0, 0), (0, 0)])
        return x

    # -- fitting -------------------------------------------------------------------------
    def _fit(self, reference: list[Case], ctx: FitContext) -> None:
        """Learn Dice from fresh bad masks of ``reference`` plus ``ctx.pairs``."""
        import torch

        from segqc.plan.preprocess import preprocess, soft_mask_to_model_space

        t0 = time.perf_counter()
        budget = 60.0 * float(self.max_minutes)
        plan, rng = self.plan_, ctx.rng
        if not self.labels_:
            raise ValueError("the plan has no foreground labels; nothing to regress")
        for c in reference:
            if c.mask is None:
                raise ValueError(f"reference case {c.case_id} has no expert mask")
        extra_pairs = list(ctx.pairs)
        for p in extra_pairs:
            if p.candidate is None or p.truth is None:
                raise ValueError(f"training pair of {p.reference_id} needs both a candidate mask and an expert mask")
        self.spatial_dims_ = int(plan.ndim)
        self.n_channels_ = int(plan.n_channels)
        on_cuda = self.device_.startswith("cuda")
        epochs = int(self.epochs) if self.epochs is not None else (40 if on_cuda else 12)
        flip = self.flip if self.flip is not None else len(self.labels_) == 1
        bs = int(self.batch_size) if self.spatial_dims_ == 2 else max(2, int(self.batch_size) // 8)
        L = len(self.labels_)

        with torch_threads(self.n_threads):
            # each image once; every candidate mask is then sent through its image's props
            images, props = [], []
            for c in reference + [p.reference for p in extra_pairs]:
                img, _, pr = preprocess(c.with_mask(None), plan)
                images.append(img)
                props.append(pr)
            n_ref = len(reference)
            self.z_pad_ = _round_up(max(im.shape[1] for im in images)) if self.spatial_dims_ == 3 else 1

            def make_samples(pairs: list[TrainingPair], idx: list[int]) -> list[tuple[int, np.ndarray, np.ndarray]]:
                return [(i, soft_mask_to_model_space(p.candidate, props[i], self.labels_, plan).astype(np.float16),
                         p.true_dice(self.labels_).astype(np.float32)) for p, i in zip(pairs, idx)]

            def fresh() -> list[tuple[int, np.ndarray, np.ndarray]]:
                pairs = make_training_pairs(reference, rng, int(self.pairs_per_case))
                idx = [i for i in range(n_ref) for _ in range(int(self.pairs_per_case))]
                return make_samples(pairs, idx)

            extra = make_samples(extra_pairs, list(range(n_ref, n_ref + len(extra_pairs))))
            seed = int(self.seed) if self.seed is not None else int(rng.integers(1 << 31))
            self.backbone_ = _backbone_kwargs(self.spatial_dims_, self.n_channels_ + L, L, self.widths, self.layers)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = _build(self.backbone_)
            model.to(self.device_)
            opt = torch.optim.AdamW(model.parameters(), lr=float(self.lr), weight_decay=float(self.weight_decay))
            history: list[dict] = []
            n_samples = n_ref * int(self.pairs_per_case) + len(extra)
            steps_per_epoch = max(1, math.ceil(n_samples / bs))
            planned, step, stopped = epochs, 0, False
            samples: list = []
            epoch_times: list[float] = []
            for epoch in range(epochs):
                te = time.perf_counter()  # an epoch's time includes drawing its bad masks
                if epoch == 0 or (self.refresh_every and epoch % int(self.refresh_every) == 0):
                    samples = fresh() + extra
                model.train()
                order = rng.permutation(len(samples))
                losses, n_seen = [], 0
                for b in range(0, len(order), bs):
                    if time.perf_counter() - t0 > budget:
                        stopped = True
                        break
                    chunk = [samples[j] for j in order[b:b + bs]]
                    if len(chunk) < 2 and len(samples) >= 2:
                        continue  # BatchNorm needs ≥ 2 samples; the leftover is seen next epoch
                    x = torch.from_numpy(np.stack([self._input(images[i], m) for i, m, _ in chunk]))
                    y = torch.from_numpy(np.stack([t for _, _, t in chunk]))
                    if flip:
                        x = _augment(x, rng)
                    x, y = x.to(self.device_), y.to(self.device_)
                    total = planned * steps_per_epoch
                    for g in opt.param_groups:
                        g["lr"] = float(self.lr) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
                    logits = model(x)
                    mse = torch.mean((torch.sigmoid(logits) - y) ** 2)
                    loss = mse + float(self.rank_weight) * _ranknet(logits, y, float(self.rank_min_gap))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    step += 1
                    losses.append((float(mse.detach()), float(loss.detach())))
                    n_seen += len(chunk)
                if losses:
                    history.append({"epoch": epoch + 1, "mse": float(np.mean([m for m, _ in losses])),
                                    "loss": float(np.mean([v for _, v in losses])), "samples": n_seen,
                                    "seconds": round(time.perf_counter() - te, 2)})
                    ctx.progress(f"cnn epoch {epoch + 1}/{planned}: loss {history[-1]['loss']:.4f}")
                else:
                    ctx.progress(f"cnn epoch {epoch + 1}/{planned}")
                if stopped:
                    break
                # shrink the schedule so it ends with the time budget
                epoch_times.append(time.perf_counter() - te)
                left = budget - (time.perf_counter() - t0)
                fits = epoch + 1 + int(left // max(float(np.median(epoch_times)), 1e-6))
                planned = max(epoch + 1, min(planned, fits))
                if epoch + 1 >= planned:
                    break
            model.eval()
        self.model_ = model
        self.n_train_ = len(samples)
        self.history_ = history
        self.fit_info_ = {"epochs_run": len(history), "epochs_requested": epochs, "stopped_by_time": stopped,
                          "seconds": round(time.perf_counter() - t0, 2), "device": self.device_,
                          "torch_seed": seed, "flip": bool(flip)}

    def _build_network(self, key: str):
        """The untrained ResNet of ``backbone_`` (``model_`` is the only network)."""
        return _build(self.backbone_)

    # -- scoring -------------------------------------------------------------------------
    def _score_cases(self, cases: list[Case]) -> list[RawScore]:
        """Predicted Dice per foreground label of each ``case.mask`` (values in [0, 1]); the network
        sees the cases' inputs stacked, a few calls in all."""
        probs = self._predict([self._model_input(c) for c in cases])
        return [RawScore(dice={k: float(v) for k, v in zip(self.labels_, p)}) for p in probs]

    def _model_input(self, case: Case) -> np.ndarray:
        """The network input of ``case`` (`_input`): its image and candidate mask in model space."""
        from segqc.plan.preprocess import preprocess, soft_mask_to_model_space

        img, _, props = preprocess(case.with_mask(None), self.plan_)
        return self._input(img, soft_mask_to_model_space(case.mask, props, self.labels_, self.plan_))

    def _predict(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Sigmoid outputs ``(L,)`` per network input; inputs of one shape share calls (3D ones may differ in Z)."""
        import torch

        from segqc.nets.batching import forward_grouped

        def run(x):
            with torch.no_grad():
                return torch.sigmoid(self.model_(x.to(self.device_))).float().cpu()

        self.model_.eval()
        rows = [torch.from_numpy(x[None]) for x in inputs]
        return [p[0].numpy() for p in forward_grouped(run, rows)]


def _round_up(n: int, multiple: int = _Z_MULTIPLE) -> int:
    return max(multiple, int(math.ceil(n / multiple)) * multiple)


def _augment(x, rng: np.random.Generator):
    """Random flips of the two in-plane axes and a random transpose of them, per sample."""
    import torch

    out = []
    for xi in x:
        if rng.random() < 0.5:
            xi = torch.flip(xi, dims=(-1,))
        if rng.random() < 0.5:
            xi = torch.flip(xi, dims=(-2,))
        if rng.random() < 0.5 and xi.shape[-1] == xi.shape[-2]:
            xi = xi.transpose(-1, -2)
        out.append(xi)
    return torch.stack(out).contiguous()
