"""Where does DevFT help? ``devft-lab sweep``: DevFT's open choices, one factor at a time, against
FedIT at equal total client FLOPs.

    devft-lab sweep --scale lab --seeds 3 [--factors capacity transfer] [--max-cells K] [--dry-run]
    devft-lab sweep --scale lab --set model.name=gemma3-270m data.template=alpaca --tag gemma3 --factors capacity   # another model

Around the lab's DevFT (the reproduce ``devft`` variant: 4 stages, stage-1 capacity L/8, rule
``copy``, beta 0.1, spectral DGLG), one factor moves at a time:

=========  ================================================================================
factor     levels (the first is the center)
=========  ================================================================================
capacity   stage-1 capacity L/8 (4 stages), L/4 (3 stages), L/2 (2 stages): growth x2 ending at
           L, the lab's total rounds split evenly over the stages (``devft.rounds_per_stage=null``)
transfer   ``devft.transfer`` copy, copy-scaled, anchor-only, increment
beta       ``devft.beta`` 0.1, 0.05, 0.025
grouping   spectral, contiguous, even (the reproduce ablation's ``grouping-contiguous`` and
           ``grouping-even`` cells, shared), function (``devft.similarity=function``)
schedule   the learning-rate decay: ``run`` (one cosine across all rounds, the center), ``stage``
           (``train.schedule_scope=stage``: restarted at each stage, so the last stage, the only one
           that trains the full model, starts at the peak as FedIT does), and ``stage-even`` (the
           per-stage decay with EVEN groups: contiguous, balanced, as in the paper's appendix)
=========  ================================================================================

The ``schedule`` factor also has a control per level, **final stage only**: FedIT for exactly
DevFT's last-stage rounds at DevFT's last-stage learning rates (run scope: the last rounds of the
run-wide decay, ``train.schedule_start``/``train.schedule_rounds``; stage scope: one decay over
those rounds). DevFT − control says what the fused stages add over skipping them.

Every DevFT schedule (capacity level) gets a FedIT cell with the same total client FLOPs:
``fed.num_rounds = round(sum_s r_s F(L_s) / F(L))``
(:func:`devft_lab.experiments.compute_matched.matched_rounds`; F = the ledger's client FLOPs
per token of a stage). Each DevFT level is compared with the FedIT of its own schedule.

Cells are reproduce cells (:mod:`devft_lab.experiments.reproduce.cells`): same folders
(``RESULTS/repro/SCALE[-TAG]/<home>/<variant>-s<seed>``), same skip / resume / lock, so the
shared ablation cells are trained once for both commands. Every sweep cell evaluates at the end
only (``eval.stage_ends=false``). The new DevFT cells, the center included, record the stage loss
probe (``devft.probe_loss=true``; not part of the config hash); the shared ablation cells keep
their config, so their probe columns stay empty unless they were run with it.

Writes ``RESULTS/sweep_SCALE[-TAG].json``, ``.md`` and ``.png``: per level the final accuracy
(mean ± sd over seeds), the gain over the untrained model and the DevFT - matched FedIT gap
(both paired item by item within a seed, 95% bootstrap intervals:
:func:`devft_lab.experiments.reproduce.stats.paired_items`), and the probe's sub - full loss
gaps per stage, the verdict of each gap's interval (above / within / below zero), the best level
per factor and the probe's rank correlation with the gap; the png is a heatmap of the gaps. The reading
in words is written by a person in ``RESULTS/readings/sweep_SCALE[-TAG].md``; the report links to it.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from devft_lab.core.tables import markdown_table
from devft_lab.experiments.compute_matched import matched_rounds, model_shape
from devft_lab.experiments.reproduce.cells import (_DEVFT, _FINAL_ONLY, _FULL, SCALES, Cell, Plan, ReproduceError,
                                                   V, Variant, cell_status, check_tag, seeds_of)
from devft_lab.experiments.reproduce.cli import table_command, train_cells
from devft_lab.experiments.reproduce.stats import collect, fmt, fmt_ci, headline, mean_std, paired_items, row_metrics
from devft_lab.experiments.reproduce.tables import compute_dtype, verdict

FACTORS = ("capacity", "transfer", "beta", "grouping", "schedule")
HOME = "sweep"
_PROBE = ("devft.probe_loss=true",)
# stage-1 capacity as a fraction of L -> the DevFT schedule overrides (growth x2, ending at L)
SCHEDULES: dict[str, tuple[str, ...]] = {
    "L/8": (),  # the lab default: 4 stages (4 -> 8 -> 15 -> 30 of SmolLM2's 30 layers)
    "L/4": ("devft.stages=3", "devft.growth=2", "devft.capacities=null", "devft.rounds_per_stage=null"),
    "L/2": ("devft.stages=2", "devft.growth=2", "devft.capacities=null", "devft.rounds_per_stage=null"),
}
# what every sweep cell of a scale adds (smoke: a few lab items, so that gaps can be paired)
SCALE_EXTRA: dict[str, tuple[str, ...]] = {"smoke": ("eval.suites=[indist]", "eval.max_per_task=2")}


@dataclass(frozen=True)
class Level:
    """One row of the sweep: a factor's level, its DevFT variant and its schedule's key."""

    factor: str
    level: str
    variant: Variant
    schedule: str = "L/8"
    control: str | None = None  # lr scope of this level's "final stage only" control (schedule factor)


def _dev(key: str, label: str, *overrides: str) -> Variant:
    return Variant(key, label, _DEVFT + _FINAL_ONLY + _PROBE + tuple(overrides), HOME)


CENTER = _dev("sweep-devft", "DevFT (sweep center: L/8, copy, beta 0.1, spectral)")


def levels(factors: Sequence[str] = FACTORS) -> list[Level]:
    """The rows of the chosen factors, in :data:`FACTORS` order, each factor's center first."""
    bad = [f for f in factors if f not in FACTORS]
    if bad or not factors:
        raise ReproduceError(f"--factors {' '.join(bad) or '(none)'}: choose from {', '.join(FACTORS)}.")
    out: list[Level] = []
    for f in FACTORS:
        if f not in factors:
            continue
        if f == "capacity":
            out.append(Level(f, "L/8", CENTER))
            for frac, key in (("L/4", "l4"), ("L/2", "l2")):
                out.append(Level(f, frac, _dev(f"sweep-first-{key}", f"DevFT, stage 1 at {frac}", *SCHEDULES[frac]),
                                 frac))
        elif f == "transfer":
            out.append(Level(f, "copy", CENTER))
            for rule in ("copy-scaled", "anchor-only", "increment"):
                out.append(Level(f, rule, _dev(f"sweep-transfer-{rule}", f"DevFT, transfer {rule}",
                                               f"devft.transfer={rule}")))
        elif f == "beta":
            out.append(Level(f, "0.1", CENTER))
            for beta in ("0.05", "0.025"):
                out.append(Level(f, beta, _dev(f"sweep-beta-{beta}", f"DevFT, beta {beta}", f"devft.beta={beta}")))
        elif f == "schedule":
            out += [Level(f, "run", CENTER, control="run"),
                    Level(f, "stage", _dev("sweep-schedule-stage", "DevFT, cosine restarted at each stage",
                                           "train.schedule_scope=stage"), control="stage"),
                    Level(f, "stage-even", _dev("sweep-schedule-stage-even", "DevFT, per-stage cosine, EVEN groups",
                                                "train.schedule_scope=stage", "devft.grouping=even"), control="stage")]
        else:
            out += [Level(f, "spectral", CENTER), Level(f, "contiguous", V["grouping-contiguous"]),
                    Level(f, "even", V["grouping-even"]),
                    Level(f, "function", _dev("sweep-grouping-function", "DevFT, functional similarity (spectral)",
                                              "devft.similarity=function"))]
    return out


