"""The paper's regime: DevFT and FedIT tuned slowly on a general pool, scored on suites it never saw.

    python -m devft_lab.experiments.paper_regime [--runs results/repro/paper_regime] [--out results/paper_regime]

Reads finished run folders of config ``paper_regime`` named ``paper_<method>_s<seed>``:
``devft`` (4 stages of 16 rounds, one learning-rate decay across the run as in the paper),
``devft_stage`` (the same with the decay restarted at each stage, ``train.schedule_scope=stage``), ``fedit`` (FedIT for the same 64 rounds: equal rounds) and
``fedit_flops`` (FedIT for 37 rounds: equal client FLOPs). Each folder keeps every scored item
before (``initial_items.jsonl``, the untrained model) and after (``final_items.jsonl``), so every
number here pairs items: a method's *gain* on a suite is its final accuracy minus the untrained
model's (negative: forgetting), and DevFT − FedIT pairs the two final runs of each seed. Intervals
are 95 % from the item-paired bootstrap pooled over seeds (:func:`reproduce.stats.paired_items`):
they measure the evaluation items' noise given the trained runs; the per-seed values show the rest.
Writes ``<out>.json``, ``<out>.md`` and ``<out>.png``. Plan and commands:
``results/readings/paper_regime_plan.md``.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from devft_lab.core.tables import markdown_table
from devft_lab.experiments.reproduce.stats import fmt, fmt_ci, mean_std, paired_items
from devft_lab.runner.report import json_object, read_run
from devft_lab.runner.run import read_items
from devft_lab.stats import summarise

METHODS = {"devft": "DevFT, 4 x 16 rounds", "devft_stage": "DevFT, decay restarted each stage",
           "fedit": "FedIT, equal rounds (64)", "fedit_flops": "FedIT, equal FLOPs (37 rounds)"}
DEVFT, FEDIT = ("devft", "devft_stage"), ("fedit", "fedit_flops")
UNSEEN = ("bbh", "mmlu", "heldout")  # suites the general pool never trained on
SUITES = UNSEEN + ("indist",)
NAME = re.compile(r"^paper_(?P<method>devft|devft_stage|fedit|fedit_flops)_s(?P<seed>\d+)$")


def load_runs(runs: str | Path) -> dict[str, dict[int, dict[str, Any]]]:
    """``{method: {seed: run}}`` of the finished runs under ``runs`` (unfinished ones are skipped);
    a run holds its ``initial`` and ``final`` items, ``summary`` and ``meta``."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for d in sorted(Path(runs).glob("paper_*")):
        m = NAME.match(d.name)
        if not m or not (d / "rounds.jsonl").exists():
            continue
        run = read_run(d)
        if not run.summary.get("done"):
            continue
        res = d / "resources.json"  # CPU time measured outside the run (/usr/bin/time), for runs without meta cpu_s
        out.setdefault(m["method"], {})[int(m["seed"])] = {
            "initial": read_items(d / "initial_items.jsonl"), "final": read_items(d / "final_items.jsonl"),
            "summary": run.summary, "meta": run.meta,
            "resources": json_object(res, "restore it or delete it (the CPU time is then not reported)") if res.exists() else {}}
    return out


def only(items: Sequence[dict[str, Any]], suites: Sequence[str]) -> list[dict[str, Any]]:
    """The items of ``suites``."""
    return [r for r in items if r["suite"] in suites]


