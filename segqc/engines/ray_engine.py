"""Judge cases on a Ray cluster with Ray Data: `segqc predict --engine ray`.

The pipeline, streamed (cases flow through while the driver writes their rows):

1. a dataset of the cases to do: each row an index and the pickled `CaseRef` (paths only);
2. reading: `load_case` on each ref, in CPU tasks beside GPU actors (on a CPU-only run Ray
   Data fuses this stage into the actors: each reads the cases it scores);
3. a pool of scoring actors: each calls ``make_scorer()`` once (one copy of the bundle per
   actor, on its GPU with ``gpus_per_worker``) and scores ``batch_size`` cases per call;
4. the driver: rows in the order of the refs, back to `segqc.engines.batch.run_batch`, which writes
   the CSV as for the local engine (the actors write the map files themselves).

Cases and answers cross Ray Data's Arrow blocks as pickled bytes (Arrow holds neither
`Case` objects nor dicts of mixed columns); a case that fails carries only its reason as
text, since exceptions do not reliably survive pickling (`CaseError` needs two arguments).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from segqc.data.case import Case
from segqc.data.errors import CaseError
from segqc.data.layouts import CaseRef
from segqc.engines.batch import failure_reason, load_case, score_loaded

__all__ = ["RayEngine"]

_NEEDS_RAY = "the ray engine needs Ray: pip install 'segqc[ray]'"


class RayEngine:
    """The cases of a batch on Ray actors (a local Ray, or a cluster at ``address``).

    Args:
        batch_size: cases each scoring call gets (and each read task hands on).
        workers: scoring actors; None: one per CPU of the cluster, or per GPU share with
            ``gpus_per_worker``.
        address: None starts a local Ray (shut down at the end); ``"auto"`` or
            ``"ray://host:10001"`` joins a cluster. A Ray already initialised by the caller
            is used as it is, and left running.
        gpus_per_worker: GPUs each scoring actor holds (0: CPU only; 0.5: two actors a GPU).
    """

    def __init__(self, batch_size: int = 1, workers: int | None = None, address: str | None = None,
                 gpus_per_worker: float = 0.0):
        if batch_size < 1:
            raise ValueError(f"batch size must be ≥ 1, got {batch_size}")
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be ≥ 1, got {workers}")
        if gpus_per_worker < 0:
            raise ValueError(f"GPUs per worker must be ≥ 0, got {gpus_per_worker}")
        _import_ray()  # fail here, before any case is listed, when Ray is missing
        self.batch_size, self.workers = int(batch_size), workers
        self.address, self.gpus_per_worker = address, float(gpus_per_worker)

    def rows(self, refs: Sequence[CaseRef], make_scorer: Callable[[], Callable], *,
             require_mask: bool = True) -> Iterator[tuple[CaseRef, dict | Exception]]:
        if not refs:  # nothing to do: no reason to start a Ray
            return
        ray = _import_ray()
        started = _connect(ray, self.address)
        try:
            with _data_options():
                for batch in self._pipeline(ray, refs, make_scorer, require_mask).iter_batches(
                        batch_size=None, batch_format="pyarrow"):
                    for i, blob, error in zip(*(batch.column(c).to_pylist() for c in ("index", "result", "error"))):
                        ref = refs[i]
                        yield ref, CaseError(ref.case_id, error) if error is not None else pickle.loads(blob)
        finally:
            if started:  # only a Ray this engine started: the caller's stays up
                ray.shutdown()

    def _pipeline(self, ray, refs: Sequence[CaseRef], make_scorer, require_mask: bool):
        from ray.data import ActorPoolStrategy

        workers = self.workers or default_workers(ray, self.gpus_per_worker)
        items = [{"index": i, "ref": pickle.dumps(ref)} for i, ref in enumerate(refs)]
        return (ray.data.from_items(items)
                .map_batches(_read, batch_size=self.batch_size, batch_format="pyarrow",
                             fn_kwargs={"require_mask": require_mask})
                .map_batches(_Scorer, batch_size=self.batch_size, batch_format="pyarrow",
                             fn_constructor_args=(make_scorer,), num_gpus=self.gpus_per_worker,
                             compute=ActorPoolStrategy(size=workers)))


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401 — the `ray[data]` extra, not only Ray's core
    except ImportError as e:
        raise ValueError(_NEEDS_RAY) from e
    return ray


def _connect(ray, address: str | None) -> bool:
    """Initialise Ray unless the caller has; True when this call started it (and so must shut it down)."""
    if ray.is_initialized():
        return False
    # log_to_driver off: the workers' log lines would break segqc's progress bar (they stay in Ray's logs)
    ray.init(address=address, log_to_driver=False, include_dashboard=False, configure_logging=False)
    return True


@contextmanager
def _data_options():
    """Ray Data set for this run, as it was after (a caller's own datasets keep their options)."""
    from ray.data import DataContext
    from ray.util.debug import log_once

    ctx = DataContext.get_current()
    console = [h for h in logging.getLogger("ray.data").handlers if h.name == "console"]
    saved = ctx.execution_options.preserve_order, ctx.enable_progress_bars, [h.level for h in console]
    ctx.execution_options.preserve_order = True  # rows reach the CSV in the order of the refs
    ctx.enable_progress_bars = False  # segqc shows its own
    log_once("ray_data_progress_manager_disabled")  # marks Ray's warning that its bars are off as already shown
    for h in console:  # its warnings (e.g. no node has the GPUs asked for), not a line per dataset run
        h.setLevel(max(h.level, logging.WARNING))
    try:
        yield
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars, levels = saved
        for h, level in zip(console, levels):
            h.setLevel(level)


def default_workers(ray, gpus_per_worker: float) -> int:
    """One actor per CPU of the cluster, or per share of its GPUs."""
    res = ray.cluster_resources()
    if gpus_per_worker <= 0:
        return max(1, int(res.get("CPU", 1)))
    n = int(res.get("GPU", 0) // gpus_per_worker)
    if n < 1:  # else Ray Data would wait for GPUs that never come
        raise ValueError(f"{gpus_per_worker:g} GPU(s) per worker asked, but the Ray cluster has {res.get('GPU', 0):g}; "
                         "use --gpus-per-worker 0, or --workers N for a cluster that adds GPUs on demand")
    return n


def _read(batch, *, require_mask: bool):
    """Refs → cases (pickled), or the reason a case cannot be read."""
    import pyarrow as pa

    loaded = [load_case(pickle.loads(b), require_mask) for b in batch.column("ref").to_pylist()]
    cases, errors = _encode(loaded)
    return pa.table({"index": batch.column("index"), "case": cases, "error": errors})


class _Scorer:
    """A scoring actor: its own scorer (bundle loaded once), then batches of cases → answers."""

    def __init__(self, make_scorer: Callable[[], Callable]):
        self.score = make_scorer()

    def __call__(self, batch):
        import pyarrow as pa

        loaded: list[Case | Exception] = [
            pickle.loads(b) if b is not None else CaseError("", e)  # read errors pass through, reason unchanged
            for b, e in zip(batch.column("case").to_pylist(), batch.column("error").to_pylist())]
        results, errors = _encode(score_loaded(self.score, loaded))
        return pa.table({"index": batch.column("index"), "result": results, "error": errors})


def _encode(values: list) -> tuple:
    """Pickled values (large_binary: a block of big 3D cases can pass 2 GB) and failure reasons, as Arrow columns."""
    import pyarrow as pa

    blobs = [None if isinstance(v, Exception) else pickle.dumps(v, protocol=5) for v in values]
    reasons = [failure_reason(v) if isinstance(v, Exception) else None for v in values]
    return pa.array(blobs, pa.large_binary()), pa.array(reasons, pa.large_string())

