"""Does the lab benchmark carry signal? Base model vs a centralised LoRA fine-tune on the pool.

    python -m devft_lab.experiments.lab_signal --config devft_lab/runner/configs/lab_signal.yaml [--set steps=50 ...]

Evaluates the base model on the lab suites, fine-tunes a PEFT LoRA on the whole pool with
:func:`devft_lab.core.train.train_local` (no federation: the upper reference every federated
run is compared with), evaluates again, and writes ``<out>.json`` and ``<out>.md``: per-task,
per-suite and average accuracy (percent), the gap, and 95% intervals from a paired
bootstrap over evaluation items (fixed seed).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devft_lab.core.choices import closest
from devft_lab.core.tables import markdown_table
from devft_lab.data.records import DataError
from devft_lab.data.lab import expand_suites, load_pool
from devft_lab.stats import paired_bootstrap, summarise


@dataclass
class SignalConfig:
    """Everything the signal job does; the YAML file and ``--set`` fill these fields."""

    model: str = "smollm2-135m"
    template: str = "chat"
    suites: list[str] = field(default_factory=lambda: ["indist", "bbh"])  # the headline average
    extra_suites: list[str] = field(default_factory=lambda: ["mmlu"])  # scored and reported, not in it
    max_per_task: int | None = None
    eval_seed: int = 0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                               "gate_proj", "up_proj", "down_proj"])
    steps: int = 80
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    seq_len: int = 256
    seed: int = 0
    bootstrap: int = 2000
    bootstrap_seed: int = 0
    threads: int = 1
    out: str = "results/lab_signal"


def load_signal_config(path: str | Path | None, overrides: list[str] = ()) -> SignalConfig:
    """A :class:`SignalConfig` from YAML plus ``key=value`` overrides; unknown keys are errors."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise DataError(f"{path}: no such config file.") from None
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise DataError(f"--set {item!r}: write key=value, e.g. --set steps=50.")
        raw[key.strip()] = yaml.safe_load(value)
    names = [f.name for f in dataclasses.fields(SignalConfig)]
    for key in raw:
        if key not in names:
            raise DataError(f"{path or '--set'}: unknown field {key!r}.{closest(key, names)} "
                            f"Fields: {', '.join(names)}.")
    from devft_lab.runner.config import ConfigError, build_dataclass  # optional/heavy: torch (devft_lab.runner.config)

    try:
        cfg = build_dataclass(SignalConfig, raw)
    except ConfigError as e:
        raise DataError(f"{path or '--set'}: {e}") from None
    for key in ("steps", "batch_size", "grad_accum", "seq_len", "lora_r", "bootstrap"):
        if not isinstance(getattr(cfg, key), int) or getattr(cfg, key) < 1:
            raise DataError(f"{path or '--set'}: {key} must be an integer >= 1 (got {getattr(cfg, key)!r}).")
    return cfg


def average(base_rows: list[dict], ft_rows: list[dict], suites: list[str], cfg: SignalConfig) -> dict[str, Any]:
    """Base / fine-tuned macro average over ``suites``, the gap and its paired-bootstrap interval."""

    b = [r for r in base_rows if r["suite"] in suites]
    f = [r for r in ft_rows if r["suite"] in suites]
    sb, sf = summarise(b), summarise(f)
    lo, hi = paired_bootstrap(b, f, cfg.bootstrap, cfg.bootstrap_seed)
    return {"suites": suites, "base_avg": round(sb["avg"], 2), "finetuned_avg": round(sf["avg"], 2),
            "gap": round(sf["avg"] - sb["avg"], 2), "ci95": [round(lo, 2), round(hi, 2)], "n_eval": len(b),
            "base_avg_norm": round(sb["avg_norm"], 2), "finetuned_avg_norm": round(sf["avg_norm"], 2)}


def suite_gaps(base: dict[str, Any], ft: dict[str, Any], cfg: SignalConfig) -> dict[str, Any]:
    """Per-suite base / fine-tuned / gap / interval, with per-task numbers."""

    out = {}
    for name, b in base["suites"].items():
        f = ft["suites"][name]
        rows_b = [r for r in base["items"] if r["suite"] == name]
        rows_f = [r for r in ft["items"] if r["suite"] == name]
        lo, hi = paired_bootstrap(rows_b, rows_f, cfg.bootstrap, cfg.bootstrap_seed)
        out[name] = {"base": round(b["acc"], 2), "finetuned": round(f["acc"], 2),
                     "gap": round(f["acc"] - b["acc"], 2), "ci95": [round(lo, 2), round(hi, 2)],
                     "base_norm": round(b["acc_norm"], 2), "finetuned_norm": round(f["acc_norm"], 2), "n": b["n"],
                     "tasks": {t: {"base": round(v["acc"], 2), "finetuned": round(f["tasks"][t]["acc"], 2),
                                   "n": v["n"]} for t, v in b["tasks"].items()}}
    return out