def schedule_of(plan: Plan, schedule: str) -> tuple[list[int], list[int]]:
    """(capacities, rounds per stage) of a sweep schedule at ``plan``'s scale."""
    from devft_lab.runner.config import stage_rounds  # optional/heavy: torch (devft_lab.runner.config)

    cfg = plan.config(Cell(_dev("probe", "", *SCHEDULES[schedule]), 0))
    counts = model_shape(cfg.model.name, cfg.lora.r, cfg.lora.target_modules)
    caps = cfg.devft.capacities or _default_caps(counts.num_layers, cfg)
    return caps, stage_rounds(cfg)


def _default_caps(num_layers: int, cfg) -> list[int]:
    from devft_lab.runner.config import validate_against_model  # optional/heavy: torch (devft_lab.runner.config)

    return validate_against_model(cfg, num_layers)


def fedit_variant(plan: Plan, schedule: str) -> Variant:
    """FedIT with the total client FLOPs of DevFT's ``schedule`` at ``plan``'s scale."""
    cfg = plan.config(Cell(CENTER, 0))
    counts = model_shape(cfg.model.name, cfg.lora.r, cfg.lora.target_modules)
    caps, rounds = schedule_of(plan, schedule)
    n = matched_rounds(counts, caps, rounds)
    key = "sweep-fedit-" + schedule.replace("/", "").lower()
    return Variant(key, f"FedIT, {n} rounds (FLOPs of DevFT {caps} x {rounds})",
                   _FULL + ("fed.strategy=fedit",) + _FINAL_ONLY + (f"fed.num_rounds={n}",), HOME)


