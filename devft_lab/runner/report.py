"""Read run folders back: per-round curves, totals, and the plots people compare runs by.

``devft-lab report RUN_DIR [RUN_DIR ...]`` prints a Markdown table per run (and a
comparison when several are given) and writes ``report.png``: the evaluation metric against
cumulative wall time and against cumulative bytes (the paper's way: LoRA uplink; and in
full: both directions plus submodel delivery).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from devft_lab.core.tables import markdown_table


@dataclass
class RunLog:
    """The logged history of one run."""

    path: Path
    name: str
    rows: list[dict]
    initial: dict
    summary: dict
    meta: dict

    def curve(self, metric: str) -> tuple[list[float], list[float], list[float], list[float]]:
        """(cumulative wall s, paper bytes, full bytes, metric) at each evaluated round, from round 0."""
        t = [0.0] if metric in self.initial else []
        pb = [0.0] if metric in self.initial else []
        fb = [0.0] if metric in self.initial else []
        v = [self.initial[metric]] if metric in self.initial else []
        for r in self.rows:
            if metric in r["extra"]:
                t.append(r["cum_train_s"] + r["cum_aggregate_s"])
                pb.append(r["cum_paper_bytes"])
                fb.append(r["cum_full_bytes"])
                v.append(r["extra"][metric])
        return t, pb, fb, v



def json_object(path: Path, fix: str, error: type[Exception] = ValueError) -> dict:
    """The JSON object stored in ``path``, or ``error`` naming the file, what is wrong and ``fix``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise error(f"{path} is not valid JSON ({e}); {fix}") from None
    if not isinstance(data, dict):
        raise error(f"{path} should hold a JSON object, not {type(data).__name__}; {fix}")
    return data

def read_run(path: str | Path, require: Sequence[str] = ()) -> RunLog:
    """Load a run folder written by :mod:`devft_lab.runner.run` (rounds.jsonl is required).

    ``require``: the numeric fields every round must hold (see :func:`check_row`; ``round`` an
    integer), checked with ``file:line`` errors; ``extra``, where present, must be an object."""
    path = Path(path)
    log = path / "rounds.jsonl"
    if not log.exists():
        raise FileNotFoundError(f"{path} has no rounds.jsonl; is it a run folder (devft-lab run CONFIG)?")
    rows = []
    for i, line in enumerate(log.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"{log}:{i}: not valid JSON (a crash mid-write? `devft-lab resume` "
                                 "truncates the log back to the last checkpoint)") from None
            rows.append(check_row(row, f"{log}:{i}", require))

    def _json(name: str) -> dict:
        p = path / name
        return json_object(p, "restore it or delete it (the report then leaves out what it held)") if p.exists() else {}

    return RunLog(path, path.name, rows, _json("initial_eval.json"), _json("summary.json"), _json("meta.json"))


# what `devft-lab report` reads from each round of rounds.jsonl (devft_lab.fl.accounting.Ledger writes them)
REPORT_FIELDS = ("round", "cum_train_s", "cum_aggregate_s", "cum_paper_bytes", "cum_full_bytes", "peak_rss_mb")


def check_row(row: object, at: str, require: Sequence[str] = ()) -> dict:
    """One round of ``rounds.jsonl``: an object whose ``require`` fields are numbers (``round`` an
    integer) and whose ``extra`` is an object; else a ``ValueError`` naming ``file:line``, the field
    and the fix. ``extra`` defaults to ``{}``."""
    fix = ("the line was edited or written by another tool; restore it, or delete rounds.jsonl and run "
           "`devft-lab resume RUN_DIR` to rebuild it from rounds.csv")
    if not isinstance(row, dict):
        raise ValueError(f"{at}: a round record must be a JSON object, not {type(row).__name__}; {fix}")
    missing = [k for k in require if k not in row]
    if missing:
        raise ValueError(f"{at}: the round record has no {', '.join(missing)}; {fix}")
    for k in require:
        v = row[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (k == "round" and not isinstance(v, int)):
            raise ValueError(f"{at}: {k} = {v!r} should be {'an integer' if k == 'round' else 'a number'}; {fix}")
    row.setdefault("extra", {})
    if not isinstance(row["extra"], dict):
        raise ValueError(f"{at}: extra = {row['extra']!r} should be an object of metrics; {fix}")
    return row


def metric_of(run: RunLog) -> str:
    """The headline metric: accuracy if evaluated, else held-out loss."""
    keys = set(run.initial) | {k for r in run.rows for k in r["extra"]}
    return "acc" if "acc" in keys else "eval_loss"


def table(runs: Sequence[RunLog]) -> str:
    """One Markdown row per run: metric before/after, time, bytes both ways, memory."""
    body = []
    for r in runs:
        m = metric_of(r)
        _, _, _, v = r.curve(m)
        last = r.rows[-1] if r.rows else {}
        before = f"{r.initial[m]:.4g}" if m in r.initial else "-"
        after = f"{v[-1]:.4g}" if v else "-"
        body.append([r.name, len(r.rows), m, before, after,
                     f"{last.get('cum_train_s', 0) + last.get('cum_aggregate_s', 0):.1f}",
                     f"{last.get('cum_paper_bytes', 0) / 1e6:.2f}", f"{last.get('cum_full_bytes', 0) / 1e6:.2f}",
                     f"{max((x['peak_rss_mb'] for x in r.rows), default=0):.0f}"])
    return "\n".join(markdown_table(["run", "rounds", "metric", "before", "after", "train+agg s",
                                     "paper MB (LoRA up)", "full MB", "peak RSS MB"], body))


def plot(runs: Sequence[RunLog], out: str | Path | None = None, metric: str | None = None):
    """Metric vs wall time, vs paper bytes and vs full bytes, one line per run."""
    import matplotlib  # optional/heavy: matplotlib

    if out is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional/heavy: matplotlib

    metric = metric or metric_of(runs[0])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for r in runs:
        t, pb, fb, v = r.curve(metric)
        axes[0].plot(t, v, marker="o", ms=3, label=r.name)
        axes[1].plot([b / 1e6 for b in pb], v, marker="o", ms=3, label=r.name)
        axes[2].plot([b / 1e6 for b in fb], v, marker="o", ms=3, label=r.name)
    for ax, xl in zip(axes, ("wall time, train + aggregate (s)", "MB sent, paper's way (LoRA uplink)",
                             "MB sent in full (up + down + submodel)")):
        ax.set_xlabel(xl)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    if out is not None:
        fig.savefig(out, dpi=110)
        plt.close(fig)
    return fig


def main(paths: Sequence[str], out: str | None = None) -> str:
    """Report on run folders; returns (and the CLI prints) the Markdown table."""
    runs = [read_run(p, require=REPORT_FIELDS) for p in paths]
    text = table(runs)
    target = Path(out) if out else Path(paths[0]) / "report.png"
    plot(runs, target)
    return text + f"\n\nplot: {target}"
