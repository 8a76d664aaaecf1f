"""Where the memory of a run goes: ``python -m devft_lab.experiments.memory --model NAME``.

Runs the steps of a short DevFT run one by one (model load, optionally a fresh GGUF
conversion, the stage plan, every stage's submodel, the evaluation model, a short run)
and records, per step, the resident set size (RSS) after it and the highest RSS seen
while it ran (a 20 ms sampler thread), in MB. Peaks are what a machine must hold.

    python -m devft_lab.experiments.memory --model smollm2-135m --out results/memory_smollm2.json
    python -m devft_lab.experiments.memory --model /path/model.gguf --fresh-conversion
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def rss_mb() -> float:
    """Current resident set size of this process, MB."""
    import psutil  # optional/heavy: psutil

    return psutil.Process().memory_info().rss / 2**20


class Probe:
    """Per-step RSS (after) and peak RSS (during), sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.steps = interval, []

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        gc.collect()
        before = rss_mb()
        peak = [before]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(self.interval):
                peak[0] = max(peak[0], rss_mb())

        t = threading.Thread(target=sample, daemon=True)
        t0 = time.perf_counter()
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()
            gc.collect()
            after = rss_mb()
            self.steps.append({"step": name, "before_mb": round(before), "peak_mb": round(max(peak[0], after)),
                               "after_mb": round(after), "seconds": round(time.perf_counter() - t0, 2)})
            print(f"{name:32s} before {before:7.0f}  peak {max(peak[0], after):7.0f}  after {after:7.0f} MB",
                  flush=True)


def run(model: str, fresh_conversion: bool = False, rounds: int = 4) -> dict[str, Any]:
    """Measure a load and a short DevFT run of ``model`` (tiny data, 4 stages, 1 round each)."""
    import torch  # optional/heavy: torch

    from devft_lab.core import models  # optional/heavy: torch (devft_lab.core.models)
    from devft_lab.runner.config import load_config  # optional/heavy: torch (devft_lab.runner.config)
    from devft_lab.runner.run import build, run_dir_of, start  # optional/heavy: torch (devft_lab.runner.run)

    probe = Probe()
    overrides = [f"model.name={model}", "data.source=tiny", "data.num_clients=4", "data.min_samples=4",
                 f"fed.num_rounds={rounds}", "devft.rounds_per_stage=null", "train.local_steps=1",
                 "train.batch_size=2", "train.seq_len=64", "eval.holdout=4", "device=cpu"]
    cfg = load_config("tiny", overrides)
    with tempfile.TemporaryDirectory() as tmp:
        if fresh_conversion:
            os.environ["DEVFT_LAB_CACHE"] = str(Path(tmp) / "cache")
            with probe.step("GGUF conversion (fresh cache)"):
                models.prepare_model(model)
        with probe.step("load_model"):
            m, tok = models.load_model(model, device="cpu")
        n_params = sum(p.numel() for p in m.parameters())
        weights_mb = sum(p.numel() * p.element_size() for p in m.parameters()) / 2**20
        del m, tok
        with probe.step("release the model"):
            pass
        with probe.step("build (model, data, plan)"):
            parts = build(cfg, progress=False)
        plan = parts.plan
        for s in range(len(plan.stage_rounds())):
            with probe.step(f"stage {s + 1} submodel"):
                st = plan.begin(s)
            with probe.step(f"stage {s + 1} evaluation model"):
                plan.eval_model(st, st.start)
            plan.end(s, st.start)
            del st
        del parts, plan
        cfg.out_dir, cfg.name = tmp, "memory"
        with probe.step(f"short run ({rounds} rounds)"):
            start(cfg, quiet=True)
        assert run_dir_of(cfg).exists()
    return {"model": model, "parameters": n_params, "weights_mb": round(weights_mb),
            "dtype": str(torch.get_default_dtype()).replace("torch.", ""), "fresh_conversion": fresh_conversion,
            "peak_mb": max(s["peak_mb"] for s in probe.steps), "steps": probe.steps}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m devft_lab.experiments.memory", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--fresh-conversion", action="store_true", help="convert the GGUF file again in a temporary cache")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--out", help="JSON file to write (default: print only)")
    args = p.parse_args(argv)
    result = {"command": "python -m devft_lab.experiments.memory " + " ".join(map(shlex.quote, argv or sys.argv[1:]))}
    result.update(run(args.model, args.fresh_conversion, args.rounds))
    print(json.dumps({k: v for k, v in result.items() if k != "steps"}))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
