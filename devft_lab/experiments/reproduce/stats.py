"""Aggregating finished cells: mean +- std over seeds, paired gaps, ratios, time-to-target efficiency."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from devft_lab.experiments.reproduce.cells import Cell, Plan, _json, cell_status
from devft_lab.runner.report import read_run


# --------------------------------------------------------------------------- aggregation
def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (n - 1; None for one value) of finite values."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return {"mean": m, "std": sd, "n": len(xs)}


def fmt(ms: dict[str, Any] | None, digits: int = 2, scale: float = 1.0) -> str:
    """``mean ± std`` (or ``mean`` for one seed, ``-`` for none)."""
    if not ms or ms.get("mean") is None:
        return "-"
    s = f"{ms['mean'] / scale:.{digits}f}"
    return s + (f" ± {ms['std'] / scale:.{digits}f}" if ms.get("std") is not None else "")


@dataclass
class Finished:
    """The finished runs of one variant, by seed."""

    summaries: dict[int, dict] = field(default_factory=dict)
    metas: dict[int, dict] = field(default_factory=dict)
    paths: dict[int, Path] = field(default_factory=dict)
    items: dict[int, list[dict]] = field(default_factory=dict)  # final_items.jsonl, where the run kept it
    initial_items: dict[int, list[dict]] = field(default_factory=dict)  # initial_items.jsonl (untrained model)


def collect(plan: Plan, cells: Sequence[Cell]) -> dict[str, Finished]:
    """Summaries of the finished (not stale) cells, by variant key."""
    out: dict[str, Finished] = {}
    for c in cells:
        f = out.setdefault(c.variant.key, Finished())
        if cell_status(plan, c) == "done":
            d = plan.cell_dir(c)
            f.summaries[c.seed] = _json(d / "summary.json")
            f.metas[c.seed] = _json(d / "meta.json")
            f.paths[c.seed] = d
            from devft_lab.runner.run import read_items  # optional/heavy: torch (devft_lab.runner.run)

            rows = read_items(d / "final_items.jsonl")
            if rows:
                f.items[c.seed] = rows
            rows = read_items(d / "initial_items.jsonl")
            if rows:
                f.initial_items[c.seed] = rows
    return out


def headline(summaries: Iterable[dict]) -> tuple[str, bool]:
    """The metric tables compare by: ``acc`` (higher is better) if evaluated, else ``eval_loss``."""
    keys = {k for s in summaries for k in s.get("final", {})}
    return ("acc", True) if "acc" in keys else ("eval_loss", False)


def row_metrics(summaries: dict[int, dict]) -> dict[str, dict[str, Any]]:
    """Mean ± std over seeds of final metrics, initial metric and totals."""
    ss = list(summaries.values())
    keys = sorted({k for s in ss for k in s.get("final", {})})
    out = {k: mean_std([s["final"].get(k) for s in ss if k in s.get("final", {})]) for k in keys}
    for k in sorted({k for s in ss for k, v in s.get("initial", {}).items()
                     if k != "eval_s" and isinstance(v, (int, float))}):  # numbers only (older runs kept a path)
        out[f"initial_{k}"] = mean_std([s["initial"][k] for s in ss if k in s.get("initial", {})])
    out["train_s"] = mean_std([s.get("train_s", 0) + s.get("aggregate_s", 0) for s in ss])
    for k in ("paper_bytes", "full_bytes", "uplink_bytes", "downlink_bytes", "submodel_delivery_bytes",
              "flops_estimate", "peak_rss_mb", "cuda_peak_mb"):
        out[k] = mean_std([s.get(k) for s in ss if k in s])
    return out


def paired(a: dict[int, dict], b: dict[int, dict], metric: str) -> dict[str, Any]:
    """a - b of ``final[metric]`` over the seeds both have: mean ± std of per-seed differences."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s]["final"][metric] - b[s]["final"][metric] for s in seeds
             if metric in a[s].get("final", {}) and metric in b[s].get("final", {})]
    return {**mean_std(diffs), "seeds": seeds}


