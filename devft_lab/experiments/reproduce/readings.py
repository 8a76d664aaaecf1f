"""The generated "Reading" paragraphs: signs, spreads and ratios said in words (nothing hand-written)."""
from __future__ import annotations

from typing import Any

from devft_lab.experiments.reproduce.cells import PAPER_ABLATION, PAPER_COMPAT, PAPER_GROWTH, TABLES, V
from devft_lab.experiments.reproduce.stats import Finished, _wall, fmt, fmt_ci, paired, paired_items, ratio, row_metrics


# --------------------------------------------------------------------------- readings (generated)
def _sign(ms: dict[str, Any], unit: str = " points", digits: int = 2) -> str:
    if ms.get("mean") is None:
        return "not computable yet (no seed finished for both)"
    m, sd, n = ms["mean"], ms["std"], ms["n"]
    spread = (f", std {sd:.{digits}f} over {n} seeds" if sd is not None else ", one seed (no spread)")
    settled = ("" if sd is None else " — the spread is larger than the gap, so the sign is not settled"
               if abs(m) <= sd else " — larger than its spread")
    return f"{m:+.{digits}f}{unit}{spread}{settled}"


def _direction(gap: dict[str, Any], paper_positive: bool = True) -> str:
    if gap.get("mean") is None:
        return "cannot be compared yet"
    if gap["mean"] == 0:
        return "shows no difference (the paper reports one)"
    return "has the paper's direction" if (gap["mean"] > 0) == paper_positive else "is opposite to the paper's"


