"""The committed lab benchmark (``data/lab/``, built by :mod:`devft_lab.data.build`).

``load_pool()``                     the fine-tuning pool: instruction examples, ``category`` = task
``load_suite("bbh" | "mmlu" | "indist" | "lab", max_per_task=None, seed=0)``
                                    closed-ended items; ``"lab"`` = every suite in :data:`SUITES`

Every record is validated on load; a bad one raises :class:`DataError` naming file:line.
``DEVFT_LAB_DATA`` points the loaders at another folder with the same file names.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Sequence

from devft_lab.data.records import DataError, check_instruction, check_mc_item, iter_jsonl, where

SUITES: tuple[str, ...] = ("indist", "bbh", "mmlu")
SUITE_FILES = {"indist": "eval_indist.jsonl", "bbh": "eval_bbh.jsonl", "mmlu": "eval_mmlu.jsonl"}
POOL_FILE = "train.jsonl"


def data_dir() -> Path:
    """``$DEVFT_LAB_DATA`` or the repository's ``data/lab``."""
    env = os.environ.get("DEVFT_LAB_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "data" / "lab"


def load_pool(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The fine-tuning pool (default ``data/lab/train.jsonl``), each example checked."""
    path = Path(path) if path is not None else data_dir() / POOL_FILE
    out = []
    for n, ex in iter_jsonl(path):
        check_instruction(ex, where(path, n))
        if not isinstance(ex.get("category"), str) or not ex["category"]:
            raise DataError(f"{where(path, n)}: missing 'category' (the pool is partitioned by it).")
        out.append(ex)
    if not out:
        raise DataError(f"{path}: the pool is empty.")
    return out


def read_items(path: str | Path) -> list[dict[str, Any]]:
    """Closed-ended items of one JSONL file, each checked (:func:`check_mc_item`)."""
    return [check_mc_item(it, where(path, n)) for n, it in iter_jsonl(path)]


def expand_suites(names: str | Sequence[str]) -> list[str]:
    """Suite names with ``"lab"`` expanded, order kept, duplicates dropped; unknown -> DataError."""
    names = [names] if isinstance(names, str) else list(names)
    out: list[str] = []
    for name in names:
        if name == "lab":
            parts = list(SUITES)
        elif name in SUITE_FILES:
            parts = [name]
        else:
            raise DataError(f"unknown evaluation suite {name!r}; known suites: "
                            f"{', '.join(SUITES)} and 'lab' (all of them).")
        out += [p for p in parts if p not in out]
    return out


def load_suite(name: str, max_per_task: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Items of suite ``name`` (``"lab"``: all suites); at most ``max_per_task`` per task,
    drawn with ``random.Random(seed)`` and kept in file order."""
    items: list[dict[str, Any]] = []
    for suite in expand_suites(name):
        rows = read_items(data_dir() / SUITE_FILES[suite])
        if max_per_task is not None:
            if max_per_task < 1:
                raise DataError(f"max_per_task must be >= 1 (got {max_per_task}).")
            by_task: dict[str, list[int]] = {}
            for i, r in enumerate(rows):
                by_task.setdefault(r["task"], []).append(i)
            keep: set[int] = set()
            for task in sorted(by_task):
                idx = by_task[task]
                keep.update(idx if len(idx) <= max_per_task
                            else random.Random(f"{seed}:{task}").sample(idx, max_per_task))
            rows = [r for i, r in enumerate(rows) if i in keep]
        items += rows
    return items