def paired_items(a: dict[int, list[dict]], b: dict[int, list[dict]], n_boot: int = 2000) -> dict[str, Any]:
    """a - b in accuracy points, paired item by item within each seed and pooled over the seeds
    where both kept their scored items: ``mean`` (mean over seeds of the per-seed gap), a 95%
    ``ci95`` from averaging the seeds' paired-bootstrap replicates (items resampled within task;
    it measures the evaluation items' noise given the trained runs, not seed-to-seed training noise,
    which ``paired``'s std shows), ``half_width`` and ``per_seed`` gaps with their own intervals."""
    import numpy as np  # optional/heavy: numpy

    from devft_lab.stats import bootstrap_gaps, summarise  # optional/heavy: numpy (devft_lab.stats)

    seeds = sorted(set(a) & set(b))
    if not seeds:
        return {"mean": None, "ci95": None, "half_width": None, "seeds": [], "per_seed": {}}
    reps, per = [], {}
    for s in seeds:
        r = bootstrap_gaps(b[s], a[s], n_boot=n_boot, seed=s)  # avg(a) - avg(b)
        g = summarise(a[s])["avg"] - summarise(b[s])["avg"]
        per[s] = {"gap": g, "ci95": [float(np.percentile(r, 2.5)), float(np.percentile(r, 97.5))],
                  "items": len(a[s])}
        reps.append(r)
    pooled = np.mean(reps, axis=0)
    lo, hi = float(np.percentile(pooled, 2.5)), float(np.percentile(pooled, 97.5))
    return {"mean": float(np.mean([per[s]["gap"] for s in seeds])), "ci95": [lo, hi], "half_width": (hi - lo) / 2,
            "seeds": seeds, "per_seed": per}


def fmt_ci(g: dict[str, Any] | None, digits: int = 1) -> str:
    """``+1.2 [-0.9, +3.4]`` (a pooled paired gap and its 95% interval), ``-`` without items."""
    if not g or g.get("mean") is None:
        return "-"
    lo, hi = g["ci95"]
    return f"{g['mean']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def ratio(a: dict[int, dict], b: dict[int, dict], get: Callable[[dict], float | None]) -> dict[str, Any]:
    """b / a per seed (how many times less ``a`` needs than ``b``), mean ± std."""
    vals = []
    for s in sorted(set(a) & set(b)):
        x, y = get(a[s]), get(b[s])
        if x and y is not None:
            vals.append(y / x)
    return mean_std(vals)


def _wall(s: dict) -> float:
    return s.get("train_s", 0.0) + s.get("aggregate_s", 0.0)


# --------------------------------------------------------------------------- efficiency helpers
def reach(curve: tuple[list[float], list[float], list[float], list[float]], target: float,
          higher: bool) -> dict[str, float] | None:
    """Wall s, paper bytes and full bytes at the first evaluation at or beyond ``target``."""
    t, pb, fb, v = curve
    for i, x in enumerate(v):
        if (x >= target) if higher else (x <= target):
            return {"time_s": t[i], "paper_bytes": pb[i], "full_bytes": fb[i], "value": x}
    return None


