"""Building a table from the finished cells and writing ``table_<name>.json`` / ``.md``.

What the generator writes is decided by the numbers alone: the tables, and per comparison a verdict
read from its 95% interval (:func:`verdict`). Readings in words are written by a person in
``results/readings/<table file>.md``; the table links to its reading and never writes it."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

from devft_lab.core.tables import markdown_table
from devft_lab.experiments.reproduce.cells import (Cell, PAPER_ABLATION, PAPER_COLUMNS,
                                                   PAPER_COLUMN_OF_BASE, PAPER_COMPAT, PAPER_EFFICIENCY,
                                                   PAPER_GROWTH, PAPER_MAIN, Plan, ROW_LABELS, TABLES, V,
                                                   cells_of)
from devft_lab.experiments.reproduce.stats import (Finished, _wall, collect, efficiency, fmt, fmt_ci, headline,
                                                   paired, paired_items, ratio, row_metrics)

# What a row without a finished cell says (its cells are listed by the reproduce command).
NOT_RUN = "not run yet"
# The row each table's item-paired gaps are taken against.
REFERENCE = {"main": "fedit", "efficiency": "fedit", "ablation": "devft", "growth": "devft", "compat": "fedsa-lora"}


# --------------------------------------------------------------------------- verdicts
def verdict(ci95: Sequence[float] | None) -> str:
    """Where a 95% interval of a gap a − b lies: ``above`` or ``below`` zero when it excludes zero,
    ``within`` when it contains zero, ``-`` without an interval."""
    if not ci95:
        return "-"
    lo, hi = ci95
    return "above" if lo > 0 else "below" if hi < 0 else "within"


def paper_direction(v: str, paper: dict[str, float | None]) -> str:
    """``same`` / ``opposite``: whether a verdict that excludes zero has the sign of the paper's a − b
    (every published value of it has one sign); ``-`` when the interval contains zero or the paper has
    no value."""
    signs = {x > 0 for x in paper.values() if x}
    if v not in ("above", "below") or len(signs) != 1:
        return "-"
    return "same" if (v == "above") == signs.pop() else "opposite"


def comparisons(table: str) -> list[tuple[str, str, dict[str, float | None]]]:
    """The gaps a − b each table judges (positive: a better), with the paper's a − b by model.

    main: DevFT against every method with a published score (the paper's differences of its
    table); ablation and growth: DevFT minus each variant (the paper's drop, in %); compat:
    FedSA-LoRA + DevFT minus FedSA-LoRA (the paper's gain, in %); efficiency: DevFT against each
    method, accuracy only (the paper's efficiency numbers are times and bytes, not scores)."""
    if table == "main":
        dev = PAPER_MAIN["devft"]
        return [("devft", k, {c: round(dev[c] - PAPER_MAIN[k][c], 2) for c in PAPER_COLUMNS})
                for k in TABLES["main"] if k != "devft" and k in PAPER_MAIN]
    if table == "ablation":
        return [("devft", k, {"LLaMA3.1-8B drop %": PAPER_ABLATION.get(k)}) for k in TABLES["ablation"][1:]]
    if table == "growth":
        return [("devft", k, {"LLaMA2-13B drop %": PAPER_GROWTH["drop_pct_x4_x8_vs_x2"]}) for k in TABLES["growth"][1:]]
    if table == "compat":
        return [("fedsa-lora-devft", "fedsa-lora", {"LLaMA2-7B gain %": PAPER_COMPAT["score_gain_pct"]})]
    if table == "efficiency":
        return [("devft", k, {}) for k in TABLES["efficiency"] if k != "devft"]
    return []


def verdicts(table: str, fin: dict[str, Finished], metric: str, higher: bool) -> list[dict[str, Any]]:
    """One entry per :func:`comparisons` gap: paired by seed (``by_seed``, mean ± std of the per-seed
    differences of the headline metric, signed so that positive is better), paired item by item
    (``by_item``, accuracy points with a 95% interval; the rows hold its per-seed gaps), the
    :func:`verdict` of that interval and whether it has the paper's direction."""
    out = []
    for a, b, paper in comparisons(table):
        fa, fb = fin.get(a, Finished()), fin.get(b, Finished())
        g = paired(fa.summaries, fb.summaries, metric)
        if g["mean"] is not None and not higher:  # lower is better: express as an improvement
            g = {**g, "mean": -g["mean"]}
        items = {k: v for k, v in paired_items(fa.items, fb.items).items() if k != "per_seed"}
        v = verdict(items["ci95"])
        label = f"{ROW_LABELS.get((table, a), V[a].label)} − {V[b].label}"
        out.append({"a": a, "b": b, "label": label, "by_seed": g, "by_item": items,
                    "verdict": v, "paper": paper, "paper_direction": paper_direction(v, paper)})
    return out


# --------------------------------------------------------------------------- building a table
def _capacities(plan: Plan, key: str, f: Finished) -> list[int] | None:
    """Layers per stage of a variant's finished runs (one stage, the full model, without DevFT/ProgFed)."""
    caps = next((s["capacities"] for s in f.summaries.values() if s.get("capacities")), None)
    if caps and not plan.config(Cell(V[key], next(iter(f.summaries)))).devft.enabled:
        return caps[-1:]
    return caps


def compute_dtype(meta: dict[str, Any]) -> str:
    """The dtype a run computed in (``meta.json``'s probe choice; "?" for runs older than the probe)."""
    d = meta.get("compute_dtype")
    return (d.get("dtype") if isinstance(d, dict) else d) or "?"


def dtype_mix(rows: Sequence[dict[str, Any]]) -> str:
    """"FedIT bfloat16 (42, 43), float32 (44); ..." when the table's cells ran in more than one
    dtype, else "" (a single dtype needs no remark)."""
    if len({d for r in rows for d in r.get("compute_dtypes", {}).values()}) < 2:
        return ""
    parts = []
    for r in rows:
        by: dict[str, list[str]] = {}
        for seed, d in r.get("compute_dtypes", {}).items():
            by.setdefault(d, []).append(seed)
        if by:
            parts.append(f"{r['method']} " + ", ".join(f"{d} ({', '.join(s)})" for d, s in sorted(by.items())))
    return "; ".join(parts)


def build_table(plan: Plan, table: str, seeds: Sequence[int], command: str) -> dict[str, Any]:
    """The JSON of one table from the finished cells."""
    from devft_lab.runner.config import config_hash  # optional/heavy: torch (devft_lab.runner.config)
    from devft_lab.runner.run import machine  # optional/heavy: torch (devft_lab.runner.run)

    cells = cells_of([table], seeds)
    fin = collect(plan, cells)
    done = sum(len(f.summaries) for f in fin.values())
    metric, higher = headline(s for f in fin.values() for s in f.summaries.values())
    column = PAPER_COLUMN_OF_BASE.get(plan.base)
    rows = []
    for key in TABLES[table]:
        f = fin[key]
        row: dict[str, Any] = {
            "key": key, "method": ROW_LABELS.get((table, key), V[key].label), "overrides": list(V[key].overrides),
            "metrics": row_metrics(f.summaries) if f.summaries else {},
            "seeds": sorted(f.summaries), "cells": f"{len(f.summaries)} of {len(seeds)}",
            "capacities": _capacities(plan, key, f),
            "config_hashes": {c.name: config_hash(plan.config(c)) for c in cells if c.variant.key == key},
            "run_dirs": {str(s): str(p) for s, p in f.paths.items()},
            "compute_dtypes": {str(s): compute_dtype(m) for s, m in sorted(f.metas.items())},
            "gain_items": paired_items(f.items, f.initial_items),  # trained - untrained, same items
        }
        if not f.summaries:
            row["status"] = NOT_RUN
        ref = REFERENCE[table]
        if key != ref:
            row["vs_ref_items"] = {"ref": ref, **paired_items(f.items, fin[ref].items)}
        if table == "main":
            row["paper"] = PAPER_MAIN.get(key, {})
        elif table == "ablation" and key != "devft":
            row["vs_devft"] = paired(fin["devft"].summaries, f.summaries, metric)
            row["paper"] = {"drop_pct_llama31_8b": PAPER_ABLATION.get(key)}
        elif table == "growth" and key != "devft":
            row["vs_x2"] = paired(fin["devft"].summaries, f.summaries, metric)
        rows.append(row)
    paper: dict[str, Any] = {"main": {"columns": list(PAPER_COLUMNS), "closed_ended_avg": PAPER_MAIN},
                             "efficiency": PAPER_EFFICIENCY, "ablation": {"drop_pct_llama31_8b": PAPER_ABLATION},
                             "compat": {"llama2_7b": PAPER_COMPAT}, "growth": PAPER_GROWTH}[table]
    extra: dict[str, Any] = {}
    if table == "efficiency":
        extra = efficiency(fin, metric, higher)
    elif table == "compat":
        a, b = fin["fedsa-lora-devft"].summaries, fin["fedsa-lora"].summaries
        extra = {"gain": paired(a, b, metric), "time_x_less": ratio(a, b, _wall),
                 "flops_x_less": ratio(a, b, lambda s: s.get("flops_estimate")),
                 "paper_bytes_x_less": ratio(a, b, lambda s: s.get("paper_bytes")),
                 "full_bytes_x_less": ratio(a, b, lambda s: s.get("full_bytes"))}
    elif table == "main":
        extra = {"devft_minus_fedit": paired(fin["devft"].summaries, fin["fedit"].summaries, metric),
                 "devft_minus_fedit_items": paired_items(fin["devft"].items, fin["fedit"].items)}
    total = len(cells)
    machines = sorted({m.get("machine", "?") for f in fin.values() for m in f.metas.values()})
    return {
        "table": table, "scale": plan.scale.name, "base_config": plan.base, "extra_overrides": list(plan.extra),
        "status": "complete" if done == total else f"partial: {done} of {total} cells",
        "cells_done": done, "cells_total": total, "metric": metric, "higher_is_better": higher,
        "paper_column": column, "rows": rows, **extra, "paper": paper,
        "verdicts": verdicts(table, fin, metric, higher),
        "command": command, "machine": machine(), "run_machines": machines, "scale_note": plan.scale.note,
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _signed(ms: dict[str, Any], digits: int) -> str:
    """``+1.23 ± 0.45`` (a signed gap and its spread over seeds), ``-`` without one."""
    return "-" if ms.get("mean") is None else f"{ms['mean']:+.{digits}f}" + (
        f" ± {ms['std']:.{digits}f}" if ms.get("std") is not None else "")


def to_markdown(t: dict[str, Any]) -> str:
    """The Markdown twin of a table's JSON."""
    m, unit = t["metric"], ("score, %" if t["metric"] == "acc" else "lower is better")
    out = [f"# Table: {t['table']} ({t['scale']} scale)", "",
           f"**Status: {t['status']}.** Metric: final `{m}` ({unit}), mean ± sample std over finished seeds.", "",
           f"Command: `{t['command']}`  ", f"Base config: `{t['base_config']}` {t['extra_overrides'] or ''} "
           f"({t['scale_note']})  ", f"Machine: {t['machine']}  "]
    if t["run_machines"]:
        out.append(f"Runs trained on: {'; '.join(t['run_machines'])}  ")
    mixed = dtype_mix(t["rows"])
    if mixed:
        out.append(f"Compute dtype (chosen per cell by the device probe): {mixed}")
    out.append("")
    if any(r.get("gain_items", {}).get("mean") is not None for r in t["rows"]):
        out += ["Gaps in brackets are paired item by item within each seed (same evaluation items), "
                "pooled over the seeds both rows have, with a 95% paired-bootstrap interval (items resampled "
                "within task); they measure evaluation noise given the trained runs, while ± is the spread "
                "over training seeds.", ""]
    suites = sorted({k for r in t["rows"] for k in r["metrics"] if k.startswith("acc_")})
    suites = suites if len(suites) > 1 else []  # one suite: its column is the final score again
    if t["table"] != "efficiency":
        ref = V[REFERENCE[t["table"]]].label
        nll = any("answer_nll" in r["metrics"] for r in t["rows"])
        cols = ["method", "stage layers", f"final {m}", "gain over untrained [95% CI]", f"− {ref} [95% CI]",
                *(["answer_nll"] if nll else []), *suites, f"initial {m}", "train+agg s", "LoRA uplink MB",
                "full MB", "seeds", "cells"]
        paper_cols = (list(PAPER_COLUMNS) if t["table"] == "main" and not t["paper_column"]
                      else [t["paper_column"]] if t["table"] == "main" else [])
        head = cols + [f"paper {c}" for c in paper_cols]
        if t["table"] in ("ablation", "growth"):
            pts = " (points)" if m == "acc" else ""
            head.insert(3, f"drop vs DevFT x2{pts}" if t["table"] == "growth" else f"drop vs DevFT{pts}")
            if t["table"] == "ablation":
                head.insert(4, "paper drop %")
        body = []
        for r in t["rows"]:
            if r.get("status") == NOT_RUN:
                cells = [r["method"], "-", NOT_RUN] + ["-"] * (len(head) - 5 - len(paper_cols)) + ["-", r["cells"]]
            else:
                x = r["metrics"]
                caps = "→".join(map(str, r["capacities"])) if r.get("capacities") else "-"
                cells = [r["method"], caps, fmt(x.get(m), 3 if m == "eval_loss" else 2), fmt_ci(r.get("gain_items")),
                         fmt_ci(r.get("vs_ref_items")) if "vs_ref_items" in r else "(reference)",
                         *([fmt(x.get("answer_nll"), 3)] if nll else []), *[fmt(x.get(s)) for s in suites], fmt(x.get(f"initial_{m}"), 3 if m == "eval_loss" else 2),
                         fmt(x.get("train_s"), 1), fmt(x.get("paper_bytes"), 2, 1e6), fmt(x.get("full_bytes"), 2, 1e6),
                         ", ".join(map(str, r["seeds"])) or "-", r["cells"]]
                if t["table"] in ("ablation", "growth"):
                    d = r.get("vs_devft") or r.get("vs_x2")
                    d = {**d, "mean": -d["mean"]} if d and d.get("mean") is not None and not t["higher_is_better"] else d
                    cells.insert(3, fmt(d, 3 if m == "eval_loss" else 2) if d else "(reference)")
                    if t["table"] == "ablation":
                        p = (r.get("paper") or {}).get("drop_pct_llama31_8b")
                        cells.insert(4, f"{p:.2f}" if p is not None else "-")
            cells += [f"{r['paper'][c]:.2f}" if c in r.get("paper", {}) else "-" for c in paper_cols]
            body.append(cells)
        out += markdown_table(head, body)
    else:
        out += [f"Target: {t['target']['definition']} = {fmt(t['target'])}.", ""]
        body = []
        for r in t["rows"]:
            if r.get("status") == NOT_RUN:
                body.append([r["method"], NOT_RUN] + ["-"] * 6 + [r["cells"]])
                continue
            e = t["to_target"].get(r["key"], {})
            body.append([r["method"], e.get("reached", "-"), fmt(e.get("time_s"), 1),
                         fmt(e.get("paper_bytes"), 2, 1e6), fmt(e.get("full_bytes"), 2, 1e6),
                         fmt(e.get("time_s_x_less_than_fedit")), fmt(e.get("paper_bytes_x_less_than_fedit")),
                         ", ".join(map(str, r["seeds"])) or "-", r["cells"]])
        out += markdown_table(["method", "reached", "time to target s", "LoRA uplink MB to target",
                               "full MB to target", "time x less than FedIT", "uplink x less than FedIT", "seeds",
                               "cells"], body)
        rr = t["rounds"]
        out += ["", "Per-round cost (mean over a stage's rounds, then over seeds):", ""]
        body = []
        for label, key in (("DevFT first stage", "devft_first_stage"), ("DevFT last stage", "devft_last_stage"),
                           ("full model (FedIT)", "full_model")):
            q = rr.get(key, {})
            xs = [fmt(q.get(f"{k}_x_less_than_full")) if key != "full_model" else "1"
                  for k in ("time_s", "paper_bytes", "full_bytes", "flops")]
            body.append([label, q.get("capacity", "all"), fmt(q.get("time_s"), 3), fmt(q.get("paper_bytes"), 1, 1e3),
                         fmt(q.get("full_bytes"), 1, 1e3), fmt(q.get("flops"), 2, 1e9),
                         fmt(q.get("peak_rss_mb"), 0), fmt(q.get("cuda_peak_mb"), 0), *xs])
        out += markdown_table(["round", "layers", "time s", "LoRA uplink KB", "full KB", "GFLOP", "peak RSS MB",
                               "CUDA peak MB", "time x less", "uplink x less", "full x less", "FLOP x less"], body)
        pe = PAPER_EFFICIENCY
        out += ["", f"Paper: convergence time LLaMA2-7B DevFT {pe['time_to_convergence_h_llama2_7b']['devft']} h vs "
                f"C2A {pe['time_to_convergence_h_llama2_7b']['c2a']} h; communication LLaMA2-13B "
                f"{pe['communication_gb_llama2_13b']['devft']} GB vs C2A {pe['communication_gb_llama2_13b']['c2a']} GB; "
                "first-stage round 10.3x less time, 4x less communication, 4x less memory; final stage 1.44x faster."]
    if t["table"] == "main" and not t["paper_column"]:
        out += ["", "Paper columns are the published LLaMA results (closed-ended average of TruthfulQA, MMLU, "
                "IFEval, BBH); the lab score is the lab benchmark's suite average on a 135M model — compare "
                "directions and gaps, not levels."]
    if t["table"] == "compat":
        pc = PAPER_COMPAT
        out += ["", "FedSA-LoRA over FedSA-LoRA + DevFT, per seed (x > 1: DevFT's is smaller):", ""]
        out += markdown_table(["ratio", "lab", "paper (LLaMA2-7B)"], [
            ["train+agg time", fmt(t.get("time_x_less")), f"{pc['time_x_less']}"],
            ["client FLOPs", fmt(t.get("flops_x_less")), "-"],
            ["LoRA uplink", fmt(t.get("paper_bytes_x_less")), f"{pc['comm_x_less']}"]])
    if t["table"] == "efficiency":
        none = t["target"].get("no_target_seeds") or []
        if none:
            out += ["", f"Seeds without a target (FedIT ended at or beyond the untrained model's {m}): "
                    f"{', '.join(map(str, none))}."]
        out += ["", "DevFT over each method on the seeds where both reached the target (x > 1: DevFT needed less):", ""]
        out += markdown_table(["method", "time x less", "LoRA uplink x less", "seeds"],
                              [[V[k].label, fmt(v["time_s"]), fmt(v["paper_bytes"]), v["time_s"]["n"]]
                               for k, v in t.get("devft_vs", {}).items()])
    if t["table"] == "efficiency" and t.get("whole_run_vs_devft"):
        pe = PAPER_EFFICIENCY
        out += ["", "Whole runs (every method 10 rounds): each method's total over DevFT's, per seed (x > 1: DevFT "
                "needed less). The paper's headline ratios are of this kind, DevFT against C2A: "
                f"{pe['time_to_convergence_h_llama2_7b']['speedup']}x less time to convergence (LLaMA2-7B) and "
                f"{pe['communication_gb_llama2_13b']['reduction']}x less communication (LLaMA2-13B). Wall time on a "
                "shared CPU mixes method and machine load; client FLOPs and bytes do not.", ""]
        out += markdown_table(["method", "train+agg time x", "client FLOPs x", "LoRA uplink x", "full traffic x", "seeds"],
                              [[V[k].label, fmt(v["time_s"]), fmt(v["flops"]), fmt(v["paper_bytes"]),
                                fmt(v["full_bytes"]), v["flops"]["n"]] for k, v in t["whole_run_vs_devft"].items()])
    if t.get("verdicts"):
        out += ["", "## Verdicts (computed from the numbers above)", "",
                "a − b, positive: a is better. By seed: mean ± std of the per-seed differences of the final "
                f"`{m}`. By item: paired item by item, points, 95% interval. Interval: where that interval lies "
                "against zero. Paper's direction: whether an interval that excludes zero has the sign of the "
                "paper's a − b.", ""]
        digits = 3 if m == "eval_loss" else 2
        out += markdown_table(["a − b", "by seed", "by item [95% CI]", "interval", "paper a − b", "paper's direction"],
                              [[v["label"], _signed(v["by_seed"], digits), fmt_ci(v["by_item"]), v["verdict"],
                                ", ".join(f"{x:+.2f} ({c})" for c, x in v["paper"].items() if x is not None) or "-",
                                v["paper_direction"]] for v in t["verdicts"]])
    out += [""]
    if t["status"] != "complete":
        out += [f"These numbers come from {t['status']}; finish the rest with the command above.", ""]
    w = t.get("written_reading")
    out += ["## Reading", "", f"Written by hand in [{w['path']}]({w['link']}); regenerating the table leaves it as it is."
            if w else "No written reading yet.", ""]
    out += ["Config hashes (devft_lab.runner.config.config_hash) per cell:", ""]
    for r in t["rows"]:
        for c, h in r.get("config_hashes", {}).items():
            out.append(f"- `{c}`: `{h}`")
    return "\n".join(out) + "\n"


def written_reading_path(plan: Plan, table: str) -> Path:
    """``RESULTS/readings/<table file name>.md``: the reading a person writes; the table links to it."""
    return plan.results / "readings" / plan.table_path(table, "md").name


def write_table(plan: Plan, table: str, seeds: Sequence[int], command: str) -> tuple[Path, Path]:
    data = build_table(plan, table, seeds, command)
    js, md = plan.table_path(table, "json"), plan.table_path(table, "md")
    written = written_reading_path(plan, table)
    if written.exists():
        data["written_reading"] = {"path": str(written), "link": written.relative_to(md.parent).as_posix()}
    js.parent.mkdir(parents=True, exist_ok=True)
    js.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    md.write_text(to_markdown(data), encoding="utf-8")
    return js, md