def control_variant(plan: Plan, schedule: str, scope: str) -> Variant:
    """"Final stage only": FedIT for DevFT's last-stage rounds of ``schedule`` at the learning rates
    DevFT's last stage trains with under lr ``scope`` (``run``: the tail of the run-wide decay)."""
    _, rounds = schedule_of(plan, schedule)
    last, total = rounds[-1], sum(rounds)
    window = (f"train.schedule_rounds={total}", f"train.schedule_start={total - last}") if scope == "run" else ()
    key = f"sweep-final-only-{scope}" + ("" if schedule == "L/8" else "-" + schedule.replace("/", "").lower())
    lrs = "the tail of the run-wide decay" if scope == "run" else "one decay over those rounds"
    return Variant(key, f"FedIT, DevFT's last {last} rounds only ({lrs})",
                   _FULL + ("fed.strategy=fedit",) + _FINAL_ONLY + (f"fed.num_rounds={last}",) + window, HOME)


def sweep_plan(scale: str, results: Path, tag: str = "", runs: Path | None = None,
               extra: Sequence[str] = ()) -> Plan:
    """The reproduce :class:`Plan` of a sweep at ``scale`` (shares reproduce's run folders).

    ``extra``: ``KEY=VALUE`` overrides for every cell (another model: ``model.name=gemma3-270m``);
    they change what every cell trains, so they need a ``tag`` (own runs folder and report files).
    """
    if scale not in SCALES:
        raise ReproduceError(f"unknown scale {scale!r}; known: {', '.join(SCALES)}.")
    check_tag(tag, extra)
    s = SCALES[scale]
    return Plan(s, s.base, SCALE_EXTRA.get(scale, ()) + tuple(extra), tag, Path(results),
                Path(runs) if runs else None)


def sweep_cells(plan: Plan, rows: Sequence[Level], seeds: Sequence[int],
                only: Sequence[str] = ()) -> tuple[list[Cell], dict[str, Variant]]:
    """The cells of ``rows`` and their matched FedITs (each variant once), and {schedule: FedIT variant}."""
    fedits = {sched: fedit_variant(plan, sched) for sched in dict.fromkeys(r.schedule for r in rows)}
    controls = [control_variant(plan, r.schedule, r.control) for r in rows if r.control]
    variants = list(dict.fromkeys([r.variant for r in rows] + list(fedits.values()) + controls))
    cells = [Cell(v, s) for v in variants for s in seeds]
    if only:
        known = {c.name for c in cells} | {v.key for v in variants}
        bad = [o for o in only if o not in known]
        if bad:
            raise ReproduceError(f"unknown cell(s) {', '.join(bad)}; known cells: {', '.join(c.name for c in cells)}.")
        cells = [c for c in cells if c.name in only or c.variant.key in only]
    return cells, fedits


# --------------------------------------------------------------------------- the report
def _probe_gaps(summaries: dict[int, dict]) -> list[dict[str, Any]]:
    """Mean over seeds of the probe's sub - full loss gap per (stage, start|end)."""
    by: dict[tuple[int, str], list[dict]] = {}
    for s in summaries.values():
        for r in s.get("stage_probes", []):
            by.setdefault((r["stage"], r["at"]), []).append(r)
    return [{"stage": st, "at": at, "capacity": rs[0]["capacity"], "gap": mean_std([r["gap"] for r in rs]),
             "sub_loss": mean_std([r["sub_loss"] for r in rs]), "full_loss": mean_std([r["full_loss"] for r in rs])}
            for (st, at), rs in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1] != "start"))]