def stage_round_costs(rows: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Mean per-round cost of the first and the last stage of one run (stage = ``row['stage']``)."""
    if not rows:
        return {}
    stages = sorted({r["stage"] for r in rows})

    def mean_of(sel: list[dict]) -> dict[str, float]:
        n = len(sel)
        return {"time_s": sum(r["train_s"] + r["aggregate_s"] for r in sel) / n,
                "paper_bytes": sum(r["uplink_bytes"] for r in sel) / n,
                "full_bytes": sum(r["uplink_bytes"] + r["downlink_bytes"] + r["submodel_delivery_bytes"]
                                  for r in sel) / n,
                "flops": sum(r["flops_estimate"] for r in sel) / n,
                "peak_rss_mb": max(r["peak_rss_mb"] for r in sel),
                "cuda_peak_mb": max(r["cuda_peak_mb"] for r in sel),
                "capacity": sel[0].get("extra", {}).get("capacity"), "rounds": n}

    return {"first": mean_of([r for r in rows if r["stage"] == stages[0]]),
            "last": mean_of([r for r in rows if r["stage"] == stages[-1]])}


def efficiency(fin: dict[str, Finished], metric: str, higher: bool) -> dict[str, Any]:
    """Time/bytes to FedIT's final value (per seed), and DevFT's stage rounds vs a full-model round."""
    ref = fin.get("fedit", Finished())
    finals = {s: ref.summaries[s]["final"][metric] for s in ref.summaries if metric in ref.summaries[s].get("final", {})}
    initials = {s: ref.summaries[s].get("initial", {}).get(metric) for s in finals}

    def improved(s: int) -> bool:  # a target only where FedIT beat the untrained model of that seed
        i = initials[s]
        return i is None or (finals[s] > i if higher else finals[s] < i)

    targets = {s: v for s, v in finals.items() if improved(s)}
    out: dict[str, Any] = {"target": {"definition": f"FedIT's final {metric} in the same seed, where it improves on "
                                                    f"the untrained model's (other seeds have no target)",
                                      **mean_std(list(targets.values())), "per_seed": targets,
                                      "no_target_seeds": sorted(s for s in finals if s not in targets)},
                           "to_target": {}, "rounds": {}}
    reached: dict[str, dict[int, dict]] = {}
    for key, f in fin.items():
        per: dict[int, dict] = {}
        for s, path in f.paths.items():
            if s in targets:
                per[s] = reach(read_run(path).curve(metric), targets[s], higher) or {}
        reached[key] = per
        hit = {s: r for s, r in per.items() if r}
        out["to_target"][key] = {
            "reached": f"{len(hit)} of {len(per)}",
            "time_s": mean_std([r["time_s"] for r in hit.values()]),
            "paper_bytes": mean_std([r["paper_bytes"] for r in hit.values()]),
            "full_bytes": mean_std([r["full_bytes"] for r in hit.values()]),
        }
    base = reached.get("fedit", {})
    for key, per in reached.items():
        for q in ("time_s", "paper_bytes", "full_bytes"):
            vals = [base[s][q] / per[s][q] for s in per if per[s] and base.get(s) and per[s][q] > 0]
            out["to_target"][key][f"{q}_x_less_than_fedit"] = mean_std(vals)
    dev_hit = reached.get("devft", {})
    out["devft_vs"] = {key: {q: mean_std([per[s][q] / dev_hit[s][q] for s in per
                                          if per[s] and dev_hit.get(s) and dev_hit[s][q] > 0])
                             for q in ("time_s", "paper_bytes", "full_bytes")}
                       for key, per in reached.items() if key != "devft"}
    # whole runs against DevFT's (the paper's headline ratios, 4.59x and 10.67x, compare whole runs of
    # DevFT and C2A): each method's total over DevFT's, per seed (x > 1: DevFT needed less)
    dev_sums = fin.get("devft", Finished()).summaries

    def totals(sm: dict) -> dict[str, float]:
        return {"time_s": sm["train_s"] + sm.get("aggregate_s", 0.0), "paper_bytes": sm["paper_bytes"],
                "full_bytes": sm["full_bytes"], "flops": sm["flops_estimate"]}

    out["whole_run_vs_devft"] = {
        key: {q: mean_std([totals(f.summaries[s])[q] / totals(dev_sums[s])[q] for s in f.summaries
                           if s in dev_sums and totals(dev_sums[s])[q] > 0])
              for q in ("time_s", "paper_bytes", "full_bytes", "flops")}
        for key, f in fin.items() if key != "devft"}
    # per-round cost: DevFT's first / last stage against FedIT's full-model rounds
    def rounds_of(f: Finished) -> dict[int, list[dict]]:
        return {s: read_run(p).rows for s, p in f.paths.items()}

    dev = {s: stage_round_costs(r) for s, r in rounds_of(fin.get("devft", Finished())).items()}
    full = {s: stage_round_costs(r)["last"] for s, r in rounds_of(ref).items() if r}
    for which in ("first", "last"):
        per_q: dict[str, Any] = {}
        for q in ("time_s", "paper_bytes", "full_bytes", "flops", "peak_rss_mb", "cuda_peak_mb"):
            per_q[q] = mean_std([d[which][q] for d in dev.values() if d])
            per_q[f"{q}_x_less_than_full"] = mean_std(
                [full[s][q] / dev[s][which][q] for s in dev if dev[s] and s in full and dev[s][which][q] > 0])
        per_q["capacity"] = next((d[which]["capacity"] for d in dev.values() if d), None)
        out["rounds"][f"devft_{which}_stage"] = per_q
    out["rounds"]["full_model"] = {q: mean_std([f[q] for f in full.values()])
                                   for q in ("time_s", "paper_bytes", "full_bytes", "flops", "peak_rss_mb",
                                             "cuda_peak_mb")}
    return out


