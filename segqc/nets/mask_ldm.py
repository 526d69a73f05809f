"""nnQC's two networks and their time-budgeted training loops (MONAI generative blocks).

Stage 1 — a VAE-GAN on one-hot expert mask slices: MONAI ``AutoencoderKL`` (encoder →
``latent_channels × (P/f)²`` Gaussian latent, decoder → class logits) trained with
Dice + cross-entropy reconstruction, a small KL term and, after a warm-up, a
least-squares patch-adversarial term from a MONAI ``PatchDiscriminator`` that judges
softmax reconstructions against true one-hot masks (it sharpens borders; no hub
perceptual loss is used).

Stage 2 — a MONAI ``DiffusionModelUNet`` that learns the expert-mask latent from noise
(v-prediction, DDPM training, DDIM sampling), with the candidate's latent concatenated
to the noisy latent as input channels and the Team of Experts' context in its
cross-attention.

Each loop times its first steps, then fixes the number of steps that fits its time
budget (cosine learning rate over exactly those steps), so a capped run is still
annealed and the whole fit provably ends within ``max_minutes``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from segqc.nets.schedule import BudgetedSchedule

__all__ = ["build_vae", "build_discriminator", "build_unet", "build_scheduler", "train_stage1", "train_stage2",
           "ddim_sample", "kl_loss"]


def _gn(channels) -> int:
    """Largest group count ≤ 16 dividing every channel number (GroupNorm)."""
    g = 16
    while any(int(c) % g for c in channels):
        g //= 2
    return max(g, 1)


def build_vae(n_classes: int, channels: tuple[int, ...], latent_channels: int):
    from monai.networks.nets import AutoencoderKL

    channels = tuple(int(c) for c in channels)
    return AutoencoderKL(spatial_dims=2, in_channels=n_classes, out_channels=n_classes, channels=channels,
                         latent_channels=int(latent_channels), num_res_blocks=1,
                         attention_levels=(False,) * len(channels), norm_num_groups=_gn(channels),
                         with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)


def build_discriminator(n_classes: int, channels: int = 32):
    from monai.networks.nets import PatchDiscriminator

    return PatchDiscriminator(spatial_dims=2, num_layers_d=3, channels=int(channels), in_channels=n_classes,
                              out_channels=1, norm="INSTANCE")


def build_unet(latent_channels: int, channels: tuple[int, ...], context_dim: int, with_candidate: bool,
               head_channels: int = 32):
    from monai.networks.nets import DiffusionModelUNet

    channels = tuple(int(c) for c in channels)
    # attention (self + cross) at every level but the first: the context steers coarse layout
    attn = tuple(i > 0 for i in range(len(channels))) if len(channels) > 1 else (True,)
    return DiffusionModelUNet(spatial_dims=2, in_channels=int(latent_channels) * (2 if with_candidate else 1),
                              out_channels=int(latent_channels), channels=channels, attention_levels=attn,
                              num_res_blocks=1, norm_num_groups=_gn(channels),
                              num_head_channels=min(int(head_channels), min(channels)), with_conditioning=True,
                              cross_attention_dim=int(context_dim))


def build_scheduler():
    from monai.networks.schedulers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, schedule="scaled_linear_beta", beta_start=0.0015,
                         beta_end=0.0195, clip_sample=False, prediction_type="v_prediction")


def kl_loss(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma²) || N(0, 1)) summed over latent dims, averaged over the batch."""
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-8) - 1.0)
    return kl.flatten(1).sum(1).mean()


def _onehot(idx: torch.Tensor, n_classes: int) -> torch.Tensor:
    return F.one_hot(idx.long(), n_classes).permute(0, 3, 1, 2).float()


