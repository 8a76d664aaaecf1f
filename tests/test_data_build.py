"""The lab benchmark: committed files, determinism of the build, leak test, clear errors."""
from __future__ import annotations

import io
import json
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from devft_lab.data import build as B
from devft_lab.data.lab import SUITES, data_dir, expand_suites, load_pool, load_suite, read_items
from devft_lab.data.records import DataError, normalise_text


# --------------------------------------------------------------------------- committed data
def test_committed_files_match_manifest():
    manifest = json.loads((data_dir() / "MANIFEST.json").read_text())
    for name, info in manifest["files"].items():
        assert B.sha256_file(data_dir() / name) == info["sha256"], f"{name} changed since the build"


def test_no_evaluation_prompt_in_training_pool():
    pool = {normalise_text(ex["instruction"] + "\n" + ex.get("input", "")).strip() for ex in load_pool()}
    pool |= {normalise_text(ex["instruction"]) for ex in load_pool()}
    leaked = [it["id"] for it in load_suite("lab") if normalise_text(it["prompt"]) in pool]
    assert leaked == []


def test_pool_categories_are_the_indist_tasks_and_not_bbh():
    cats = {ex["category"] for ex in load_pool()}
    assert cats == {it["task"] for it in load_suite("indist")}
    assert cats.isdisjoint({it["task"] for it in load_suite("bbh")})


def test_answer_position_is_not_constant_within_a_task():
    """A fine-tune must not be able to score by always picking the same option."""
    by_task: dict[str, Counter] = {}
    for it in load_suite("lab"):
        by_task.setdefault(it["task"], Counter())[it["answer"]] += 1
    constant = [t for t, c in by_task.items() if len(c) == 1]
    assert constant == []


def test_load_suite_subsamples_per_task_with_seed():
    full = load_suite("bbh")
    a, b, c = load_suite("bbh", 5, seed=0), load_suite("bbh", 5, seed=0), load_suite("bbh", 5, seed=1)
    assert a == b and a != c
    assert max(Counter(it["task"] for it in a).values()) == 5
    assert {it["task"] for it in a} == {it["task"] for it in full}
    ids = [it["id"] for it in full]
    assert [ids.index(it["id"]) for it in a] == sorted(ids.index(it["id"]) for it in a)  # file order kept


def test_lab_expands_to_every_suite_and_unknown_suite_lists_known():
    assert expand_suites("lab") == list(SUITES)
    assert len(load_suite("lab", 1)) == sum(len(load_suite(s, 1)) for s in SUITES)
    with pytest.raises(DataError, match="known suites: indist, bbh, mmlu"):
        load_suite("truthfulqa")


# --------------------------------------------------------------------------- errors
GOOD = {"id": "x-1", "task": "t", "category": "t", "prompt": "Q?", "choices": ["a", "b"], "answer": 1, "split": "test"}


@pytest.mark.parametrize("line, message", [
    ('{"id": "x-2", "task": ', "malformed JSON"),
    (json.dumps({**GOOD, "choices": []}), "'choices' is empty"),
    (json.dumps({**GOOD, "answer": 2}), "out of range"),
    (json.dumps({**GOOD, "answer": -1}), "out of range"),
])
def test_bad_eval_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "eval.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + line + "\n")
    with pytest.raises(DataError, match=f"{path}:3: .*{message}"):
        read_items(path)


def test_bad_pool_line_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    ok = {"instruction": "Q?", "input": "", "response": "yes", "category": "t"}
    path.write_text(json.dumps(ok) + "\n" + json.dumps({**ok, "response": "  "}) + "\n")
    with pytest.raises(DataError, match=f"{path}:2: empty response"):
        load_pool(path)


def test_missing_file_says_how_to_build(tmp_path):
    with pytest.raises(DataError, match="devft_lab.data.build"):
        load_pool(tmp_path / "nope.jsonl")


# --------------------------------------------------------------------------- the build itself
def _fake_sources(folder: Path) -> tuple[Path, Path]:
    """A miniature bigbench sdist and evals wheel with the real member layout."""
    folder.mkdir(parents=True, exist_ok=True)
    yes_no = {"task_prefix": "Answer the question.\n", "examples": [
        {"input": f"Is {i} even?", "target_scores": {"yes": int(i % 2 == 0), "no": int(i % 2 == 1)}}
        for i in range(40)] + [{"input": "Is 0 even?", "target_scores": {"yes": 1, "no": 0}}]}  # duplicate input
    colour = {"examples": [
        {"input": f"What colour is thing {i}?", "target_scores": {"red": int(i % 3 == 0), "green": int(i % 3 == 1),
                                                                  "blue": int(i % 3 == 2)}} for i in range(30)]}
    sdist = folder / "bigbench-1.0.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for member, spec in (("yes_no", yes_no), ("colour", colour)):
            data = json.dumps(spec).encode()
            info = tarfile.TarInfo(f"{B.BB_ROOT}{member}/task.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    wheel = folder / "evals-3.0.1.post1-py3-none-any.whl"
    rows = [{"topic": "maths", "question": f"What is {i}+1?\nA. {i}\nB. {i + 1}\nC. {i + 2}\nD. {i + 3}\nAnswer:",
             "answer": "B"} for i in range(10)]
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(B.MMLU_MEMBER, "\n".join(json.dumps(r) for r in rows) + "\n")
    return sdist, wheel


FAKE_TASKS = (B.BBTask("yes_no", "yes_no", "train", 10, 20, shuffle_choices=False),
              B.BBTask("colour", "colour", "ood", 8))


def test_build_is_deterministic_and_splits_are_disjoint(tmp_path):
    sdist, wheel = _fake_sources(tmp_path / "src")
    m1 = B.build(sdist, wheel, tmp_path / "a", tasks=FAKE_TASKS, n_mmlu=5)
    m2 = B.build(sdist, wheel, tmp_path / "b", tasks=FAKE_TASKS, n_mmlu=5)
    assert m1 == m2
    for name in m1["files"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert {n: i["n"] for n, i in m1["files"].items()} == {
        "train.jsonl": 20, "eval_indist.jsonl": 10, "eval_bbh.jsonl": 8, "eval_mmlu.jsonl": 5}
    pool = load_pool(tmp_path / "a" / "train.jsonl")
    indist = read_items(tmp_path / "a" / "eval_indist.jsonl")
    # the duplicated input "Is 0 even?" is one group: it never lands on both sides
    assert {normalise_text(e["instruction"]) for e in pool}.isdisjoint(normalise_text(i["prompt"]) for i in indist)
    assert all(e["response"] in ("yes", "no") and e["category"] == "yes_no" for e in pool)
    mmlu = read_items(tmp_path / "a" / "eval_mmlu.jsonl")
    assert all(it["choices"][it["answer"]] == str(int(it["choices"][0]) + 1) for it in mmlu)


def test_build_names_a_missing_task_member(tmp_path):
    sdist, wheel = _fake_sources(tmp_path / "src")
    with pytest.raises(DataError, match="no member .*nope/task.json"):
        B.build(sdist, wheel, tmp_path / "out", tasks=(B.BBTask("nope", "nope", "ood", 5),))
