"""``devft-lab reproduce``: the argument parser, the sitting (run cells, then write the tables)."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from devft_lab.experiments.reproduce.cells import (Plan, ReproduceError, SCALES, TABLES, adopt, cell_status,
                                                   cells_of, check_table, check_tag, run_cell, seeds_of)
from devft_lab.experiments.reproduce.tables import write_table


# --------------------------------------------------------------------------- command line
def _package_doc() -> str:
    import devft_lab.experiments.reproduce as package  # optional/heavy: devft_lab.experiments.reproduce (import cycle: the package imports this module; its docstring describes the command)

    return package.__doc__ or ""


def add_reproduce_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``reproduce`` to a ``devft-lab`` subparsers object (``func`` = :func:`run_args`)."""
    p = subparsers.add_parser("reproduce", help="regenerate the paper's tables (resumable)",
                              description=_package_doc().split("\n\n")[0])
    _arguments(p)
    p.set_defaults(func=run_args)
    return p


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("table", help=f"one of {', '.join(TABLES)}, or all")
    p.add_argument("--scale", default="lab", choices=list(SCALES), help="smoke (tiny, tests), lab (SmolLM2-135M), "
                   "paper (LLaMA, GPU)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per variant (default 3)")
    p.add_argument("--only", nargs="+", default=(), metavar="CELL", help="only these cells (devft-s42) or variants")
    p.add_argument("--max-cells", type=int, default=None, metavar="K", help="train at most K new cells this sitting")
    p.add_argument("--dry-run", action="store_true", help="list the cells and their status; train nothing")
    p.add_argument("--base", help="another base config (e.g. llama31_8b at paper scale); its name becomes the tag")
    p.add_argument("--set", nargs="+", default=(), metavar="KEY=VALUE", dest="extra",
                   help="overrides for every cell (e.g. model.name=gemma3-270m); needs --tag")
    p.add_argument("--tag", default="", help="name for a non-default setup: its own runs folder and table files")
    p.add_argument("--results", default="results", help="where tables (and repro/ runs) go (default results)")
    p.add_argument("--runs", default=None, help="runs folder (default RESULTS/repro/SCALE[-TAG])")
    p.add_argument("--in-process", action="store_true", help="train cells in this process (default: one "
                   "subprocess per cell, so memory figures and crashes stay per cell)")
    p.add_argument("--adopt", nargs="+", default=(), metavar="RUN_DIR", help="copy finished runs made with "
                   "`devft-lab run` into the cells whose config they match (saves retraining them)")
    p.add_argument("--rerun-stale", action="store_true", help="retrain cells whose folder holds another config")
    p.add_argument("--quiet", action="store_true", help="no progress bars from the runs")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="devft-lab reproduce", description=_package_doc().split("\n\n")[0])
    _arguments(p)
    return p


def plan_of(args) -> Plan:
    scale = SCALES[args.scale]
    base = args.base or scale.base
    tag = args.tag or (Path(base).stem if base != scale.base and not args.extra else "")
    check_tag(tag, args.extra)
    return Plan(scale, base, tuple(args.extra), tag, Path(args.results), Path(args.runs) if args.runs else None)


# Options that only pace or narrow a sitting: the table they write is the same without them.
_SITTING_OPTIONS = {"--max-cells": 1, "--only": -1, "--adopt": -1, "--quiet": 0, "--in-process": 0}


def table_command(argv: Sequence[str]) -> str:
    """The command a table records: the invocation without sitting options (``--max-cells``,
    ``--only``, ``--adopt``, ``--quiet``, ``--in-process``), i.e. the one that trains every cell."""
    out, i = [], 0
    argv = list(argv)
    while i < len(argv):
        a = argv[i]
        name = a.split("=", 1)[0]
        if name in _SITTING_OPTIONS:
            n = _SITTING_OPTIONS[name]
            i += 1
            if "=" in a or n == 0:
                continue
            if n == 1:
                i += 1
            else:  # all values up to the next option
                while i < len(argv) and not argv[i].startswith("-"):
                    i += 1
            continue
        out.append(a)
        i += 1
    return "devft-lab reproduce " + " ".join(shlex.quote(a) for a in out)


def train_cells(plan: Plan, cells, args, echo: Callable[[str], None] = print) -> list[str]:
    """Train the cells that are not done, at most ``args.max_cells`` of them (one sitting of
    ``reproduce`` or ``sweep``); returns the names of the cells that failed (each resumable)."""
    if args.max_cells is not None and args.max_cells < 0:
        raise ReproduceError(f"--max-cells {args.max_cells}: give K >= 0.")
    trained, failed = 0, []
    for c in cells:
        if cell_status(plan, c) == "done":
            continue
        if args.max_cells is not None and trained >= args.max_cells:
            echo(f"stopping: --max-cells {args.max_cells} reached; run the command again to continue.")
            break
        echo(f"[{time.strftime('%H:%M:%S')}] {c.name}: training ({cell_status(plan, c)})")
        t0 = time.perf_counter()
        try:
            what = run_cell(plan, c, isolate=not args.in_process, quiet=args.quiet, rerun_stale=args.rerun_stale)
        except Exception as e:  # one failed cell must not end a long sitting; it is reported and resumable
            failed.append(c.name)
            echo(f"{c.name}: FAILED ({e}); the next run of this command resumes it.")
            continue
        trained += what in ("started", "resumed")
        echo(f"[{time.strftime('%H:%M:%S')}] {c.name}: {what} in {time.perf_counter() - t0:.0f} s")
    return failed


def run_args(args, argv: Sequence[str] | None = None, echo: Callable[[str], None] = print) -> int:
    """Run a parsed ``reproduce`` command: cells first (resumable), then the tables."""
    tables = list(TABLES) if args.table == "all" else [check_table(args.table)]
    plan = plan_of(args)
    seeds = seeds_of(plan, args.seeds)
    cells = cells_of(tables, seeds, args.only)
    for note in ([] if args.dry_run else adopt(plan, cells, args.adopt)):
        echo(note)
    command = table_command(argv if argv is not None else sys.argv[2:])
    if args.dry_run:
        for c in cells:
            echo(f"{c.name:28s} {cell_status(plan, c):8s} {plan.cell_dir(c)}")
        todo = sum(cell_status(plan, c) != "done" for c in cells)
        echo(f"{len(cells)} cells, {todo} to train; runs in {plan.root}")
        return 0
    failed = train_cells(plan, cells, args, echo)
    for t in tables:
        js, md = write_table(plan, t, seeds, command)
        echo(f"{t}: {json.loads(js.read_text())['status']} -> {js}, {md}")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m devft_lab.experiments.reproduce TABLE [options]`` (same as ``devft-lab reproduce``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return run_args(args, argv)
    except ValueError as e:  # ReproduceError and ConfigError
        print(f"devft-lab reproduce: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
