"""How fast the CPU trains one of segqc's judge networks, and whether another way of using the cores is faster.

The reference segmenter's fold networks train one after the other, each with every torch thread, for a
fixed time budget: the steps a machine fits in it decide the judge's epochs, and the judge's
quality every QC answer rests on. This times one training step of a fold network as the CPU default
makes it (`segqc.components.segmenter`: UNet widths 16-32-64-128, one residual unit, ``--batch`` slices of
``--size``² with ``--channels`` channels, DiceCE loss, AdamW), random data, after warm-up steps; the time
per slice too, since a smaller batch is more updates for the same slices:

* ``threads=T``: one network with ``T`` torch threads (the fit's way, with the machine's threads);
* ``two networks side by side``: two processes of one thread each training at once (two fold networks
  in parallel): the time per step of the pair, i.e. a step's share of their wall time;
* ``channels_last``: the same network with NHWC tensors (oneDNN's preferred layout on some CPUs);
* ``torch.compile`` (``--compile``): the compiled network; its compile time is printed too, and a fit
  would pay it once per network.

README: "Features measured once per image, and what a slower machine costs the judge".

    python benchmarks/train_step_speed.py [--threads 2] [--steps 20] [--batch 8] [--compile]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time


def _step_ms(threads: int, steps: int, layout: str = "plain", channels: int = 3, size: int = 128, batch: int = 8,
             result=None) -> float:
    """Mean wall time of a training step (ms) after 3 warm-up steps; the warm-up's seconds in ``result`` too."""
    import torch
    from monai.losses import DiceCELoss

    from segqc.components.segmenter import _build, _unet_kwargs

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = _build(_unet_kwargs(channels, 2, (16, 32, 64, 128)))
    x, y = torch.randn(batch, channels, size, size), (torch.rand(batch, 1, size, size) > 0.7).long()
    if layout == "channels_last":
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    if layout == "compile":  # in a fresh cache, as a first fit on a machine would compile it
        import tempfile

        from torch._inductor import config

        config.fx_graph_cache = False
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
        net = torch.compile(net)
    opt, loss_fn = torch.optim.AdamW(net.parameters(), lr=1e-3), DiceCELoss(to_onehot_y=True, softmax=True)

    def step():
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    t = time.perf_counter()
    for _ in range(3):
        step()
    warm = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(steps):
        step()
    ms = 1000 * (time.perf_counter() - t) / steps
    if result is not None:
        result.put((ms, warm))
    return ms


def _side_by_side(steps: int, channels: int, size: int, batch: int) -> float:
    """Two one-thread processes training at once: wall time per step of the pair (ms)."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_step_ms, args=(1, steps, "plain", channels, size, batch, out)) for _ in range(2)]
    for p in procs:
        p.start()
    each = [out.get()[0] for _ in procs]
    for p in procs:
        p.join()
    return max(each) / 2  # both ran their steps in the same wall time: two steps per step time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the fit's way (the machine's cores)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per setting")
    ap.add_argument("--channels", type=int, default=3, help="image channels (Kvasir: 3)")
    ap.add_argument("--size", type=int, default=128, help="slice size (Kvasir's plan: 128)")
    ap.add_argument("--batch", type=int, default=8, help="slices per step (the fit's CPU default: 8)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (a minute to compile)")
    args = ap.parse_args()
    kw = {"channels": args.channels, "size": args.size, "batch": args.batch}

    base = _step_ms(args.threads, args.steps, **kw)
    rows = [(f"one network, {args.threads} threads (the fit's way)", base, "")]
    if args.threads != 1:
        rows.append(("one network, 1 thread", _step_ms(1, args.steps, **kw), ""))
    rows.append(("two networks side by side, 1 thread each", _side_by_side(args.steps, **kw), "per step of the pair"))
    rows.append((f"channels_last, {args.threads} threads", _step_ms(args.threads, args.steps, "channels_last", **kw),
                 ""))
    if args.compile:
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        p = ctx.Process(target=_step_ms,
                        args=(args.threads, args.steps, "compile", args.channels, args.size, args.batch, out))
        p.start()
        ms, warm = out.get()
        p.join()
        rows.append((f"torch.compile, {args.threads} threads", ms, f"compiling and 3 steps took {warm:.0f} s"))
    print(f"training step of a judge network: batch {args.batch} × {args.channels} × {args.size}², "
          f"{args.steps} steps each")
    print("| setting | ms per step | ms per slice | speed vs the fit's way | note |\n|---|---|---|---|---|")
    for name, ms, note in rows:
        print(f"| {name} | {ms:.0f} | {ms / args.batch:.1f} | {base / ms:.2f}× | {note} |")


if __name__ == "__main__":
    main()
