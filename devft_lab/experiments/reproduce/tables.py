"""Building a table from the finished cells and writing ``table_<name>.json`` / ``.md``."""
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
from devft_lab.experiments.reproduce.readings import reading
from devft_lab.experiments.reproduce.stats import (Finished, _wall, collect, efficiency, fmt, fmt_ci, headline,
                                                   paired, paired_items, ratio, row_metrics)

# What a row without a finished cell says (its cells are listed by the reproduce command).
NOT_RUN = "not run yet"
# The row each table's item-paired gaps are taken against.
REFERENCE = {"main": "fedit", "efficiency": "fedit", "ablation": "devft", "growth": "devft", "compat": "fedsa-lora"}


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
    from devft_lab.runner.config import config_hash
    from devft_lab.runner.run import machine

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
        "reading": reading(table, fin, metric, higher, extra),
        "command": command, "machine": machine(), "run_machines": machines, "scale_note": plan.scale.note,
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


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
    out += ["", "## Reading (generated from the numbers above)", "", t["reading"] or "No finished cells yet.", ""]
    if t["status"] != "complete":
        out += [f"These numbers come from {t['status']}; finish the rest with the command above.", ""]
    if t.get("written_reading"):
        w = t["written_reading"]
        out += [f"## Reading (written; `{w['path']}`, kept when the table is regenerated)", "", w["text"], ""]
    out += ["Config hashes (devft_lab.runner.config.config_hash) per cell:", ""]
    for r in t["rows"]:
        for c, h in r.get("config_hashes", {}).items():
            out.append(f"- `{c}`: `{h}`")
    return "\n".join(out) + "\n"


def written_reading_path(plan: Plan, table: str) -> Path:
    """``RESULTS/readings/<table file name>.md``: a reading written by a person, kept across regenerations
    (the generated reading states the numbers; this one says why they may be so)."""
    return plan.results / "readings" / plan.table_path(table, "md").name


def write_table(plan: Plan, table: str, seeds: Sequence[int], command: str) -> tuple[Path, Path]:
    data = build_table(plan, table, seeds, command)
    js, md = plan.table_path(table, "json"), plan.table_path(table, "md")
    written = written_reading_path(plan, table)
    if written.exists():
        data["written_reading"] = {"path": str(written), "text": written.read_text(encoding="utf-8").strip()}
    js.parent.mkdir(parents=True, exist_ok=True)
    js.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    md.write_text(to_markdown(data), encoding="utf-8")
    return js, md


