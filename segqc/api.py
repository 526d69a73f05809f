"""The Python API behind every `segqc` command (the CLI only parses and calls these).

All functions take keyword arguments, return plain results and write their files into
``out``; long loops show rich progress bars on stderr. Where each step lives:

* `segqc.pipeline.fit` — fingerprint → plan → training pairs → methods → calibration → bundle;
* `segqc.pipeline.answering` — `QCBundle.answer`: raw scores → calibrated answers → fusion;
* `segqc.pipeline.run` — ``predict`` and ``bench``: cases streamed in, rows and maps out;
* `segqc.pipeline.measure` — true metrics of masks, QC accuracy of a table.
"""

from __future__ import annotations

from pathlib import Path

from segqc.pipeline.fit import fingerprint_dataset, fit
from segqc.pipeline.measure import compute_metrics, evaluate_csv
from segqc.pipeline.outputs import write_dataset
from segqc.pipeline.records import load_cases, write_run_record
from segqc.pipeline.run import bench, bundle_scorer, default_batch_size, predict, score_case, score_cases

__all__ = ["bench", "bundle_scorer", "compute_metrics", "default_batch_size", "evaluate_csv", "fingerprint_dataset",
           "fit", "load_cases", "predict", "sample_data_dir", "score_case", "score_cases", "write_dataset",
           "write_run_record"]


def sample_data_dir() -> Path:
    """The real sample data shipped inside the package (Kvasir-SEG and MSD hippocampus subsets)."""
    return Path(__file__).parent / "sample_data"