def flips(before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Percent of items learned (wrong -> right) and forgotten (right -> wrong), items paired by
    (suite, id): ``learned - forgotten`` is the change of the item-level (micro) accuracy."""
    a = {(r["suite"], r["id"]): bool(r["correct"]) for r in before}
    b = {(r["suite"], r["id"]): bool(r["correct"]) for r in after}
    if set(a) != set(b) or not a:
        raise ValueError("flips: the two evaluations scored different items (or none).")
    n = len(a)
    return {"learned": 100.0 * sum(b[k] and not a[k] for k in a) / n,
            "forgotten": 100.0 * sum(a[k] and not b[k] for k in a) / n, "items": n}


def cpu_s(run: dict[str, Any]) -> float | None:
    """The run's CPU time in seconds (see :func:`recorded`)."""
    return recorded(run, "cpu_s")


def wall_s(run: dict[str, Any]) -> float | None:
    """The run's wall time in seconds (see :func:`recorded`)."""
    return recorded(run, "wall_s")


def recorded(run: dict[str, Any], key: str) -> float | None:
    """``meta.json``'s ``key`` (summed over sittings), else ``resources.json``'s (``/usr/bin/time``), else
    ``summary.json``'s; None when ``resources.json`` says a sitting went unrecorded (``"partial": true``:
    a run stopped before it wrote its totals, then resumed)."""
    if run["resources"].get("partial"):
        return None
    return run["meta"].get(key, run["resources"].get(key, run["summary"].get(key)))


def build(runs: dict[str, dict[int, dict[str, Any]]], n_boot: int = 2000) -> dict[str, Any]:
    """Accuracy, gain over the untrained model and DevFT − FedIT, per suite (and over the unseen
    suites together: the macro average of bbh, mmlu and heldout), plus cost per method."""
    groups = {**{s: (s,) for s in SUITES}, "unseen": UNSEEN}
    data: dict[str, Any] = {"methods": {}, "comparisons": {}, "suites": list(groups)}
    for method, by_seed in runs.items():
        rows: dict[str, Any] = {}
        for g, suites in groups.items():
            init = {s: only(r["initial"], suites) for s, r in by_seed.items()}
            final = {s: only(r["final"], suites) for s, r in by_seed.items()}
            if not any(init.values()):
                continue
            rows[g] = {"untrained": mean_std([summarise(v)["avg"] for v in init.values()]),
                       "final": mean_std([summarise(v)["avg"] for v in final.values()]),
                       # the correct answer's loss (nats per token, macro like avg): moves before accuracy does
                       "nll_untrained": mean_std([summarise(v).get("answer_nll") for v in init.values()]),
                       "nll_final": mean_std([summarise(v).get("answer_nll") for v in final.values()]),
                       "gain": paired_items(final, init, n_boot),
                       "flips": {s: flips(init[s], final[s]) for s in by_seed}}
        s = {seed: r["summary"] for seed, r in by_seed.items()}
        data["methods"][method] = {
            "seeds": sorted(by_seed), "rows": rows,
            "rounds": mean_std([v["rounds"] for v in s.values()]),
            "flops": mean_std([v["flops_estimate"] for v in s.values()]),
            "uplink_mb": mean_std([v["uplink_bytes"] / 1e6 for v in s.values()]),
            "wall_min": mean_std([w / 60 for w in map(wall_s, by_seed.values()) if w is not None]),
            "cpu_min": mean_std([c / 60 for c in map(cpu_s, by_seed.values()) if c is not None]),
            "machine": sorted({r["meta"].get("machine", "?") for r in by_seed.values()})}
    for d in (d for d in DEVFT if d in runs):
        for f in (f for f in FEDIT if f in runs):  # DevFT - FedIT, keyed "devft-fedit_flops"
            data["comparisons"][f"{d}-{f}"] = {
                g: paired_items({s: only(r["final"], su) for s, r in runs[d].items()},
                                {s: only(r["final"], su) for s, r in runs[f].items()}, n_boot)
                for g, su in groups.items()}
    return data


def markdown(data: dict[str, Any], command: str) -> str:
    """The report: accuracy and gain per suite and method, DevFT − FedIT, cost."""
    label = {g: (f"{g} (unseen)" if g in UNSEEN else "indist (not in the pool)" if g == "indist"
                 else "unseen: bbh + mmlu + heldout") for g in data["suites"]}
    out = ["# The paper's regime on SmolLM2-135M: DevFT and FedIT on suites the pool never saw", "",
           f"Command: `{command}`. Plan, config and the commands that made the runs: "
           "`results/readings/paper_regime_plan.md`; reading: `results/readings/paper_regime.md`.", "",
           "Accuracy in percent (macro over tasks, then suites), mean ± std over seeds. Gain: final minus the "
           "untrained model on the same items (negative = forgetting), with a 95 % item-paired bootstrap "
           "interval pooled over seeds. Learned / forgotten: percent of items that went wrong → right / "
           "right → wrong (mean over seeds). Answer loss: the correct answer's loss in nats per token (macro "
           "like the accuracy), untrained → final: it moves before accuracy does.", ""]
    for method, m in data["methods"].items():
        out += [f"## {METHODS[method]} ({_seeds(m['seeds'])})", ""]
        rows = [[label[g], fmt(r["untrained"], 1), fmt(r["final"], 1), fmt_ci(r["gain"]),
                 f"{mean_std([f['learned'] for f in r['flips'].values()])['mean']:.1f}",
                 f"{mean_std([f['forgotten'] for f in r['flips'].values()])['mean']:.1f}",
                 f"{fmt(r['nll_untrained'], 3)} → {fmt(r['nll_final'], 3)}"]
                for g, r in m["rows"].items()]
        out += [*markdown_table(["suite", "untrained", "final", "gain [95 % CI]", "learned", "forgotten", "answer loss"],
                                rows), ""]
    for key, comp in data["comparisons"].items():
        d, f = key.split("-")
        out += [f"## {METHODS[d]} − {METHODS[f]}", "",
                *markdown_table(["suite", "DevFT − FedIT [95 % CI]", "per seed"],
                               [[label[g], fmt_ci(c), ", ".join(f"s{s}: {v['gap']:+.1f}" for s, v in c["per_seed"].items())]
                                for g, c in comp.items()]), ""]
    out += ["## Cost (per run, mean ± std over seeds)", "",
            *markdown_table(["method", "rounds", "client FLOPs", "LoRA uplink (MB)", "CPU time (min)", "wall time (min)"],
                           [[METHODS[k], fmt(m["rounds"], 0), f"{m['flops']['mean']:.3g}", fmt(m["uplink_mb"], 0),
                             _of(m["cpu_min"], m["seeds"]), _of(m["wall_min"], m["seeds"])]
                            for k, m in data["methods"].items()]), "",
            "A time marked *n of m runs* leaves out runs that were stopped before they recorded it, then resumed.", "",
            "Machines: " + "; ".join(sorted({x for m in data["methods"].values() for x in m["machine"]})) + ".", ""]
    return "\n".join(out)


def headline(data: dict[str, Any]) -> str:
    """Two Markdown tables: per method, its accuracy and gain on the unseen suites and its gain on
    ``indist``; per (DevFT, FedIT) pair, DevFT minus FedIT on both (each with its 95 % interval)."""
    rows = [[METHODS[k], ", ".join(map(str, m["seeds"])), fmt(m["rows"]["unseen"]["final"], 1),
             fmt_ci(m["rows"]["unseen"]["gain"]), fmt_ci(m["rows"].get("indist", {}).get("gain"))]
            for k, m in data["methods"].items()]
    pairs = [[f"{METHODS[k.split('-')[0]]} − {METHODS[k.split('-')[1]]}", fmt_ci(c["unseen"]), fmt_ci(c.get("indist"))]
             for k, c in data["comparisons"].items()]
    return "\n".join([*markdown_table(["method", "seeds", "unseen acc. (%)", "gain, unseen", "gain, indist"], rows), "",
                      *markdown_table(["comparison", "unseen", "indist"], pairs)])


def _of(v: dict[str, Any], seeds: Sequence[int]) -> str:
    """``fmt(v)``, with "(n of m runs)" when fewer runs than seeds recorded it."""
    n = v.get("n", 0)
    return fmt(v, 0) + (f" ({n} of {len(seeds)} runs)" if n and n < len(seeds) else "")


def _seeds(seeds: Sequence[int]) -> str:
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def plot(data: dict[str, Any], out: str | Path | None = None):
    """Gain over the untrained model per suite and method, with 95 % intervals, each seed's gain as
    a dot (where a method has several), and a zero line."""
    import matplotlib  # optional/heavy: matplotlib
    if out is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional/heavy: matplotlib

    groups, methods = data["suites"], list(data["methods"])
    fig, ax = plt.subplots(figsize=(8, 3.8))
    w = 0.8 / max(len(methods), 1)
    for i, method in enumerate(methods):
        rows = data["methods"][method]["rows"]
        xs = [j + (i - (len(methods) - 1) / 2) * w for j, g in enumerate(groups) if g in rows]
        g_ = [rows[g]["gain"] for g in groups if g in rows]
        ys = [g["mean"] for g in g_]
        err = [[y - g["ci95"][0] for y, g in zip(ys, g_)], [g["ci95"][1] - y for y, g in zip(ys, g_)]]
        ax.bar(xs, ys, w, yerr=err, capsize=3, label=f"{METHODS[method]} ({_seeds(data['methods'][method]['seeds'])})")
        for x, g in zip(xs, g_):  # each seed's own gain: the spread between training runs
            per = [v["gap"] for v in g["per_seed"].values()]
            if len(per) > 1:
                ax.scatter([x] * len(per), per, s=16, facecolors="white", edgecolors="k", linewidths=0.8, zorder=4)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("gain over untrained (acc. points)")
    ax.set_title("Paper regime, SmolLM2-135M: gain (> 0) or forgetting (< 0), 95 % item-paired CI; dots: seeds",
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    if out is not None:
        fig.savefig(out, dpi=120)
        plt.close(fig)
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="results/repro/paper_regime", help="folder of paper_<method>_s<seed> runs")
    ap.add_argument("--out", default="results/paper_regime", help="writes OUT.json, OUT.md, OUT.png")
    args = ap.parse_args(argv)
    runs = load_runs(args.runs)
    if not runs:
        print(f"no finished paper_<method>_s<seed> runs under {args.runs}: run the plan in "
              "results/readings/paper_regime_plan.md first", file=sys.stderr)
        return 2
    data = build(runs)
    command = "python -m devft_lab.experiments.paper_regime " + shlex.join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({**data, "command": command.strip()}, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(data, command.strip()))
    plot(data, out.with_suffix(".png"))
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