def run(cfg: SignalConfig, command: str) -> dict[str, Any]:
    """Evaluate, fine-tune, evaluate; return the result record (also written to ``cfg.out``)."""
    import torch  # optional/heavy: torch
    from peft import LoraConfig, get_peft_model  # optional/heavy: peft

    from devft_lab.core.evaluate import evaluate_suites  # optional/heavy: torch (devft_lab.core.evaluate)
    from devft_lab.core.models import load_model  # optional/heavy: torch (devft_lab.core.models)
    from devft_lab.core.train import Compute, encode_examples, train_local  # optional/heavy: torch (devft_lab.core.train)

    headline = expand_suites(cfg.suites)  # unknown suite: fail before the slow parts
    every = headline + [s for s in expand_suites(cfg.extra_suites or []) if s not in headline]
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model, tok = load_model(cfg.model)
    ev = dict(suites=every, max_per_task=cfg.max_per_task, seed=cfg.eval_seed, template=cfg.template)
    print(f"[signal] evaluating the base model on {every} ...", flush=True)
    base = evaluate_suites(model, tok, **ev)
    print(f"[signal] base avg {base['avg']:.2f} ({base['n']} items, {base['seconds']:.0f} s)", flush=True)

    pool = load_pool()
    encoded = encode_examples(tok, pool, cfg.template, cfg.seq_len)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)

    def progress(step: int, loss: float) -> None:
        if step % 10 == 0 or step == cfg.steps - 1:
            print(f"[signal] step {step + 1}/{cfg.steps} loss {loss:.4f}", flush=True)

    print(f"[signal] fine-tuning LoRA r={cfg.lora_r} on {len(pool)} pool examples, {cfg.steps} steps ...", flush=True)
    stats = train_local(peft_model, encoded, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                        grad_accum=cfg.grad_accum, seed=cfg.seed, progress=progress,
                        compute=Compute(pad_id=tok.pad_token_id or 0))
    print(f"[signal] trained in {stats.seconds:.0f} s (mean loss {stats.loss:.4f})", flush=True)
    ft = evaluate_suites(peft_model, tok, **ev)
    head = average(base["items"], ft["items"], headline, cfg)
    result = {
        "model": cfg.model, "template": cfg.template, **head,
        "all_suites": average(base["items"], ft["items"], every, cfg), "per_suite": suite_gaps(base, ft, cfg),
        "train": {"examples": len(pool), "steps": stats.steps, "samples_seen": stats.samples,
                  "tokens": stats.tokens, "mean_loss": round(stats.loss, 4), "seconds": round(stats.seconds, 1)},
        "eval_seconds": {"base": base["seconds"], "finetuned": ft["seconds"],
                         "base_cpu": base["cpu_seconds"], "finetuned_cpu": ft["cpu_seconds"]},
        "torch_threads": torch.get_num_threads(), "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "config": dataclasses.asdict(cfg), "command": command,
    }
    write(result, Path(cfg.out))
    items = Path(cfg.out).with_name(Path(cfg.out).name + "_items.jsonl")
    with open(items, "w", encoding="utf-8") as fh:
        for rb, rf in zip(base["items"], ft["items"]):
            fh.write(json.dumps({"suite": rb["suite"], "task": rb["task"], "id": rb["id"], "base": int(rb["correct"]),
                                 "finetuned": int(rf["correct"]), "base_norm": int(rb["correct_norm"]),
                                 "finetuned_norm": int(rf["correct_norm"])}) + "\n")
    print(f"[signal] wrote {items} (per-item correctness, for re-analysis)", flush=True)
    return result