def build_report(plan: Plan, rows: Sequence[Level], fedits: dict[str, Variant], seeds: Sequence[int],
                 command: str) -> dict[str, Any]:
    """The sweep's numbers from whatever cells are finished."""
    from devft_lab.runner.config import config_hash  # optional/heavy: torch (devft_lab.runner.config)
    from devft_lab.runner.run import machine  # optional/heavy: torch (devft_lab.runner.run)

    cells, _ = sweep_cells(plan, rows, seeds)
    fin = collect(plan, cells)
    done = sum(len(f.summaries) for f in fin.values())
    metric, _ = headline([s for f in fin.values() for s in f.summaries.values()])
    out_rows, ctl_rows = [], {}
    for r in rows:
        f, ref = fin[r.variant.key], fin[fedits[r.schedule].key]
        m = row_metrics(f.summaries) if f.summaries else {}
        ctl = control_variant(plan, r.schedule, r.control) if r.control else None
        if ctl is not None:
            fc = fin[ctl.key]
            ctl_rows[ctl.key] = {
                "key": ctl.key, "label": ctl.label, "seeds": sorted(fc.summaries),
                "metric": row_metrics(fc.summaries).get(metric) if fc.summaries else None,
                "gain_over_untrained": paired_items(fc.items, fc.initial_items),
                "gap_vs_fedit": paired_items(fc.items, ref.items)}
        out_rows.append({
            "control": ctl.key if ctl else None,
            "gap_vs_control": paired_items(f.items, fin[ctl.key].items) if ctl else None,
            "gap_vs_center": paired_items(f.items, fin[CENTER.key].items) if CENTER.key in fin else None,
            "factor": r.factor, "level": r.level, "key": r.variant.key, "label": r.variant.label,
            "schedule": r.schedule, "fedit": fedits[r.schedule].key, "seeds": sorted(f.summaries),
            "metric": m.get(metric), "gain_over_untrained": paired_items(f.items, f.initial_items),
            "gap_vs_fedit": paired_items(f.items, ref.items),
            "probe": _probe_gaps(f.summaries), "run_dirs": {s: str(p) for s, p in f.paths.items()}})
        out_rows[-1]["verdict"] = verdict(out_rows[-1]["gap_vs_fedit"]["ci95"])
    fed_rows = [{"key": v.key, "label": v.label, "schedule": sched, "seeds": sorted(fin[v.key].summaries),
                 "metric": row_metrics(fin[v.key].summaries).get(metric) if fin[v.key].summaries else None,
                 "gain_over_untrained": paired_items(fin[v.key].items, fin[v.key].initial_items)}
                for sched, v in fedits.items()]
    data = {"scale": plan.scale.name, "tag": plan.tag, "metric": metric, "command": command, "rows": out_rows,
            "fedit": fed_rows, "controls": list(ctl_rows.values()), "status": "complete" if done == len(cells) else f"partial: {done} of {len(cells)} cells",
            "seeds": list(seeds), "runs": str(plan.root)}
    data["machine"] = machine()
    data["run_machines"] = sorted({m.get("machine", "?") for f in fin.values() for m in f.metas.values()})
    data["config_hashes"] = {c.name: config_hash(plan.config(c)) for c in cells}
    data["compute_dtypes"] = sorted({compute_dtype(m) for f in fin.values() for m in f.metas.values()})
    data["probe_correlation"] = probe_correlation(out_rows)
    data["best"] = best_levels(out_rows)
    return data


# --------------------------------------------------------------------------- what the numbers decide
MIN_CORRELATION_POINTS = 5


