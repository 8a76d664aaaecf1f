"""Users' own instruction data -> a list of instruction examples (see :mod:`devft_lab.data.records`).

``load_examples(source)`` accepts:

* a local **Alpaca-style** file: ``.json`` (a list of objects) or ``.jsonl`` (one object a
  line) with ``instruction``, optional ``input`` and ``output`` (Taori et al. 2023; the format of
  Alpaca-GPT4, the data DevFT fine-tunes on). ``response`` is accepted in place of ``output``.
* a local **chat** JSONL file: each line ``{"messages": [{"role", "content"}, ...]}``; the last
  turn must be the assistant's and is the response, the last user turn is the instruction, and
  the whole conversation is kept under ``"messages"`` for the ``chat`` template.
* ``"lab"``: the lab benchmark's fine-tuning pool (:func:`devft_lab.data.lab.load_pool`).
* ``"general"``: the general instruction pool (``data/general/train.jsonl``, chat form,
  ``category`` = task; :mod:`devft_lab.data.general`).
* ``"tiny"``: 64 synthetic examples (copy, reverse, add, upper), generated in code, for tests.
* anything else: a Hugging Face ``datasets.load_dataset`` name (needs ``pip install datasets``
  and a network), with Alpaca or ``messages`` columns.

A local file is one split (``split`` is ignored for it). Every example is checked with
:func:`check_instruction`; bad records raise :class:`DataError` naming ``file:line``.
"""
from __future__ import annotations

import json
import random
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator

from devft_lab.data.records import DataError, check_instruction, iter_jsonl, read_text, where

BUILTINS = ("lab", "general", "tiny")
DEFAULT_CATEGORY = "default"
ROLES = ("system", "user", "assistant")


def load_examples(source: str, split: str = "train", max_samples: int | None = None, seed: int = 0,
                  *, category_field: str | None = None) -> list[dict[str, Any]]:
    """Instruction examples ``{"instruction", "input", "response", "category"}`` (+ ``"messages"``).

    ``category_field`` names the record field that holds each example's category (every record
    must have it); otherwise a record's ``category`` field is used, else ``"default"``.
    ``max_samples`` keeps a seeded random subset, in the source's order.
    """
    if max_samples is not None and max_samples < 1:
        raise DataError(f"max_samples = {max_samples} must be >= 1 (or None for all examples).")
    source = str(source)
    if source in BUILTINS:
        examples = _load_builtin(source, split)
    elif Path(source).suffix.lower() in (".json", ".jsonl") or Path(source).is_file():
        examples = list(_convert(_read_file(Path(source)), category_field))
    else:
        examples = list(_convert(_read_hub(source, split), category_field))
    if not examples:
        raise DataError(f"{source}: no examples found; check the file (or split {split!r}).")
    if max_samples is not None and max_samples < len(examples):
        keep = sorted(random.Random(seed).sample(range(len(examples)), max_samples))
        examples = [examples[i] for i in keep]
    return examples