def reading(table: str, fin: dict[str, Finished], metric: str, higher: bool, extra: dict[str, Any]) -> str:
    """A factual paragraph from the numbers: gaps with their spread, and the paper's direction."""
    better = 1 if higher else -1
    name = "score" if metric == "acc" else metric
    lines: list[str] = []
    unit, digits = (" points", 2) if metric == "acc" else ("", 3)

    def sign(g: dict[str, Any]) -> str:
        return _sign(g, unit, digits)

    def rel(g: dict[str, Any], ref: str) -> str:
        """The gap as a percentage of the reference's mean score (accuracy only)."""
        base = row_metrics(fin[ref].summaries).get(metric, {}).get("mean") if fin.get(ref, Finished()).summaries else None
        if metric != "acc" or g.get("mean") is None or not base:
            return ""
        return f" ({100 * g['mean'] / base:+.1f}% of {V[ref].label}'s score)"

    def gap(a: str, b: str) -> dict[str, Any]:
        g = paired(fin.get(a, Finished()).summaries, fin.get(b, Finished()).summaries, metric)
        if g["mean"] is not None and not higher:  # express as improvement: positive = better
            g = {**g, "mean": -g["mean"]}
        return g

    def items(a: str, b: str) -> str:
        """The gap paired item by item, pooled over seeds, and whether its 95% interval excludes 0."""
        g = paired_items(fin.get(a, Finished()).items, fin.get(b, Finished()).items)
        if g["mean"] is None:
            return ""
        lo, hi = g["ci95"]
        verdict = ("the interval excludes zero" if lo > 0 or hi < 0 else "the interval includes zero")
        return (f" Paired item by item over seeds {', '.join(map(str, g['seeds']))}: {fmt_ci(g)} points "
                f"(95%, half-width {g['half_width']:.1f}); {verdict}.")

    if table == "main":
        g = gap("devft", "fedit")
        lines.append(f"DevFT − FedIT ({'improvement in ' + name}, paired by seed): {sign(g)}{rel(g, 'fedit')}. "
                     f"The paper reports +2.06 (LLaMA2-7B), +8.90 (LLaMA3.1-8B), +4.19 (LLaMA2-13B); "
                     f"this lab gap {_direction(g)}.{items('devft', 'fedit')}")
        means = {k: row_metrics(f.summaries).get(metric, {}).get("mean") for k, f in fin.items() if f.summaries}
        order = [k for k, _ in sorted(((k, v) for k, v in means.items() if v is not None),
                                      key=lambda kv: better * kv[1])]
        if len(order) > 1:
            paper_order = [k for k in ("fedit", "progfed", "fedsa-lora", "devft") if k in order]
            same = "the same as" if order == paper_order else "different from"
            lines.append(f"Lab order, worst to best by mean: {' < '.join(V[k].label for k in order)}; "
                         f"{same} the paper's order ({' < '.join(V[k].label for k in paper_order)}).")
        for k in ("progfed", "fedsa-lora"):
            g2 = gap("devft", k)
            if g2["mean"] is not None:
                lines.append(f"DevFT − {V[k].label}: {sign(g2)}.{items('devft', k)}")
    elif table == "ablation":
        drops = {}
        for k in TABLES["ablation"][1:]:
            g = gap("devft", k)  # positive = the variant is worse than DevFT = a drop
            drops[k] = g
            paper = f"; paper drop {PAPER_ABLATION[k]:.2f}%" if k in PAPER_ABLATION else ""
            lines.append(f"{V[k].label}: drop vs full DevFT {sign(g)}{rel(g, 'devft')}{paper}; this {_direction(g)}."
                         if k in PAPER_ABLATION else
                         f"{V[k].label}: drop vs full DevFT {sign(g)}{rel(g, 'devft')} (not in the paper).")
            lines[-1] += items("devft", k)
        have = {k: d["mean"] for k, d in drops.items() if d["mean"] is not None and k in PAPER_ABLATION}
        if len(have) > 1:
            lab = sorted(have, key=lambda k: -have[k])
            pap = sorted(have, key=lambda k: -PAPER_ABLATION[k])
            lines.append(f"Largest to smallest drop, lab: {', '.join(lab)}; paper: {', '.join(pap)} "
                         f"({'same' if lab == pap else 'different'} order).")
    elif table == "compat":
        g = gap("fedsa-lora-devft", "fedsa-lora")
        a, b = fin.get("fedsa-lora-devft", Finished()).summaries, fin.get("fedsa-lora", Finished()).summaries
        t = ratio(a, b, _wall)
        c = ratio(a, b, lambda s: s.get("paper_bytes"))
        fl = ratio(a, b, lambda s: s.get("flops_estimate"))
        lines.append(f"FedSA-LoRA + DevFT − FedSA-LoRA: {sign(g)}{rel(g, 'fedsa-lora')}; the paper reports +"
                     f"{PAPER_COMPAT['score_gain_pct']}% on LLaMA2-7B; this {_direction(g)}."
                     f"{items('fedsa-lora-devft', 'fedsa-lora')}")
        lines.append(f"Training time {fmt(t)}x less (paper {PAPER_COMPAT['time_x_less']}x), client FLOPs "
                     f"{fmt(fl)}x less, LoRA uplink {fmt(c)}x less (paper {PAPER_COMPAT['comm_x_less']}x).")
    elif table == "growth":
        for k in ("growth-x4", "growth-x8"):
            g = gap("devft", k)
            lines.append(f"x2 − {k[-2:]} (positive: x2 is better): {sign(g)}{rel(g, k)}; the paper (one secondary source) says x4/x8 cost "
                         f"{PAPER_GROWTH['drop_pct_x4_x8_vs_x2']}% on LLaMA2-13B; this {_direction(g)}."
                         f"{items('devft', k)}")
    elif table == "efficiency":
        tt = extra.get("to_target", {})
        none = extra.get("target", {}).get("no_target_seeds") or []
        if none:
            lines.append(f"FedIT ended at or below the untrained model's {metric} in seed(s) "
                         f"{', '.join(map(str, none))}: no target there, so those seeds are left out of the "
                         "to-target columns (every method would 'reach' it before training).")
        for k in ("devft", "progfed", "fedsa-lora", "c2a"):
            if k in tt and tt[k]["reached"].endswith(" of 0"):
                continue  # no finished seed with a target yet
            if k in tt and not tt[k]["time_s"]["n"]:
                lines.append(f"{V[k].label} did not reach FedIT's final {metric} ({tt[k]['reached']} seeds).")
            elif k in tt:
                e = tt[k]
                lines.append(f"{V[k].label} reached FedIT's final {metric} in {e['reached']} seeds; time "
                             f"{fmt(e['time_s_x_less_than_fedit'])}x less than FedIT, LoRA uplink "
                             f"{fmt(e['paper_bytes_x_less_than_fedit'])}x less (x > 1: faster / cheaper).")
        for k, v in extra.get("devft_vs", {}).items():
            if v["time_s"]["n"]:
                lines.append(f"Where both reached the target, DevFT needed {fmt(v['time_s'])}x less time and "
                             f"{fmt(v['paper_bytes'])}x less LoRA uplink than {V[k].label} "
                             f"({v['time_s']['n']} seeds).")
        r = extra.get("rounds", {})
        f1, fl = r.get("devft_first_stage", {}), r.get("devft_last_stage", {})
        if f1.get("time_s", {}).get("mean") is not None:
            lines.append(f"One round of DevFT's first stage ({f1.get('capacity')} layers) vs a full-model round: "
                         f"time {fmt(f1['time_s_x_less_than_full'])}x less (paper 10.3x), uplink "
                         f"{fmt(f1['paper_bytes_x_less_than_full'])}x less (paper 4x); last stage time "
                         f"{fmt(fl['time_s_x_less_than_full'])}x less (paper 1.44x faster).")
        c2a = fin.get("c2a")
        lines.append("The paper's 4.59x (time to convergence) and 10.67x (communication) headline ratios are DevFT "
                     "against C2A" + (", compared above where both reached the target." if c2a and c2a.summaries
                                      else "; the C2A cells are not run yet."))
        lines.append("Memory: peak RSS and CUDA peak are process peaks up to that round (never reset, and the "
                     "simulation holds the full model), so they bound a client's per-stage memory rather than "
                     "measure it; the paper's 4x memory claim is not tested by these columns.")
    same = [V[k].label for k, f in fin.items() if f.summaries and all(
        s.get("final") and all(s["initial"].get(m) == v for m, v in s["final"].items())
        for s in f.summaries.values())]
    if same:
        lines.append(f"{', '.join(same)} ended with exactly the base model's scores on every suite: at this "
                     "training budget its adapter left the net correctness of the evaluated answers unchanged, "
                     "so its gaps above are the other rows moving, not it.")
    caveat = _timing_caveat(fin) if table in ("compat", "efficiency") else ""
    if caveat:
        lines.append(caveat)
    dtypes = _dtype_caveat(fin)
    if dtypes:
        lines.append(dtypes)
    return " ".join(lines)


def _dtype_caveat(fin: dict[str, Finished]) -> str:
    """A warning when the cells computed in different dtypes (the device probe picks per machine)."""
    seen = {(m.get("compute_dtype") or {}).get("dtype", "?") if isinstance(m.get("compute_dtype"), dict)
            else (m.get("compute_dtype") or "?") for f in fin.values() for m in f.metas.values()}
    if len(seen) < 2:
        return ""
    return (f"Caution: the cells ran in {len(seen)} compute dtypes ({', '.join(sorted(seen))}; the device probe "
            "chose per machine, see 'Compute dtype'), so a gap between rows mixes method and numerics; on 100 "
            "items fp32 and bf16 autocast differed by 1-2 items (results/dtype_short_run.md).")


def _timing_caveat(fin: dict[str, Finished]) -> str:
    """A warning when the cells' wall times were measured under different settings."""
    machines = {m.get("machine", "?") for f in fin.values() for m in f.metas.values()}
    if len(machines) < 2:
        return ""
    return (f"Caution: these cells were trained under {len(machines)} different machine settings (see 'Runs "
            "trained on'; on a shared CPU the load differs between sittings too), so wall-time ratios mix "
            "method and machine; the FLOPs and byte ratios do not depend on the machine.")


