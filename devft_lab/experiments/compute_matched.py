"""Compute-matched views of a table's runs: accuracy and answer loss against cumulative client
FLOPs and against training wall time, and what it took each method to reach FedIT's final score.

    python -m devft_lab.experiments.compute_matched main --scale lab --out results/lab_compute_matched

Reads the finished cells of ``devft-lab reproduce TABLE`` (nothing is trained). For every
evaluation a run made (the untrained model at 0, then each stage's end or every
``eval.every_n_rounds``) it takes the cumulative client FLOPs (``cum_flops_estimate``), the
cumulative training + aggregation seconds (evaluation time excluded: it is the lab's cost, not the
method's), accuracy and ``answer_nll``. Writes ``OUT.json``, ``OUT.md`` and ``OUT.png`` (four
panels, mean over seeds with their standard deviation as error bars, the untrained model as a
dashed line).

Matching a schedule before anything runs (``devft-lab sweep``): :func:`stage_flops_per_token` is
the client training FLOPs per token of one round of a ``k``-layer stage exactly as the simulation's
ledger charges them (:func:`devft_lab.fl.accounting.training_flops` with ``lora_only``, over the
stage model's parameters: ``k`` decoder layers, embeddings, final norm, an untied head, plus ``k``
layers of LoRA), and :func:`matched_rounds` the FedIT round count of equal total client FLOPs,
``round(sum_s r_s F(L_s) / F(L))``, assuming the same tokens per round in every stage (the same
local steps and batch size; packing fills the batches).

"To FedIT's final": per seed, the first evaluation at which a method's accuracy is at least
FedIT's final accuracy of the same seed (same items), and the FLOPs and seconds spent by then; a
method that never gets there is reported as not reaching it. Methods are evaluated only where
their config evaluates, so a method that reaches the target between two evaluations is credited
at the later one (an upper bound on its cost).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from devft_lab.core.tables import markdown_table
from devft_lab.experiments.reproduce.cells import Plan, SCALES, TABLES, V, cells_of, seeds_of
from devft_lab.experiments.reproduce.stats import collect
from devft_lab.runner.report import read_run


def model_shape(name: str, r: int, target_modules: Sequence[str]):
    """:class:`devft_lab.experiments.paper_shapes.ShapeCounts` of model ``name`` (a preset, a cached
    preset folder or a hub id), built on the meta device from its config: no weights are loaded."""
    import torch  # optional/heavy: torch
    from transformers import AutoConfig, AutoModelForCausalLM  # optional/heavy: transformers

    from devft_lab.core.models import TINY_PRESETS, byte_tokenizer, cache_dir, prepare_model, tiny_config  # optional/heavy: torch (devft_lab.core.models)
    from devft_lab.experiments.paper_shapes import count_shape  # optional/heavy: torch (devft_lab.experiments.paper_shapes)

    if name in TINY_PRESETS:
        config = tiny_config(TINY_PRESETS[name].model_type, vocab_size=len(byte_tokenizer()))
    else:
        cached = cache_dir() / name
        folder = cached if (cached / "config.json").exists() else prepare_model(name, verbose=False)
        config = AutoConfig.from_pretrained(str(folder) if folder is not None else name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return count_shape(model, r, target_modules)


def stage_flops_per_token(counts, k: int) -> float:
    """Client training FLOPs per token of a ``k``-layer stage, as the ledger counts them:
    ``training_flops(N_k, 1, k * lora_per_layer, lora_only=True)`` = ``4 N_k + 6 N_lora``,
    ``N_k = k * layer + embed + head + norm`` (the stage model's frozen parameters)."""
    from devft_lab.fl.accounting import training_flops  # optional/heavy: torch (devft_lab.fl.accounting)

    if not 1 <= k <= counts.num_layers:
        raise ValueError(f"stage capacity {k} is outside 1..{counts.num_layers} layers.")
    frozen = k * counts.layer + counts.embed + counts.head + counts.norm
    return training_flops(frozen, 1, k * counts.lora_per_layer, lora_only=True)


def matched_rounds(counts, capacities: Sequence[int], rounds: Sequence[int]) -> int:
    """FedIT rounds of the same total client FLOPs as a DevFT schedule (at least 1):
    ``round(sum_s r_s F(L_s) / F(L))`` with F = :func:`stage_flops_per_token`."""
    if len(capacities) != len(rounds):
        raise ValueError(f"{len(capacities)} capacities but {len(rounds)} stage round counts.")
    full = stage_flops_per_token(counts, counts.num_layers)
    total = sum(r * stage_flops_per_token(counts, k) for k, r in zip(capacities, rounds))
    return max(1, int(math.floor(total / full + 0.5)))


def points(run_dir: Path) -> list[dict[str, float]]:
    """One point per evaluation of a run: ``flops``, ``train_s``, ``acc``, ``answer_nll``, ``round``."""
    run = read_run(run_dir)
    out = []
    if "acc" in run.initial:
        out.append({"round": 0, "flops": 0.0, "train_s": 0.0, "acc": run.initial["acc"],
                    "answer_nll": run.initial.get("answer_nll")})
    for r in run.rows:
        if "acc" in r["extra"]:
            out.append({"round": r["round"] + 1, "flops": float(r["cum_flops_estimate"]),
                        "train_s": r["cum_train_s"] + r["cum_aggregate_s"], "acc": r["extra"]["acc"],
                        "answer_nll": r["extra"].get("answer_nll")})
    return out


def mean_sd(xs: Sequence[float | None]) -> tuple[float | None, float | None]:
    v = [float(x) for x in xs if x is not None]
    if not v:
        return None, None
    m = sum(v) / len(v)
    return m, (math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0)


def mean_curve(curves: dict[int, list[dict]]) -> list[dict[str, Any]]:
    """Points averaged over seeds evaluation by evaluation (seeds of one config evaluate at the
    same rounds; only the evaluations every seed has are kept)."""
    n = min((len(c) for c in curves.values()), default=0)
    out = []
    for i in range(n):
        row: dict[str, Any] = {"round": curves[next(iter(curves))][i]["round"]}
        for k in ("flops", "train_s", "acc", "answer_nll"):
            row[k], row[f"{k}_sd"] = mean_sd([c[i][k] for c in curves.values()])
        out.append(row)
    return out


def to_target(curve: list[dict], target: float) -> dict[str, float] | None:
    """FLOPs and seconds at the first evaluation with accuracy >= ``target`` (None if never)."""
    for p in curve:
        if p["acc"] >= target:
            return {"flops": p["flops"], "train_s": p["train_s"], "acc": p["acc"], "round": p["round"]}
    return None


def build(runs: dict[str, dict[int, Path]], reference: str = "fedit") -> dict[str, Any]:
    """Curves, seed means and to-FedIT's-final costs for ``{method: {seed: run_dir}}``."""
    curves = {m: {s: points(d) for s, d in sorted(by.items())} for m, by in runs.items()}
    curves = {m: {s: c for s, c in by.items() if c} for m, by in curves.items()}
    ref = curves.get(reference, {})
    targets = {s: c[-1]["acc"] for s, c in ref.items()}
    out: dict[str, Any] = {"reference": reference, "targets": targets, "methods": {}}
    for m, by in curves.items():
        hits = {s: to_target(c, targets[s]) for s, c in by.items() if s in targets}
        reached = {s: h for s, h in hits.items() if h}
        ref_cost = {s: (ref[s][-1]["flops"], ref[s][-1]["train_s"]) for s in reached}
        out["methods"][m] = {
            "per_seed": {s: c for s, c in by.items()},
            "mean": mean_curve(by),
            "reached": f"{len(reached)} of {len(hits)}",
            "to_target": reached,
            "flops_x_less_than_reference": mean_sd([ref_cost[s][0] / h["flops"] for s, h in reached.items()
                                                     if h["flops"] > 0]),
            "time_x_less_than_reference": mean_sd([ref_cost[s][1] / h["train_s"] for s, h in reached.items()
                                                    if h["train_s"] > 0]),
        }
    return out


def plot(data: dict[str, Any], out: str | Path | None = None, labels: dict[str, str] | None = None):
    """Four panels: accuracy and answer_nll against client FLOPs and against training seconds."""
    import matplotlib  # optional/heavy: matplotlib

    if out is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional/heavy: matplotlib

    labels = labels or {}
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.2), sharex="col")
    base = [c[0] for by in data["methods"].values() for c in by["per_seed"].values() if c and c[0]["round"] == 0]
    for m, d in data["methods"].items():
        pts = d["mean"]
        for row, key in enumerate(("acc", "answer_nll")):
            for col, (x, scale) in enumerate((("flops", 1e12), ("train_s", 60.0))):
                ax = axes[row][col]
                sparse = len(pts) <= 2  # evaluated before and after only: the line is no curve
                ax.errorbar([p[x] / scale for p in pts], [p[key] for p in pts], yerr=[p[f"{key}_sd"] for p in pts],
                            xerr=[p[f"{x}_sd"] / scale for p in pts], marker="o", ms=4, capsize=3,
                            ls=":" if sparse else "-", color=f"C{list(data['methods']).index(m)}",
                            label=f"{labels.get(m, m)} ({len(d['per_seed'])} seed{'s' if len(d['per_seed']) > 1 else ''}"
                                  f"{', start and end only' if sparse else ''})")
    if base:
        for row, key in enumerate(("acc", "answer_nll")):
            b = sum(p[key] for p in base) / len(base)
            for ax in axes[row]:
                ax.axhline(b, ls="--", color="grey", lw=1, label="untrained model" if row == 0 else None)
    for ax in axes[0]:
        ax.set_ylabel("accuracy on the held-out items (%)")
    for ax in axes[1]:
        ax.set_ylabel("answer loss (nats per token)")
    axes[1][0].set_xlabel("cumulative client compute (TFLOPs, estimate)")
    axes[1][1].set_xlabel("cumulative training + aggregation time (min)")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Compute-matched: each point is an evaluation (mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    if out is not None:
        fig.savefig(out, dpi=110)
        plt.close(fig)
    return fig


def markdown(data: dict[str, Any], labels: dict[str, str], command: str) -> str:
    def f(ms: tuple[float | None, float | None], d: int = 2) -> str:
        return "-" if ms[0] is None else f"{ms[0]:.{d}f} ± {ms[1]:.{d}f}"

    lines = ["# Compute-matched view", "", f"Command: `{command}`", "",
             f"Target: {labels.get(data['reference'], data['reference'])}'s final accuracy in the same seed "
             f"({', '.join(f's{s} {v:.1f}' for s, v in data['targets'].items())}). Costs: cumulative client FLOPs "
             "(estimate) and training + aggregation seconds at the first evaluation at or above it.", ""]
    body = []
    for m, d in data["methods"].items():
        last = d["mean"][-1] if d["mean"] else {}
        tt = d["to_target"]
        body.append([labels.get(m, m), str(len(d["per_seed"])),
                     f"{last.get('acc', float('nan')):.1f} ± {last.get('acc_sd') or 0:.1f}",
                     f"{last.get('answer_nll', float('nan')):.3f}" if last.get("answer_nll") is not None else "-",
                     f"{(last.get('flops') or 0) / 1e12:.1f}", f"{(last.get('train_s') or 0) / 60:.1f}",
                     d["reached"],
                     ", ".join(f"s{s}: {h['flops'] / 1e12:.1f} TFLOPs / {h['train_s'] / 60:.1f} min (round {h['round']})"
                               for s, h in tt.items()) or "-",
                     f(d["flops_x_less_than_reference"]), f(d["time_x_less_than_reference"])])
    lines += markdown_table(["method", "seeds", "final acc %", "final answer_nll", "TFLOPs", "train min",
                             "reached target", "cost to target", "FLOPs x less than ref", "time x less than ref"],
                            body)
    lines += ["", "![compute-matched curves](" + Path(command.split("--out ")[-1].split()[0]).name + ".png)"
              if "--out " in command else ""]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devft_lab.experiments.compute_matched",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("table", choices=list(TABLES))
    p.add_argument("--scale", default="lab", choices=list(SCALES))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--results", default="results")
    p.add_argument("--out", required=True, help="write OUT.json, OUT.md, OUT.png")
    args = p.parse_args(argv)
    scale = SCALES[args.scale]
    plan = Plan(scale, scale.base, results=Path(args.results))
    fin = collect(plan, cells_of([args.table], seeds_of(plan, args.seeds)))
    runs = {k: f.paths for k, f in fin.items() if f.paths}
    if "fedit" not in runs:
        print("compute_matched: FedIT has no finished cell in this table yet; nothing to match against.",
              file=sys.stderr)
        return 2
    data = build(runs)
    labels = {k: V[k].label for k in runs}
    command = "python -m devft_lab.experiments.compute_matched " + " ".join(argv if argv is not None else sys.argv[1:])
    data["command"] = command
    Path(f"{args.out}.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    Path(f"{args.out}.md").write_text(markdown(data, labels, command))
    plot(data, f"{args.out}.png", labels)
    print(f"wrote {args.out}.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
