"""The committed lab benchmark (``data/lab/``, built by :mod:`devft_lab.data.build`).

``load_pool()``                     the fine-tuning pool: instruction examples, ``category`` = task
``load_suite("bbh" | "mmlu" | "indist" | "lab" | "heldout", max_per_task=None, seed=0)``
                                    closed-ended items; ``"lab"`` = every suite in :data:`SUITES`;
                                    ``"heldout"``: the general pool's unseen tasks (data/general)

A suite is a lab suite's name or **your own JSONL file** of multiple-choice items, one a
line, ``{"prompt": str, "choices": [str, ...], "answer": int}`` (optional ``id``, ``task``;
``task`` defaults to the file's stem). A file suite is reported under its stem:
``eval.suites=[data/examples/capitals_eval.jsonl]`` gives ``acc_capitals_eval`` (the mean of
the accuracies of its ``task`` values, as for a lab suite) and ``correct_capitals_eval`` (the
percentage of its items answered correctly). A run scores a file whole unless
``eval.max_per_file`` caps it (:func:`suite_cap`); ``eval.max_per_task`` caps the lab suites.

Every record is validated on load; a bad one raises :class:`DataError` naming file:line.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Sequence

from devft_lab.data.records import DataError, check_instruction, check_mc_item, expand_chat, iter_jsonl, where

SUITES: tuple[str, ...] = ("indist", "bbh", "mmlu")
SUITE_FILES = {"indist": "eval_indist.jsonl", "bbh": "eval_bbh.jsonl", "mmlu": "eval_mmlu.jsonl"}
POOL_FILE = "train.jsonl"
# data/general (devft_lab.data.general): suites outside "lab", named one by one
GENERAL_SUITE_FILES = {"heldout": "eval_heldout.jsonl"}


def data_dir() -> Path:
    """The repository's ``data/lab`` (the committed benchmark)."""
    return Path(__file__).resolve().parents[2] / "data" / "lab"


def general_dir() -> Path:
    """The repository's ``data/general`` (the general instruction pool and the held-out suite)."""
    return data_dir().parent / "general"


def suite_path(name: str) -> Path:
    """The committed file of a named suite (``indist``, ``bbh``, ``mmlu``, ``heldout``)."""
    if name in GENERAL_SUITE_FILES:
        return general_dir() / GENERAL_SUITE_FILES[name]
    return data_dir() / SUITE_FILES[name]


def load_pool(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The fine-tuning pool (default ``data/lab/train.jsonl``; ``data/general/train.jsonl`` is
    the general pool), each example checked."""
    path = Path(path) if path is not None else data_dir() / POOL_FILE
    out = []
    for n, ex in iter_jsonl(path):
        ex = expand_chat(ex)
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


def is_suite_file(name: str) -> bool:
    """A suite given as a file path (``*.jsonl``) rather than a lab suite name."""
    return str(name).lower().endswith(".jsonl")


def suite_name(spec: str) -> str:
    """The name a suite is reported under: a lab suite's own name, a file's stem."""
    return Path(spec).stem if is_suite_file(spec) else str(spec)


def read_user_items(path: str | Path) -> list[dict[str, Any]]:
    """Your own multiple-choice items: ``{prompt, choices, answer}`` a line (``id``, ``task``
    optional; ``task`` defaults to the file's stem), each checked, ``file:line`` on error."""
    path = Path(path)
    stem = path.stem
    out, seen = [], {}
    for n, it in iter_jsonl(path):
        at = where(path, n)
        missing = [k for k in ("prompt", "choices", "answer") if k not in it]
        if missing:
            raise DataError(f"{at}: missing field(s) {missing}; each line needs "
                            '{"prompt": "...", "choices": ["...", ...], "answer": <index of the right choice>}.')
        item = {"id": f"{stem}-{n}", "task": stem, "category": stem, "split": "eval", **it}
        if not isinstance(item["task"], str) or not item["task"]:
            raise DataError(f"{at}: 'task' must be a non-empty string (or leave it out).")
        item["id"] = str(item["id"])
        if item["id"] in seen:
            raise DataError(f"{at}: id {item['id']!r} repeats line {seen[item['id']]}; ids must be unique.")
        seen[item["id"]] = n
        out.append(check_mc_item(item, at))
    if not out:
        raise DataError(f"{path}: no items; write one JSON object a line.")
    return out


def expand_suites(names: str | Sequence[str]) -> list[str]:
    """Suite specs with ``"lab"`` expanded, order kept, duplicates dropped.

    A spec is a lab suite name or a ``.jsonl`` file; an unknown name, a missing file or two
    suites reported under the same name raise :class:`DataError`.
    """
    names = [names] if isinstance(names, str) else list(names)
    out: list[str] = []
    for name in names:
        name = str(name)
        if name == "lab":
            parts = list(SUITES)
        elif name in SUITE_FILES or name in GENERAL_SUITE_FILES:
            parts = [name]
        elif is_suite_file(name):
            if not Path(name).is_file():
                raise DataError(f"evaluation suite file {name}: no such file; give the path of a JSONL file of "
                                '{"prompt", "choices", "answer"} items (relative to where you run).')
            parts = [name]
        else:
            raise DataError(f"unknown evaluation suite {name!r}; known suites: "
                            f"{', '.join(SUITES)}, 'lab' (all of them), {', '.join(GENERAL_SUITE_FILES)} "
                            "(data/general), or a .jsonl file of your own items "
                            '({"prompt", "choices", "answer"} a line).')
        for p in parts:
            clash = [q for q in out if q != p and suite_name(q) == suite_name(p)]
            if clash:
                raise DataError(f"evaluation suites {clash[0]!r} and {p!r} would both be reported as "
                                f"{suite_name(p)!r}; rename one of the files.")
        out += [p for p in parts if p not in out]
    return out


def suite_cap(spec: str, max_per_task: int | None, max_per_file: int | None) -> int | None:
    """The per-task cap a suite is scored with: ``max_per_file`` for your own ``.jsonl`` file
    (None: the whole file), ``max_per_task`` for a lab suite (``eval.max_per_file`` and
    ``eval.max_per_task`` of a run config)."""
    return max_per_file if is_suite_file(spec) else max_per_task


def coverage(spec: str, cap: int | None, seed: int = 0) -> dict[str, Any]:
    """How much of one suite a cap scores: ``{"items", "of", "tasks", "cap"}`` (items scored, items
    in the suite, its tasks, and the config key that capped it, or None when nothing was left out)."""
    whole = load_suite(spec)
    scored = load_suite(spec, max_per_task=cap, seed=seed) if cap is not None else whole
    key = "eval.max_per_file" if is_suite_file(spec) else "eval.max_per_task"
    return {"items": len(scored), "of": len(whole), "tasks": len({r["task"] for r in whole}),
            "cap": f"{key}={cap}" if len(scored) < len(whole) else None}


def load_suite(name: str, max_per_task: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Items of suite ``name`` (``"lab"``: all suites; a ``.jsonl`` path: your own items); at most
    ``max_per_task`` per task, drawn with ``random.Random(seed)`` and kept in file order."""
    items: list[dict[str, Any]] = []
    for suite in expand_suites(name):
        rows = read_user_items(suite) if is_suite_file(suite) else read_items(suite_path(suite))
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
