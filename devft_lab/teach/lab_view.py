"""The committed lab runs, read for the notebooks: what a reader should expect, and the
compute-matched figure with their own run on top.

The main table's cells (``devft-lab reproduce main --scale lab``, in
``results/repro/lab/main/<method>-s<seed>``) are the reference: the same config as ``make demo``
(DevFT) and ``devft-lab run lab`` (FedIT), three seeds each.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from devft_lab.experiments import compute_matched as cm

LABELS = {"fedit": "FedIT", "devft": "DevFT", "progfed": "ProgFed", "fedsa-lora": "FedSA-LoRA"}


def lab_cells(root: str | Path, methods: Sequence[str] = ("fedit", "devft"), table: str = "main",
              scale: str = "lab") -> dict[str, dict[int, Path]]:
    """``{method: {seed: run folder}}`` of the finished committed cells under ``root/results``."""
    out: dict[str, dict[int, Path]] = {}
    base = Path(root) / "results" / "repro" / scale / table
    for m in methods:
        for d in sorted(base.glob(f"{m}-s*")):
            try:
                done = json.loads((d / "summary.json").read_text()).get("done")
            except (OSError, ValueError):
                done = False
            seed = d.name.rsplit("-s", 1)[-1]
            if done and seed.isdigit():
                out.setdefault(m, {})[int(seed)] = d
    return out


def _ms(xs: Sequence[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0)


def expectations(cells: dict[str, dict[int, Path]]) -> dict[str, dict[str, Any]]:
    """Per method: final accuracy and answer loss (mean, std over seeds), the untrained model's,
    and the run's wall time in minutes (mean, std), from the cells' summaries."""
    out = {}
    for m, by in cells.items():
        ss = [json.loads((d / "summary.json").read_text()) for d in by.values()]
        out[m] = {"seeds": sorted(by), "acc": _ms([s["final"]["acc"] for s in ss]),
                  "answer_nll": _ms([s["final"]["answer_nll"] for s in ss]),
                  "untrained_acc": _ms([s["initial"]["acc"] for s in ss]),
                  "minutes": _ms([s.get("wall_s", s.get("train_s", 0.0)) / 60 for s in ss])}
    return out


def expectation_line(exp: dict[str, dict[str, Any]], method: str = "devft") -> str:
    """"You should see X ± Y % (untrained Z %) in about W minutes" for ``method``, with FedIT beside it."""
    e = exp[method]
    line = (f"You should see {LABELS.get(method, method)} end at {e['acc'][0]:.1f} ± {e['acc'][1]:.1f} % "
            f"(untrained model {e['untrained_acc'][0]:.1f} %) in about {e['minutes'][0]:.0f} minutes on 2 CPU cores "
            f"(committed seeds {', '.join(map(str, e['seeds']))}; ± is the spread over seeds)")
    if method != "fedit" and "fedit" in exp:
        f = exp["fedit"]
        line += (f"; FedIT, the same federation without stages, ends at {f['acc'][0]:.1f} ± {f['acc'][1]:.1f} % "
                 f"in about {f['minutes'][0]:.0f} minutes")
    return line + "."


def figure(cells: dict[str, dict[int, Path]], own: dict[str, Path] | None = None):
    """The compute-matched figure of the committed cells (mean ± std over seeds, untrained line),
    with ``own`` runs (label -> run folder) as single-seed lines on top."""
    runs: dict[str, dict[int, Path]] = {m: dict(by) for m, by in cells.items()}
    for label, d in (own or {}).items():
        runs[label] = {0: Path(d)}
    if "fedit" not in runs:
        runs["fedit"] = next(iter(runs.values()))  # no committed FedIT: targets from the first row
    data = cm.build(runs)
    labels = {**LABELS, **{k: f"{k} (this notebook)" for k in (own or {})}}
    for k, by in cells.items():
        labels[k] = f"{LABELS.get(k, k)}, committed"
    return cm.plot(data, labels=labels)


def paired_gap(cells: dict[str, dict[int, Path]], a: str = "devft", b: str = "fedit") -> dict[str, Any]:
    """``a - b`` in accuracy points, paired item by item within each seed and pooled over seeds
    (:func:`devft_lab.experiments.reproduce.stats.paired_items`), from the runs' scored items."""
    from devft_lab.experiments.reproduce.stats import paired_items
    from devft_lab.runner.run import read_items

    def items(m: str) -> dict[int, list[dict]]:
        out = {}
        for s, d in cells.get(m, {}).items():
            rows = read_items(Path(d) / "final_items.jsonl")
            if rows:
                out[s] = rows
        return out

    return paired_items(items(a), items(b))