def _read_file(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(location, record)`` pairs from a ``.json`` list or a JSONL file."""
    if not path.is_file():
        raise DataError(f"{path}: no such file. Give a local .json/.jsonl file, a builtin "
                        f"({', '.join(BUILTINS)}), or a Hugging Face dataset name.")
    if path.suffix.lower() == ".jsonl":
        for n, obj in iter_jsonl(path):
            yield where(path, n), obj
        return
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{where(path, e.lineno)}: malformed JSON ({e.msg} at column {e.colno}). "
                        "A .json file must hold one list of objects; use .jsonl for one object a line.") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of examples, got {type(data).__name__}; "
                        "Alpaca files are [{\"instruction\": ..., \"input\": ..., \"output\": ...}, ...].")
    lines = _item_lines(text, len(data))
    for i, obj in enumerate(data):
        at = f"{where(path, lines[i])} (item {i})" if lines else f"{path} (item {i})"
        if not isinstance(obj, dict):
            raise DataError(f"{at}: expected a JSON object, got {type(obj).__name__}.")
        yield at, obj


def _item_lines(text: str, count: int) -> list[int] | None:
    """Line number where each top-level list item starts (None if the text cannot be walked)."""
    decoder, lines, pos = json.JSONDecoder(), [], text.index("[") + 1
    try:
        for _ in range(count):
            while text[pos] in " \t\r\n,":
                pos += 1
            lines.append(text.count("\n", 0, pos) + 1)
            _, pos = decoder.raw_decode(text, pos)
    except (ValueError, IndexError):
        return None
    return lines


def _read_hub(name: str, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows of a Hugging Face dataset (``datasets`` imported lazily)."""
    try:
        import datasets  # optional/heavy: datasets (pip install devft-lab[hub])
    except ImportError:
        raise DataError(f"{name!r} is not a local file or a builtin ({', '.join(BUILTINS)}); loading it "
                        "as a Hugging Face dataset needs `pip install datasets` and a network. "
                        "Or pass a local Alpaca .json/.jsonl or chat .jsonl file.") from None
    try:
        rows = datasets.load_dataset(name, split=split)
    except Exception as e:  # offline, unknown name, unknown split: all are the user's to fix
        raise DataError(f"could not load dataset {name!r} (split {split!r}): {type(e).__name__}: {e}. "
                        "Check the name and split, and the network (HF_HUB_OFFLINE), or use a local file.") from None
    for i, row in enumerate(rows):
        yield f"{name}[{split}] row {i}", dict(row)


def _convert(records: Iterable[tuple[str, dict[str, Any]]], category_field: str | None) -> Iterator[dict[str, Any]]:
    """Alpaca or chat records -> checked instruction examples."""
    for at, rec in records:
        ex = _from_chat(rec, at) if "messages" in rec else _from_alpaca(rec, at)
        if category_field is not None:
            if category_field not in rec:
                raise DataError(f"{at}: no field {category_field!r} (category_field); every record "
                                f"needs it, or leave category_field unset. Fields: {sorted(rec)}.")
            ex["category"] = str(rec[category_field])
        else:
            ex["category"] = str(rec.get("category", DEFAULT_CATEGORY))
        yield check_instruction(ex, at)


def _from_alpaca(rec: dict[str, Any], at: str) -> dict[str, Any]:
    """``instruction``/``input``/``output`` (or ``response``) -> an example."""
    if "instruction" not in rec:
        raise DataError(f"{at}: missing 'instruction'. Alpaca records need instruction, input "
                        f"(optional) and output; chat records need 'messages'. Fields: {sorted(rec)}.")
    out_key = "output" if "output" in rec else "response" if "response" in rec else None
    if out_key is None:
        raise DataError(f"{at}: missing 'output' (the response). Alpaca records need instruction, "
                        f"input (optional) and output. Fields: {sorted(rec)}.")
    inp = rec.get("input")
    return {"instruction": rec["instruction"], "input": "" if inp is None else inp, "response": rec[out_key]}


def _from_chat(rec: dict[str, Any], at: str) -> dict[str, Any]:
    """``messages`` -> an example: the last (assistant) turn is the response."""
    msgs = rec["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{at}: 'messages' is empty; give a list of {{role, content}} turns ending "
                        "with the assistant's reply.")
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{at}: message {j} must be {{\"role\": one of {list(ROLES)}, "
                            f"\"content\": string}}, got {m!r}.")
    if msgs[-1]["role"] != "assistant":
        raise DataError(f"{at}: the last message is {msgs[-1]['role']!r}; it must be the assistant's "
                        "reply (the response the loss is taken on).")
    users = [m["content"] for m in msgs[:-1] if m["role"] == "user"]
    if not users:
        raise DataError(f"{at}: no user message before the assistant's reply.")
    return {"instruction": users[-1], "input": "", "response": msgs[-1]["content"],
            "messages": [{"role": m["role"], "content": m["content"]} for m in msgs]}


def _load_builtin(name: str, split: str) -> list[dict[str, Any]]:
    if name == "tiny":
        return tiny_examples(split)
    try:
        from devft_lab.data import lab  # optional/heavy: the lab benchmark, read only when asked for
    except ImportError as e:
        raise DataError(f"the builtin 'lab' pool is unavailable ({e}); update devft_lab, "
                        "or pass a local .json/.jsonl file or 'tiny'.") from None
    if name == "general":
        path = lab.general_dir() / lab.POOL_FILE
        if not path.is_file():
            raise DataError(f"{path}: no such file; build it with python -m devft_lab.data.build --pool general.")
        return [dict(ex) for ex in lab.load_pool(path)]
    return [dict(ex) for ex in lab.load_pool()]


_WORDS = ("apple", "river", "stone", "cloud", "tiger", "maple", "pearl", "lemon",
          "north", "candle", "garden", "silver", "violet", "rocket", "bread", "ocean")


def tiny_examples(split: str = "train", n: int = 64) -> list[dict[str, Any]]:
    """``n`` deterministic synthetic examples in 4 categories (copy, reverse, add, upper).

    Each split draws from its own seed (CRC32 of the split name), so splits differ; examples
    are distinct for ``n <= 64``.
    """
    rng = random.Random(zlib.crc32(f"devft-tiny-{split}".encode()))
    words = {t: rng.sample(_WORDS, len(_WORDS)) for t in ("copy", "reverse", "upper")}
    sums = rng.sample([(a, b) for a in range(10) for b in range(10)], 100)
    tasks = ("copy", "reverse", "add", "upper")
    out = []
    for i in range(n):
        task, j = tasks[i % len(tasks)], i // len(tasks)
        if task == "add":
            a, b = sums[j % len(sums)]
            ex = ("Add the two numbers.", f"{a} + {b}", str(a + b))
        else:
            word = words[task][j % len(_WORDS)]
            ex = {"copy": ("Repeat the word.", word, word),
                  "reverse": ("Write the word backwards.", word, word[::-1]),
                  "upper": ("Write the word in capital letters.", word, word.upper())}[task]
        out.append({"instruction": ex[0], "input": ex[1], "response": ex[2], "category": task})
    return out
