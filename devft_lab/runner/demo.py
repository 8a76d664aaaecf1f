"""The main job behind ``make demo``: a short DevFT federated run on the embedded model.

Runs the shipped ``demo`` config (SmolLM2-135M-Instruct, the lab pool split non-IID over 20
clients, four growing stages) into ``runs/demo`` and ends with a summary: accuracy before
and after, wall time, and bytes sent (the paper's way and in full). Re-running replaces the
previous demo run. ``devft-lab report runs/demo`` plots it afterwards.
"""
from __future__ import annotations

import time

from devft_lab.runner.config import load_config
from devft_lab.runner.run import read_items, run_dir_of, start
from devft_lab.stats import paired_bootstrap


def main(model_name: str = "smollm2-135m", quiet: bool = False, overrides: list[str] | None = None) -> int:
    t0 = time.perf_counter()
    cfg = load_config("demo", [f"model.name={model_name}", *(overrides or [])])
    summary = start(cfg, force=True, quiet=quiet, command="devft-lab demo")
    before, after = summary.get("initial", {}), summary.get("final", {})
    metric = "acc" if "acc" in after else "eval_loss"
    mb = 1e6
    print("\nsummary")
    print(f"  model        {cfg.model.name}, stages {summary.get('capacities', '')}".rstrip(", "))
    if metric in before and metric in after:
        unit = " %" if metric == "acc" else ""
        print(f"  {metric:12s} {before[metric]:.1f}{unit} before -> {after[metric]:.1f}{unit} after "
              f"({after[metric] - before[metric]:+.1f}{gain_ci(run_dir_of(cfg))}) on {', '.join(cfg.eval.suites)} "
              f"({cfg.eval.max_per_task or 'all'} items per task)")
    if "answer_nll" in before and "answer_nll" in after:
        print(f"  answer loss  {before['answer_nll']:.3f} before -> {after['answer_nll']:.3f} after "
              "(the correct answers' loss per token)")
    print(f"  rounds       {summary['rounds']}, {cfg.fed.clients_per_round} of {cfg.data.num_clients} clients each")
    print(f"  time         {(time.perf_counter() - t0) / 60:.1f} min in all (train {summary['train_s']:.0f} s, "
          f"evaluate {summary['eval_s'] + before.get('eval_s', 0):.0f} s)")
    print(f"  bytes        {summary['paper_bytes'] / mb:.2f} MB LoRA uplink (the paper's count); "
          f"{summary['full_bytes'] / mb:.2f} MB in full (down {summary['downlink_bytes'] / mb:.2f}, "
          f"fused-layer delivery {summary['submodel_delivery_bytes'] / mb:.2f})")
    print(f"  peak memory  {summary['peak_rss_mb']:.0f} MB RSS")
    print(f"  run folder   {run_dir_of(cfg)}  (devft-lab report {run_dir_of(cfg)})")
    return 0


def gain_ci(run_dir) -> str:
    """``, 95% CI [lo, hi] over N items`` from the run's scored items (paired), or ``""``."""
    a, b = read_items(run_dir / "initial_items.jsonl"), read_items(run_dir / "final_items.jsonl")
    if not a or len(a) != len(b):
        return ""
    lo, hi = paired_bootstrap(a, b, n_boot=2000, seed=0)
    return f", paired 95% CI [{lo:+.1f}, {hi:+.1f}] over {len(a)} items"