def table_figure(t: dict[str, Any], root: str | Path = "."):
    """A committed table (``results/table_<name>.json``) as two panels: each row's final accuracy
    (bar: mean over seeds, error bar: std, dots: the seeds; dashed: the untrained model) and each
    row's gap to the table's reference row, paired item by item and pooled over seeds, with its 95%
    interval (rows without kept items are left out of the right panel)."""
    import matplotlib.pyplot as plt

    rows = [r for r in t["rows"] if r.get("metrics")]
    metric = t["metric"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    ax = axes[0]
    for i, r in enumerate(rows):
        m = r["metrics"][metric]
        ax.bar(i, m["mean"], yerr=m.get("std") or 0, capsize=4, color="tab:blue", alpha=0.75)
        seeds = []
        for d in r.get("run_dirs", {}).values():
            p = Path(root) / d / "summary.json"
            if p.exists():
                seeds.append(json.loads(p.read_text())["final"][metric])
        ax.plot([i] * len(seeds), seeds, "o", color="black", ms=3, zorder=3)
    base = [r["metrics"].get(f"initial_{metric}", {}).get("mean") for r in rows]
    base = [b for b in base if b is not None]
    if base:
        ax.axhline(sum(base) / len(base), ls="--", color="grey", lw=1, label="untrained model")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xticks(range(len(rows)), [r["method"] for r in rows], rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("final accuracy (%)" if metric == "acc" else metric)
    ax.set_title(f"{t['table']}: mean ± std over seeds (dots: seeds)", fontsize=9)
    ax = axes[1]
    gaps = [(r["method"], r["vs_ref_items"]) for r in rows if r.get("vs_ref_items", {}).get("mean") is not None]
    ref = next((r["vs_ref_items"]["ref"] for r in rows if r.get("vs_ref_items")), "reference")
    for j, (name, g) in enumerate(gaps):
        lo, hi = g["ci95"]
        ax.errorbar(g["mean"], j, xerr=[[g["mean"] - lo], [hi - g["mean"]]], fmt="o", capsize=4, color="tab:red")
    ax.axvline(0, color="grey", lw=1)
    ax.set_yticks(range(len(gaps)), [n for n, _ in gaps], fontsize=8)
    ax.set_xlabel(f"gap to {LABELS.get(ref, ref)} (points), paired on the items, 95% CI")
    ax.set_title("item-paired gaps, pooled over seeds", fontsize=9)
    fig.tight_layout()
    return fig


def run_expectation(run_dir: str | Path, what: str = "this config") -> str:
    """"You should see A -> B % (+g, paired 95% CI [lo, hi] over N items) in about Z minutes" from
    one committed run folder (its summary, meta and scored items)."""
    from devft_lab.core.evaluate import paired_bootstrap
    from devft_lab.runner.run import read_items

    d = Path(run_dir)
    s = json.loads((d / "summary.json").read_text())
    meta = json.loads((d / "meta.json").read_text()) if (d / "meta.json").exists() else {}
    a, b = read_items(d / "initial_items.jsonl"), read_items(d / "final_items.jsonl")
    ci = ""
    if a and len(a) == len(b):
        lo, hi = paired_bootstrap(a, b, n_boot=2000, seed=0)
        ci = f", paired 95% CI [{lo:+.1f}, {hi:+.1f}] over {len(a)} items"
    before, after = s["initial"]["acc"], s["final"]["acc"]
    minutes = meta.get("wall_s", s.get("wall_s", 0.0)) / 60
    return (f"You should see {what} go from {before:.1f} % to {after:.1f} % ({after - before:+.1f} points{ci}) "
            f"in about {minutes:.0f} minutes on 2 CPU cores (one committed seed, {d.name}).")