def probe_correlation(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Does "the submodel stands in for the model" predict the benefit? Spearman's rank correlation,
    over the levels with probe data, between the first stage's sub − full loss gap at its start and
    DevFT − matched FedIT (``rho`` None with fewer than :data:`MIN_CORRELATION_POINTS` settings:
    a rank correlation of 3 or 4 points says almost nothing)."""
    unique = {r["key"]: r for r in rows}.values()  # the center is a level of every factor: count it once
    pts = [(next(p["gap"]["mean"] for p in r["probe"] if p["at"] == "start"), r["gap_vs_fedit"]["mean"], r["key"])
           for r in unique if r["gap_vs_fedit"].get("mean") is not None
           and any(p["at"] == "start" and p["gap"]["mean"] is not None for p in r["probe"])]
    rho = None
    if len(pts) >= MIN_CORRELATION_POINTS:
        from scipy.stats import spearmanr  # optional/heavy: scipy

        rho = float(spearmanr([a for a, _, _ in pts], [b for _, b, _ in pts]).statistic)
    return {"rho": rho, "n": len(pts), "points": [{"key": k, "probe_gap": a, "gap": b} for a, b, k in pts]}


def best_levels(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per factor with two or more finished levels, the level with the largest DevFT − matched FedIT:
    ``gap`` is each level's pooled gap when all have the same seeds, else the mean of its per-seed
    gaps over the seeds every level has (``seeds``; None when no restriction was needed), and
    ``others`` the other levels' gaps on the same footing."""
    done = [r for r in rows if r["gap_vs_fedit"].get("mean") is not None]
    out = []
    for f in dict.fromkeys(r["factor"] for r in done):
        fr = [r for r in done if r["factor"] == f]
        if len(fr) < 2:
            continue
        score, common = _on_shared_seeds(fr)
        best = max(fr, key=score)
        out.append({"factor": f, "level": best["level"], "gap": score(best), "seeds": common,
                    "others": {r["level"]: score(r) for r in fr if r is not best}})
    return out


def _on_shared_seeds(rows: Sequence[dict[str, Any]]) -> tuple[Callable[[dict], float], list[str] | None]:
    """(gap of a row, the seeds compared): each row's pooled gap when all have the same seeds, else the
    mean of its per-seed gaps over the seeds every row has (None: no such restriction was needed)."""
    per = {id(r): {str(s): v["gap"] for s, v in (r["gap_vs_fedit"].get("per_seed") or {}).items()} for r in rows}
    common = sorted(set.intersection(*map(set, per.values())), key=int) if all(per.values()) else []
    if not common or all(set(p) == set(common) for p in per.values()):
        return (lambda r: r["gap_vs_fedit"]["mean"]), None
    return (lambda r: sum(per[id(r)][s] for s in common) / len(common)), common


def _fmt_ms(ms: dict | None, digits: int = 1) -> str:
    return fmt(ms, digits)


def _probe_cell(probe: list[dict[str, Any]]) -> str:
    """``L_s: start -> end`` of the mean sub - full probe loss gap, stage by stage."""
    by: dict[int, dict[str, Any]] = {}
    for p in probe:
        if p["gap"]["mean"] is not None:
            by.setdefault(p["stage"], {"capacity": p["capacity"]})[p["at"]] = p["gap"]["mean"]
    return "; ".join(f"{v['capacity']}: {v.get('start', float('nan')):+.3f} → {v.get('end', float('nan')):+.3f}"
                     for _, v in sorted(by.items())) or "-"


def to_markdown(d: dict[str, Any]) -> str:
    out = [f"# Where does DevFT help? Sweep at scale {d['scale']}{' (' + d['tag'] + ')' if d['tag'] else ''}", "",
           f"Command: `{d['command']}`", "", f"Status: {d['status']}; runs in `{d['runs']}`.", "",
           f"Machine: {d['machine']}; runs trained on: {'; '.join(d['run_machines']) or '-'}", "",
           f"Metric: final `{d['metric']}` (mean ± sd over seeds). Gains and gaps are in points, paired item by "
           "item within a seed, 95% bootstrap intervals over the evaluation items; the interval column says where "
           "that of DevFT − matched FedIT lies against zero.", ""]
    if len(d.get("compute_dtypes", [])) > 1:
        out += [f"Compute dtypes (chosen per machine by the device probe; each run's meta.json says which): "
                f"{', '.join(d['compute_dtypes'])}.", ""]
    body = [[r["factor"], r["level"], r["key"], ", ".join(map(str, r["seeds"])) or "-", _fmt_ms(r["metric"]),
             fmt_ci(r["gain_over_untrained"]), fmt_ci(r["gap_vs_fedit"]), verdict(r["gap_vs_fedit"]["ci95"]),
             r["fedit"], _probe_cell(r["probe"])] for r in d["rows"]]
    out += markdown_table(["factor", "level", "cell", "seeds", d["metric"], "gain over untrained",
                           "DevFT - matched FedIT", "interval", "matched FedIT",
                           "probe loss gap sub - full (layers: stage start → end)"], body)
    out += ["", "Matched FedIT (same total client FLOPs as the DevFT schedule):", ""]
    out += markdown_table(["cell", "what", "seeds", d["metric"], "gain over untrained"],
                          [[f["key"], f["label"], ", ".join(map(str, f["seeds"])) or "-", _fmt_ms(f["metric"]),
                            fmt_ci(f["gain_over_untrained"])] for f in d["fedit"]])
    ctl = [r for r in d["rows"] if r.get("control")]
    if ctl:
        out += ["", "What the fused stages add: DevFT against FedIT trained for DevFT's last-stage rounds only, at "
                "DevFT's last-stage learning rates (the control), paired item by item:", ""]
        out += markdown_table(["factor", "level", "cell", d["metric"], "DevFT - final stage only", "control",
                               "this level - the center"],
                              [[r["factor"], r["level"], r["key"], _fmt_ms(r["metric"]), fmt_ci(r["gap_vs_control"]),
                                r["control"], fmt_ci(r.get("gap_vs_center") or {}) if r["key"] != CENTER.key else "-"]
                               for r in ctl])
        out += ["", "The controls:", ""]
        out += markdown_table(["cell", "what", "seeds", d["metric"], "gain over untrained", "control - matched FedIT"],
                              [[c["key"], c["label"], ", ".join(map(str, c["seeds"])) or "-", _fmt_ms(c["metric"]),
                                fmt_ci(c["gain_over_untrained"]), fmt_ci(c["gap_vs_fedit"])]
                               for c in d.get("controls", [])])
    best = d.get("best") or []
    if best:
        out += ["", "Best level per factor (DevFT − matched FedIT, points; levels with different seeds are compared "
                "on the seeds they all have):", ""]
        out += markdown_table(["factor", "best level", "gap", "other levels", "seeds compared"],
                              [[b["factor"], b["level"], f"{b['gap']:+.1f}",
                                ", ".join(f"{k} {v:+.1f}" for k, v in b["others"].items()),
                                ", ".join(b["seeds"]) if b["seeds"] else "all"] for b in best])
    c = d.get("probe_correlation") or {}
    if c.get("rho") is not None:
        out += ["", f"Spearman's rho, stage 1's sub − full probe loss gap at its start against DevFT − matched "
                f"FedIT, over {c['n']} DevFT settings: {c['rho']:+.2f}."]
    out += ["", f"![gaps]({Path(d.get('png', 'sweep.png')).name})", ""]
    w = d.get("written_reading")
    out += ["## Reading", "", f"Written by hand in [{w['path']}]({w['link']}); regenerating the report leaves it as "
            "it is." if w else "No written reading yet.", ""]
    return "\n".join(out) + "\n"


def plot(d: dict[str, Any], path: Path) -> None:
    """Heatmap: one row per level (grouped by factor), colour = DevFT - matched FedIT, text = gap [CI]."""
    import matplotlib  # optional/heavy: matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional/heavy: matplotlib
    import numpy as np  # optional/heavy: numpy

    rows = d["rows"]
    vals = np.array([[r["gap_vs_fedit"]["mean"] if r["gap_vs_fedit"]["mean"] is not None else np.nan] for r in rows])
    lim = float(np.nanmax(np.abs(vals))) if np.isfinite(vals).any() else 1.0
    fig, ax = plt.subplots(figsize=(5.2, 0.42 * len(rows) + 1.4))
    ax.imshow(np.ma.masked_invalid(vals), cmap="RdBu", vmin=-lim or -1, vmax=lim or 1, aspect="auto")
    for i, r in enumerate(rows):
        dark = np.isfinite(vals[i, 0]) and abs(vals[i, 0]) > 0.6 * lim
        ax.text(0, i, fmt_ci(r["gap_vs_fedit"]), ha="center", va="center", fontsize=8,
                color="white" if dark else "black")
    ax.set_yticks(range(len(rows)), [f"{r['factor']}: {r['level']}" for r in rows], fontsize=8)
    ax.set_xticks([0], [f"DevFT - matched FedIT ({d['metric']}, points)"], fontsize=8)
    for i in range(1, len(rows)):
        if rows[i]["factor"] != rows[i - 1]["factor"]:
            ax.axhline(i - 0.5, color="k", lw=1)
    ax.set_title(f"sweep, scale {d['scale']}: {d['status']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def output_path(plan: Plan, ext: str) -> Path:
    return plan.results / f"sweep_{plan.scale.name}{'-' + plan.tag if plan.tag else ''}.{ext}"


def write_report(plan: Plan, rows: Sequence[Level], fedits: dict[str, Variant], seeds: Sequence[int],
                 command: str) -> tuple[Path, Path, Path]:
    d = build_report(plan, rows, fedits, seeds, command)
    js, md, png = (output_path(plan, e) for e in ("json", "md", "png"))
    d["png"] = str(png)
    written = plan.results / "readings" / md.name  # a person's reading: linked, never written here
    if written.exists():
        d["written_reading"] = {"path": str(written), "link": written.relative_to(md.parent).as_posix()}
    js.parent.mkdir(parents=True, exist_ok=True)
    js.write_text(json.dumps(d, indent=1, default=str) + "\n", encoding="utf-8")
    md.write_text(to_markdown(d), encoding="utf-8")
    plot(d, png)
    return js, md, png


# --------------------------------------------------------------------------- command line
def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", default="lab", choices=list(SCALES), help="smoke (tiny, tests), lab (SmolLM2-135M)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per cell (default 3)")
    p.add_argument("--factors", nargs="+", default=list(FACTORS), metavar="FACTOR",
                   help=f"which factors to sweep (default all: {' '.join(FACTORS)})")
    p.add_argument("--only", nargs="+", default=(), metavar="CELL", help="only these cells or variants")
    p.add_argument("--max-cells", type=int, default=None, metavar="K", help="train at most K new cells this sitting")
    p.add_argument("--dry-run", action="store_true", help="list the cells and their status; train nothing")
    p.add_argument("--set", nargs="+", default=(), metavar="KEY=VALUE", dest="extra",
                   help="overrides for every cell (e.g. model.name=gemma3-270m); needs --tag")
    p.add_argument("--tag", default="", help="name for a non-default setup (its own runs folder and files)")
    p.add_argument("--results", default="results", help="where the sweep files (and repro/ runs) go")
    p.add_argument("--runs", default=None, help="runs folder (default RESULTS/repro/SCALE[-TAG])")
    p.add_argument("--in-process", action="store_true", help="train cells in this process")
    p.add_argument("--rerun-stale", action="store_true", help="retrain cells whose folder holds another config")
    p.add_argument("--quiet", action="store_true", help="no progress bars from the runs")


def add_sweep_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("sweep", help="DevFT's open choices vs FLOP-matched FedIT (resumable)",
                              description=__doc__.split("\n\n")[0])
    _arguments(p)
    p.set_defaults(func=run_args)
    return p


def run_args(args, argv: Sequence[str] | None = None, echo: Callable[[str], None] = print) -> int:
    """Run a parsed ``sweep`` command: the cells (resumable, locked), then the report."""
    rows = levels(args.factors)
    if args.max_cells is not None and args.max_cells < 0:
        raise ReproduceError(f"--max-cells {args.max_cells}: give K >= 0.")
    plan = sweep_plan(args.scale, Path(args.results), args.tag, args.runs, args.extra)
    seeds = seeds_of(plan, args.seeds)
    cells, fedits = sweep_cells(plan, rows, seeds, args.only)
    command = table_command(list(argv if argv is not None else sys.argv[2:])).replace("reproduce", "sweep", 1)
    if args.dry_run:
        for c in cells:
            echo(f"{c.name:34s} {cell_status(plan, c):8s} {plan.cell_dir(c)}")
        for sched, v in fedits.items():
            echo(f"matched FedIT for stage 1 at {sched}: {v.key} ({v.label})")
        echo(f"{len(cells)} cells, {sum(cell_status(plan, c) != 'done' for c in cells)} to train; runs in {plan.root}")
        return 0
    failed = train_cells(plan, cells, args, echo)
    js, md, png = write_report(plan, rows, fedits, seeds, command)
    echo(f"sweep: {json.loads(js.read_text())['status']} -> {js}, {md}, {png}")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m devft_lab.experiments.sweep [options]`` (same as ``devft-lab sweep``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="devft-lab sweep", description=__doc__.split("\n\n")[0])
    _arguments(p)
    args = p.parse_args(argv)
    try:
        return run_args(args, argv)
    except ValueError as e:  # ReproduceError and ConfigError
        print(f"devft-lab sweep: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
