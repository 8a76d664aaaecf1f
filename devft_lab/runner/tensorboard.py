"""TensorBoard view of a run folder: every number of ``rounds.jsonl`` as a scalar per round.

    devft-lab report RUN_DIR --tensorboard          # writes RUN_DIR/tensorboard/
    tensorboard --logdir RUN_DIR/tensorboard

The run log (``rounds.jsonl``) stays the one source of truth: this exports it, and
re-exporting (during a run, or after ``devft-lab resume`` truncated and re-ran rounds)
replaces the event files, so TensorBoard never shows a round twice. Needs the
``tensorboard`` package (``pip install 'devft-lab[tensorboard]'``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from devft_lab.runner.report import read_run

# rounds.jsonl key -> TensorBoard tag; the tags group into sections in the UI.
TAGS: dict[str, str] = {
    "loss": "train/loss",
    "lr": "train/lr",
    "capacity": "train/stage_layers",
    "stage": "train/stage",
    "num_clients": "train/clients",
    "uplink_bytes": "comm/uplink_bytes",
    "downlink_bytes": "comm/downlink_bytes",
    "submodel_delivery_bytes": "comm/submodel_delivery_bytes",
    "cum_paper_bytes": "comm/cum_uplink_lora_bytes (paper)",
    "cum_full_bytes": "comm/cum_full_bytes",
    "flops_estimate": "compute/client_flops",
    "cum_flops_estimate": "compute/cum_client_flops",
    "train_s": "time/train_s",
    "aggregate_s": "time/aggregate_s",
    "eval_s": "time/eval_s",
    "peak_rss_mb": "memory/peak_rss_mb",
    "cuda_peak_mb": "memory/cuda_peak_mb",
}
EVAL_PREFIXES = ("acc", "correct_", "eval_")


def scalars(row: dict[str, Any]) -> Iterator[tuple[str, float]]:
    """(tag, value) pairs of one ledger row; evaluation metrics (acc*, eval_*) go under ``eval/``."""
    flat = {**row, **row.get("extra", {})}
    for key, value in flat.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if key in TAGS:
            yield TAGS[key], float(value)
        elif key.startswith(EVAL_PREFIXES):
            yield f"eval/{key}", float(value)


def export(run_dir: str | os.PathLike, logdir: str | os.PathLike | None = None) -> Path:
    """Write the run's TensorBoard events to ``logdir`` (default ``RUN_DIR/tensorboard``).

    Step = round number (1-based, as the logs print it); the initial evaluation, when the
    run has one, is step 0. Old event files in ``logdir`` are removed first.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional/heavy: tensorboard
    except ImportError:
        raise ImportError("TensorBoard export needs the tensorboard package: "
                          "pip install 'devft-lab[tensorboard]' (or pip install tensorboard).") from None
    run = read_run(run_dir, require=("round",))
    out = Path(logdir) if logdir else Path(run_dir) / "tensorboard"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("events.out.tfevents.*"):
        old.unlink()
    writer = SummaryWriter(log_dir=str(out))
    try:
        for key, value in (run.initial or {}).items():
            if (isinstance(value, (int, float)) and not isinstance(value, bool) and key not in TAGS
                    and key.startswith(EVAL_PREFIXES)):
                writer.add_scalar(f"eval/{key}", float(value), 0)
        for row in run.rows:
            for tag, value in scalars(row):
                writer.add_scalar(tag, value, int(row["round"]) + 1)
    finally:
        writer.close()
    return out
