"""Records on disk: JSONL reading/writing and the checks every example passes.

Two record shapes flow through devft_lab:

* an **instruction example** (the fine-tuning pool, users' data)::

      {"instruction": str, "input": str, "response": str, "category": str}
      (optionally "messages": [{"role", "content"}, ...] for chat data; a file may store a chat
      example compactly as {"id", "category", "messages"}: :func:`expand_chat` derives the rest)

* a **closed-ended item** (the evaluation suites)::

      {"id", "task", "category", "prompt", "choices": [str, ...], "answer": int, "split"}

Every check raises :class:`DataError` naming the file and line (``where``) and the fix.
"""
from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path
from typing import Any, Iterable, Iterator

MC_FIELDS = ("id", "task", "category", "prompt", "choices", "answer", "split")


def chat_instruction(turns: Iterable[dict[str, Any]]) -> str:
    """The turns before the answer as one instruction text: their contents joined by blank lines
    (what the ``plain`` and ``alpaca`` templates show of a chat example)."""
    return "\n\n".join(t["content"].strip() for t in turns if t["content"].strip())


def expand_chat(rec: dict[str, Any]) -> dict[str, Any]:
    """A compact chat record ``{"id", "category", "messages"}`` as a full instruction example:
    ``instruction`` from the turns before the answer (:func:`chat_instruction`), ``input`` empty,
    ``response`` the last (assistant) turn. Records that already carry a ``response`` pass as they are."""
    if "response" in rec or not isinstance(rec.get("messages"), list) or not rec["messages"]:
        return rec
    msgs = rec["messages"]
    full = {**rec, "instruction": chat_instruction(msgs[:-1]), "input": "", "response": msgs[-1].get("content", "")}
    return dict(sorted(full.items()))


def compact_chat(ex: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`expand_chat` for a chat example: drop the fields its ``messages`` determine."""
    return {k: v for k, v in ex.items() if k not in ("instruction", "input", "response")}


class DataError(ValueError):
    """Bad data; the message says where (file:line) and what to do."""


def where(path: str | Path, line: int | None = None) -> str:
    """``file:line`` (or just ``file``) for error messages."""
    return f"{path}:{line}" if line is not None else str(path)


def not_utf8(path: str | Path, err: UnicodeDecodeError | None = None) -> DataError:
    """The error for a data file that is not UTF-8 (Latin-1, UTF-16, ...): file, line, byte, fix."""
    raw = Path(path).read_bytes()
    try:
        raw.decode("utf-8-sig")
        start = err.start if err is not None else 0
    except UnicodeDecodeError as e:
        start = e.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
    line = raw.count(b"\n", 0, start) + 1
    utf16 = raw[:2] in (b"\xff\xfe", b"\xfe\xff")
    source = "UTF-16" if utf16 else "LATIN1"
    return DataError(f"{where(path, line)}: not UTF-8 text (byte {raw[start]:#04x} at offset {start}"
                     f"{'; the file is UTF-16' if utf16 else ''}). Save the file as UTF-8 "
                     f"(iconv -f {source} -t UTF-8 FILE > NEW, or 'Save as UTF-8' in an editor) and run again.")


def read_text(path: str | Path) -> str:
    """A data file's text: UTF-8, with or without a byte-order mark (Windows tools write one);
    another encoding raises :class:`DataError` (:func:`not_utf8`)."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise not_utf8(path, e) from None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSONL file (UTF-8, a
    byte-order mark allowed; :func:`not_utf8` names the line of a byte that is not)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file. Check the path, or build the lab data: "
                        "python -m devft_lab.data.build")
    if path.is_dir():
        raise DataError(f"{path} is a folder; give a .jsonl file (one JSON object a line).")
    with open(path, encoding="utf-8-sig") as f:
        n = 0
        while True:
            try:
                line = f.readline()
            except UnicodeDecodeError as e:
                raise not_utf8(path, e) from None
            if not line:
                return
            n += 1
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where(path, n)}: malformed JSON ({e.msg} at column {e.colno}). "
                                "Each line must be one complete JSON object.") from None
            if not isinstance(obj, dict):
                raise DataError(f"{where(path, n)}: expected a JSON object, got {type(obj).__name__}.")
            yield n, obj


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows deterministically (sorted keys, UTF-8, ``\\n`` endings); return the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n")
            n += 1
    return n


def normalise_text(text: str) -> str:
    """Text for duplicate/leak checks: NFKC, lower case, whitespace collapsed."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip().lower()


def check_mc_item(item: dict[str, Any], at: str) -> dict[str, Any]:
    """Validate one closed-ended item; return it unchanged or raise :class:`DataError`."""
    missing = [k for k in MC_FIELDS if k not in item]
    if missing:
        raise DataError(f"{at}: missing field(s) {missing}; an evaluation item needs {list(MC_FIELDS)}.")
    if not isinstance(item["prompt"], str) or not item["prompt"].strip():
        raise DataError(f"{at}: 'prompt' must be a non-empty string.")
    choices = item["choices"]
    if not isinstance(choices, list) or not choices:
        raise DataError(f"{at}: 'choices' is empty; give at least one answer string "
                        "(exact-match items list their accepted answers here).")
    if not all(isinstance(c, str) and c for c in choices):
        raise DataError(f"{at}: every entry of 'choices' must be a non-empty string.")
    seen: dict[str, int] = {}
    for i, c in enumerate(choices):
        if c in seen:
            raise DataError(f"{at}: choices {seen[c]} and {i} are the same ({c!r}); the model could not tell "
                            "them apart. Make every choice different (or drop the repeat and fix 'answer').")
        seen[c] = i
    ans = item["answer"]
    if isinstance(ans, bool) or not isinstance(ans, int) or not 0 <= ans < len(choices):
        raise DataError(f"{at}: 'answer' = {ans!r} is out of range; it must be an index "
                        f"0..{len(choices) - 1} into 'choices'.")
    return item


def check_instruction(ex: dict[str, Any], at: str) -> dict[str, Any]:
    """Validate one instruction example (instruction/input/response/category)."""
    for key in ("instruction", "response"):
        if not isinstance(ex.get(key), str):
            raise DataError(f"{at}: field {key!r} must be a string, got {type(ex.get(key)).__name__}.")
    if not ex["instruction"].strip() and not ex.get("messages"):
        raise DataError(f"{at}: empty instruction.")
    if not ex["response"].strip():
        raise DataError(f"{at}: empty response; the loss is computed on the response only.")
    if not isinstance(ex.get("input", ""), str):
        raise DataError(f"{at}: field 'input' must be a string.")
    return ex