def markdown(r: dict[str, Any]) -> str:
    """The result as a table for people."""
    lines = [f"# Lab signal: {r['model']}, base vs centralised LoRA fine-tune", "",
             f"Command: `{r['command']}`", "",
             f"Headline: average over the suites {', '.join(r['suites'])} (each the mean of its tasks' accuracies): "
             f"**{r['base_avg']:.1f} → {r['finetuned_avg']:.1f}**, gap **{r['gap']:+.1f}** points, "
             f"95% paired-bootstrap interval [{r['ci95'][0]:+.1f}, {r['ci95'][1]:+.1f}] over {r['n_eval']} items.", "",
             ("The interval excludes zero." if r["ci95"][0] > 0 else
              "**The interval includes zero: this run does not establish a gap** (the lab target is a gap of "
              "at least 5 points with the interval above zero)."), "",
             f"All suites ({', '.join(r['all_suites']['suites'])}): {r['all_suites']['base_avg']:.1f} → "
             f"{r['all_suites']['finetuned_avg']:.1f}, gap {r['all_suites']['gap']:+.1f}, 95% interval "
             f"[{r['all_suites']['ci95'][0]:+.1f}, {r['all_suites']['ci95'][1]:+.1f}] over {r['all_suites']['n_eval']} items.",
             ""]
    seen = {"indist": "yes (held-out items)", "bbh": "no (unseen BBH tasks)", "mmlu": "no"}
    lines += markdown_table(
        ["suite", "tasks in the pool?", "n", "base", "fine-tuned", "gap", "95% CI"],
        [[name, seen.get(name, "?"), s["n"], f"{s['base']:.1f}", f"{s['finetuned']:.1f}", f"{s['gap']:+.1f}",
          f"[{s['ci95'][0]:+.1f}, {s['ci95'][1]:+.1f}]"] for name, s in r["per_suite"].items()])
    lines += ["", "Per task (accuracy %, raw log-likelihood):", ""]
    lines += markdown_table(
        ["suite", "task", "n", "base", "fine-tuned", "gap"],
        [[name, t, v["n"], f"{v['base']:.1f}", f"{v['finetuned']:.1f}", f"{v['finetuned'] - v['base']:+.1f}"]
         for name, s in r["per_suite"].items() for t, v in s["tasks"].items()])
    t, e = r["train"], r["eval_seconds"]
    lines += ["", f"Length-normalised (acc_norm) average: {r['base_avg_norm']:.1f} → {r['finetuned_avg_norm']:.1f}.",
              f"Fine-tune: {t['steps']} steps × batch {r['config']['batch_size']} ({t['samples_seen']} examples seen "
              f"of a {t['examples']}-example pool), LoRA r={r['config']['lora_r']} on "
              f"{', '.join(r['config']['target_modules'])}, lr {r['config']['lr']}, {t['seconds']:.0f} s.",
              f"Evaluation time: base {e['base']:.0f} s wall / {e['base_cpu']:.0f} s CPU, fine-tuned "
              f"{e['finetuned']:.0f} s wall / {e['finetuned_cpu']:.0f} s CPU, torch threads {r['torch_threads']}.",
              "", "The in-distribution suite holds held-out items of the pool's tasks (never the same input text); "
              "bbh holds BBH tasks that are not in the pool, mmlu 60 MMLU questions: those two measure transfer.", ""]
    if r.get("run_as") and r["run_as"] != r["command"]:
        lines += [f"Run as `{r['run_as']}`; the shipped config now holds those values, so the command above "
                  "repeats it.", ""]
    if r.get("earlier_tries"):
        lines += ["Earlier configurations in this repository's history (listed because choosing among tries "
                  "widens the real uncertainty beyond the interval above):", ""]
        lines += [f"- {t['what']}: headline {t['base_avg']:.1f} → {t['finetuned_avg']:.1f}, gap {t['gap']:+.1f}, "
                  f"95% CI [{t['ci95'][0]:+.1f}, {t['ci95'][1]:+.1f}] ({t['where']})" for t in r["earlier_tries"]]
        lines.append("")
    return "\n".join(lines)


def write(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(f"[signal] wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}", flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m devft_lab.experiments.lab_signal", description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=None, help="YAML file of SignalConfig fields")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override one field (repeatable), e.g. --set steps=50")
    args = ap.parse_args(argv)
    try:
        cfg = load_signal_config(args.config, args.overrides)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    r = run(cfg, "python -m devft_lab.experiments.lab_signal " + shlex.join(argv))
    print(f"[signal] gap {r['gap']:+.2f} points, 95% CI {r['ci95']} ({time.perf_counter() - t0:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