def train_stage1(vae, disc, sample_batch: Callable[[int], torch.Tensor], *, n_classes: int, steps: int,
                 seconds: float, lr: float, kl_weight: float, adv_weight: float, adv_start: float,
                 progress: Callable | None = None) -> dict:
    """VAE-GAN on one-hot mask slices; ``sample_batch(step)`` → index slices ``(B, P, P)`` on the device."""
    from monai.losses import DiceCELoss, PatchAdversarialLoss

    rec_fn = DiceCELoss(softmax=True, batch=True)
    adv_fn = PatchAdversarialLoss(criterion="least_squares")
    opt_g = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=1e-5)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=lr, weight_decay=1e-5)
    sched = BudgetedSchedule(steps, seconds, lr)
    vae.train()
    disc.train()
    log = {"rec": [], "kl": [], "adv_g": [], "adv_d": []}
    while sched.go_on():
        for opt in (opt_g, opt_d):
            for g in opt.param_groups:
                g["lr"] = sched.lr_now()
        y = _onehot(sample_batch(sched.step), n_classes)
        logits, mu, sigma = vae(y)
        rec = rec_fn(logits, y)
        kl = kl_loss(mu, sigma)
        loss = rec + kl_weight * kl
        use_adv = adv_weight > 0 and sched.step >= adv_start * sched.total
        if use_adv:
            fake = torch.softmax(logits, dim=1)
            g_adv = adv_fn(disc(fake)[-1], target_is_real=True, for_discriminator=False)
            loss = loss + adv_weight * g_adv
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        if use_adv:
            d_loss = 0.5 * (adv_fn(disc(fake.detach())[-1], target_is_real=False, for_discriminator=True)
                            + adv_fn(disc(y)[-1], target_is_real=True, for_discriminator=True))
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            log["adv_g"].append(float(g_adv.detach()))
            log["adv_d"].append(float(d_loss.detach()))
        log["rec"].append(float(rec.detach()))
        log["kl"].append(float(kl.detach()))
        sched.step += 1
        if progress is not None and sched.step % 200 == 0:
            progress(f"stage 1 step {sched.step}/{sched.total}: DiceCE {sum(log['rec'][-50:]) / 50:.4f}")
    vae.eval()
    return {"steps": sched.step, "planned_steps": sched.total, "capped_by_time": sched.capped,
            "seconds": round(time.perf_counter() - sched.t0, 1), "s_per_step": round(sched.seconds_per_step(), 4),
            "final_rec_loss": _tail_mean(log["rec"]), "final_kl": _tail_mean(log["kl"]),
            "final_adv_g": _tail_mean(log["adv_g"]), "final_adv_d": _tail_mean(log["adv_d"])}


def train_stage2(unet, toe, scheduler, sample_batch: Callable[[int], tuple], *, steps: int, seconds: float,
                 lr: float, progress: Callable | None = None) -> dict:
    """Latent diffusion: ``sample_batch(step)`` → ``(z0, z_cand or None, image, pos)`` on the device."""
    params = list(unet.parameters()) + list(toe.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-5)
    sched = BudgetedSchedule(steps, seconds, lr)
    unet.train()
    toe.train()
    losses, weights = [], []
    n_t = scheduler.num_train_timesteps
    while sched.go_on():
        for g in opt.param_groups:
            g["lr"] = sched.lr_now()
        z0, zc, img, pos = sample_batch(sched.step)
        noise = torch.randn_like(z0)
        t = torch.randint(0, n_t, (z0.shape[0],), device=z0.device)
        zt = scheduler.add_noise(z0, noise, t)
        target = scheduler.get_velocity(z0, noise, t)
        ctx, w = toe(img, pos)
        x = zt if zc is None else torch.cat([zt, zc], dim=1)
        loss = F.mse_loss(unet(x, timesteps=t, context=ctx), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        weights.append(w.detach().mean(0).cpu())
        sched.step += 1
        if progress is not None and sched.step % 200 == 0:
            progress(f"stage 2 step {sched.step}/{sched.total}: v-MSE {sum(losses[-50:]) / 50:.4f}")
    unet.eval()
    toe.eval()
    w_mean = torch.stack(weights[-100:]).mean(0).tolist() if weights else []
    return {"steps": sched.step, "planned_steps": sched.total, "capped_by_time": sched.capped,
            "seconds": round(time.perf_counter() - sched.t0, 1), "s_per_step": round(sched.seconds_per_step(), 4),
            "final_loss": _tail_mean(losses), "expert_weights_mean": [round(v, 4) for v in w_mean]}


@torch.no_grad()
def ddim_sample(unet, scheduler, noise: torch.Tensor, z_cand: torch.Tensor | None, context: torch.Tensor,
                n_steps: int) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from ``noise`` in ``n_steps`` steps; returns the clean latent."""
    scheduler.set_timesteps(int(n_steps), device=noise.device)
    x = noise
    for t in scheduler.timesteps:
        tt = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
        inp = x if z_cand is None else torch.cat([x, z_cand], dim=1)
        x, _ = scheduler.step(unet(inp, timesteps=tt, context=context), int(t), x)
    return x


def _tail_mean(v: list[float], n: int = 50) -> float | None:
    return round(float(sum(v[-n:]) / len(v[-n:])), 5) if v else None
