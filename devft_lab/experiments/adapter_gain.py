"""Gain of a finished run's adapter over its untrained model, paired on the same items.

    python -m devft_lab.experiments.adapter_gain runs/lab_fedit_s42 [more run folders] --out results/lab_gain

For each run folder: scores the base model and base + ``adapter/`` (PEFT format) on the run's
evaluation suites (every item the run itself scored, ``eval.max_per_task`` honoured) in the
run's recorded compute dtype, and reports accuracy, the correct answers' loss per token
(``answer_nll``) and a 95% paired-bootstrap interval of the accuracy gain
(:func:`devft_lab.stats.paired_bootstrap`, resampled within tasks).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


from devft_lab.core.device import autocast_context
from devft_lab.core.evaluate import evaluate_suites
from devft_lab.core.models import load_model
from devft_lab.runner.config import load_config
from devft_lab.runner.run import item_row, write_items as write
from devft_lab.stats import paired_bootstrap, summarise


def score_run(run_dir: Path, write_items: bool = False) -> dict[str, Any]:
    """Base vs adapter on ``run_dir``'s suites, paired on the same items; with ``write_items``
    the scored items go into the run folder as ``initial_items.jsonl`` / ``final_items.jsonl``
    where it has none (runs made before runs kept them)."""
    from peft import PeftModel  # optional/heavy: peft

    cfg = load_config(run_dir / "config.yaml")
    meta = json.loads((run_dir / "meta.json").read_text())
    dtype = (meta.get("compute_dtype") or {}).get("dtype", "float32")
    if not (run_dir / "adapter" / "adapter_model.safetensors").exists():
        raise SystemExit(f"{run_dir}/adapter is missing: the run has not finished (devft-lab resume {run_dir}).")
    model, tok = load_model(cfg.model.name, device="cpu")
    kw = dict(suites=list(cfg.eval.suites), max_per_task=cfg.eval.max_per_task, seed=cfg.train.seed,
              max_per_file=cfg.eval.max_per_file,
              template=cfg.data.template)
    t0 = time.perf_counter()
    with autocast_context("cpu", dtype):
        base = evaluate_suites(model, tok, **kw)
        tuned_model = PeftModel.from_pretrained(model, str(run_dir / "adapter"))
        tuned = evaluate_suites(tuned_model, tok, **kw)
    rows_base = base["items"]
    if write_items:
        for name, res in (("initial_items.jsonl", base), ("final_items.jsonl", tuned)):
            if not (run_dir / name).exists():
                write(run_dir / name, [item_row({**r}) for r in res["items"]])
    lo, hi = paired_bootstrap(rows_base, tuned["items"], n_boot=2000, seed=0)
    b = summarise(rows_base)
    return {"run": str(run_dir), "seed": cfg.train.seed, "dtype": dtype, "n": len(rows_base),
            "base_acc": b["avg"], "acc": tuned["avg"], "gain": tuned["avg"] - b["avg"], "ci95": [lo, hi],
            "base_answer_nll": b.get("answer_nll"), "answer_nll": tuned.get("answer_nll"),
            "per_task": {s: {t: [b["suites"][s]["tasks"][t]["acc"], v["acc"]] for t, v in d["tasks"].items()}
                         for s, d in tuned["suites"].items()},
            "score_s": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devft_lab.experiments.adapter_gain", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", default=None, help="write <out>.json and <out>.md")
    p.add_argument("--write-items", action="store_true", help="keep the scored items in each run folder "
                   "(initial_items.jsonl, final_items.jsonl) where it has none")
    args = p.parse_args(argv)
    res = []
    for r in args.runs:
        out = score_run(r, write_items=args.write_items)
        res.append(out)
        print(json.dumps({k: v for k, v in out.items() if k != "per_task"}), flush=True)
    if args.out:
        cmd = "python -m devft_lab.experiments.adapter_gain " + " ".join(argv if argv is not None else sys.argv[1:])
        Path(f"{args.out}.json").write_text(json.dumps({"command": cmd, "runs": res}, indent=1) + "\n")
        lines = [f"# Adapter gain over the untrained model (paired, same items)\n", f"Command: `{cmd}`\n",
                 "| run | seed | dtype | items | untrained | trained | gain | 95% CI | answer_nll untrained → trained |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for o in res:
            lines.append(f"| {o['run']} | {o['seed']} | {o['dtype']} | {o['n']} | {o['base_acc']:.1f} | {o['acc']:.1f} | "
                         f"{o['gain']:+.1f} | [{o['ci95'][0]:+.1f}, {o['ci95'][1]:+.1f}] | "
                         f"{o['base_answer_nll']:.3f} → {o['answer_nll']:.3f} |")
        lines.append("\nPer task (untrained → trained, accuracy %):\n")
        for o in res:
            for s, tasks in o["per_task"].items():
                lines.append(f"* {o['run']} {s}: " + ", ".join(f"{t} {a:.1f} → {b:.1f}" for t, (a, b) in tasks.items()))
        Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
