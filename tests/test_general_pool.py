"""The general instruction pool and the held-out suite (data/general): committed files, no task or
question shared with any evaluation suite, per-task cap, determinism of the build, the paper-regime config."""
from __future__ import annotations

import json
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from devft_lab.data import general as G
from devft_lab.data.build import sha256_file
from devft_lab.data.lab import expand_suites, general_dir, load_pool, load_suite, read_items
from devft_lab.data.records import compact_chat, expand_chat
from devft_lab.data.loaders import load_examples
from devft_lab.data.records import DataError, normalise_text

EVAL_SUITES = ("indist", "bbh", "mmlu", "heldout")  # every suite a run can name by name
UNSEEN = ("bbh", "mmlu", "heldout")  # the paper regime's suites the general pool never saw (indist neither)


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((general_dir() / "MANIFEST.json").read_text())


@pytest.fixture(scope="module")
def pool() -> list[dict]:
    return load_pool(general_dir() / "train.jsonl")


@pytest.fixture(scope="module")
def suites() -> dict[str, list[dict]]:
    return {s: load_suite(s) for s in EVAL_SUITES}


# --------------------------------------------------------------------------- committed data
def test_committed_files_match_manifest(manifest):
    for name, info in manifest["files"].items():
        assert sha256_file(general_dir() / name) == info["sha256"], f"{name} changed since the build"
        rows = (general_dir() / name).read_text(encoding="utf-8").splitlines()
        assert len(rows) == info["n"]


def test_every_example_has_instruction_response_category_and_a_chat_ending_in_it(pool):
    for ex in pool:
        assert ex["instruction"].strip() and ex["response"].strip() and ex["category"].strip()
        assert ex["messages"][-1] == {"role": "assistant", "content": ex["response"]}
        assert {m["role"] for m in ex["messages"][:-1]} <= {"system", "user", "assistant"}
        assert ex["messages"][-2]["role"] == "user"


def test_pool_is_dozens_of_tasks_each_capped(pool, manifest):
    counts = Counter(ex["category"] for ex in pool)
    assert len(counts) >= 24, "the pool should mix dozens of tasks"
    assert max(counts.values()) <= manifest["cap_per_task"]
    assert len(pool) >= 2000
    assert counts == Counter(manifest["files"]["train.jsonl"]["per_task"])
    assert len({ex["id"] for ex in pool}) == len(pool)


def test_no_pool_task_is_an_evaluation_task(pool, suites):
    pool_tasks = {ex["category"] for ex in pool}
    for name, items in suites.items():
        assert pool_tasks.isdisjoint(it["task"] for it in items), name
    assert pool_tasks.isdisjoint({it["category"] for items in suites.values() for it in items})


def test_no_evaluation_question_is_in_the_pool(pool, suites):
    """No question of any suite (its text before the options) occurs inside a pool example."""
    for name, items in suites.items():
        assert G.leaks(pool, items) == [], name
    prompts = {normalise_text(it["prompt"]) for items in suites.values() for it in items}
    assert not prompts & {normalise_text(ex["instruction"]) for ex in pool}


def test_pool_and_heldout_come_from_disjoint_registry_folders(manifest):
    folders = {role: {G.folder(m[len(G.REGISTRY):]) for t in manifest["tasks"].values() if t["role"] == role
                      for m in t["members"]} for role in ("pool", "heldout")}
    assert folders["pool"] and folders["heldout"]
    assert folders["pool"].isdisjoint(folders["heldout"])
    assert folders["pool"].isdisjoint(G.EXCLUDED)


def test_unseen_suites_have_at_least_400_items(suites):
    assert sum(len(suites[s]) for s in UNSEEN) >= 400
    assert len(suites["heldout"]) == G.N_HELDOUT * len(G.HELDOUT_TASKS)


def test_heldout_answers_index_choices_and_vary_within_each_task(suites):
    by_task: dict[str, Counter] = {}
    for it in suites["heldout"]:
        assert 0 <= it["answer"] < len(it["choices"]) and len(set(it["choices"])) == len(it["choices"])
        assert it["prompt"].endswith("\nAnswer:") and "\nOptions:\n" in it["prompt"]
        by_task.setdefault(it["task"], Counter())[it["answer"]] += 1
    assert [t for t, c in by_task.items() if len(c) == 1] == []


def test_readme_holds_the_provenance_table_of_the_manifest(manifest):
    readme = (general_dir().parent / "README.md").read_text(encoding="utf-8")
    assert G.provenance_table(manifest) in readme


def test_general_is_a_builtin_source_with_task_categories(pool):
    examples = load_examples("general")
    assert len(examples) == len(pool)
    assert {ex["category"] for ex in examples} == {ex["category"] for ex in pool}


def test_dirichlet_split_of_the_general_pool_covers_every_example_once():
    from devft_lab.data.partition import partition_examples

    examples = load_examples("general")
    parts = partition_examples(examples, "dirichlet", 20, seed=42, min_samples=8, alpha=0.5)
    assert len(parts) == 20 and min(len(p) for p in parts) >= 8
    ids = [ex["id"] for p in parts for ex in p]
    assert sorted(ids) == sorted(ex["id"] for ex in examples)


def test_heldout_is_a_named_suite_outside_lab():
    assert expand_suites(["heldout", "bbh"]) == ["heldout", "bbh"]
    assert "heldout" not in expand_suites("lab")
    with pytest.raises(DataError, match="heldout"):
        load_suite("nope")


# --------------------------------------------------------------------------- record conversion
def test_split_options_reads_the_three_letter_styles():
    assert G.split_options("Q?\nA. x\nB. y\nC. z") == ("Q?", ["x", "y", "z"], "ABC")
    assert G.split_options("Q?\n\n A: up\n B: down") == ("Q?", ["up", "down"], "AB")
    assert G.split_options("Q?\na) one\nb) two") == ("Q?", ["one", "two"], "AB")
    assert G.split_options("Q?\nB. x\nC. y") is None  # must start at A
    assert G.split_options("just a question") is None


def test_few_shot_turns_become_user_and_assistant():
    turns = G.chat_turns([{"role": "system", "content": "s"}, {"role": "system", "name": "example_user", "content": "q1"},
                          {"role": "system", "name": "example_assistant", "content": "a1"},
                          {"role": "user", "content": "q2"}], "x")
    assert [t["role"] for t in turns] == ["system", "user", "assistant", "user"]
    assert G.chat_turns("plain", "x") == [{"role": "user", "content": "plain"}]


def test_examples_asking_for_shown_work_or_without_answer_are_dropped():
    ok = {"input": [{"role": "user", "content": "2+2?"}], "ideal": "4"}
    assert G.pool_example("t", 0, ok, "x")["response"] == "4"
    assert G.pool_example("t", 0, {**ok, "ideal": ["4", "four"]}, "x")["response"] == "4"
    assert G.pool_example("t", 0, {**ok, "ideal": ""}, "x") is None
    work = {"input": [{"role": "user", "content": "Think step by step: 2+2?"}], "ideal": "4"}
    assert G.pool_example("t", 0, work, "x") is None
    long = {"input": [{"role": "user", "content": "x" * G.MAX_CHARS}], "ideal": "4"}
    assert G.pool_example("t", 0, long, "x") is None


# --------------------------------------------------------------------------- the build itself
def _fake_wheel(path: Path, n: int = 30) -> Path:
    """A miniature evals wheel: three pool tasks, one labelled and one lettered held-out task."""
    def rows(make):
        return "\n".join(json.dumps(make(i)) for i in range(n)) + "\n"
    files = {
        "adder/samples.jsonl": rows(lambda i: {"input": [{"role": "system", "content": "Add."},
                                                         {"role": "user", "content": f"{i} + {i}"}], "ideal": str(2 * i)}),
        "echo/samples.jsonl": rows(lambda i: {"input": f"Repeat exactly this one word back to me: w{i}.", "ideal": [f"w{i}"]}),
        "dup/samples.jsonl": rows(lambda i: {"input": [{"role": "user", "content": "Same question?"}], "ideal": "yes"}),
        "yn/samples.jsonl": rows(lambda i: {"input": [{"role": "system", "content": "Answer Yes or No."},
                                                      {"role": "user", "content": f"Is {i} even?\nAnswer:"}],
                                            "ideal": "Yes" if i % 2 == 0 else "No"}),
        "mc/samples.jsonl": rows(lambda i: {"input": [{"role": "system", "content": "Reply with the letter."},
                                                      {"role": "user", "content": f"Pick {i}.\nA. {i}\nB. {i + 1}\nC. {i + 2}"}],
                                            "ideal": "ABC"[i % 3]}),
    }
    with zipfile.ZipFile(path, "w") as zf:
        for member, text in sorted(files.items()):
            zf.writestr(G.REGISTRY + member, text)
    return path


FAKE_POOL = (G.PoolTask("adder", ("adder/samples.jsonl",)), G.PoolTask("echo", ("echo/samples.jsonl",)),
             G.PoolTask("dup", ("dup/samples.jsonl",)))
FAKE_HELD = (G.HeldoutTask("yn", "yn/samples.jsonl", ("Yes", "No")), G.HeldoutTask("mc", "mc/samples.jsonl"))


def test_build_is_deterministic_capped_and_converts_items(tmp_path):
    wheel = _fake_wheel(tmp_path / "evals.whl")
    m1 = G.build_general(wheel, tmp_path / "a", {}, FAKE_POOL, FAKE_HELD, cap=12, n_heldout=5)
    m2 = G.build_general(wheel, tmp_path / "b", {}, FAKE_POOL, FAKE_HELD, cap=12, n_heldout=5)
    assert m1 == m2
    for name in ("train.jsonl", "eval_heldout.jsonl", "MANIFEST.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert m1["files"]["train.jsonl"]["per_task"] == {"adder": 12, "echo": 12, "dup": 1}  # cap; duplicates once
    pool = load_pool(tmp_path / "a" / "train.jsonl")
    assert all(ex["response"] == str(2 * int(ex["instruction"].split()[-1])) for ex in pool if ex["category"] == "adder")
    items = read_items(tmp_path / "a" / "eval_heldout.jsonl")
    for it in items:
        if it["task"] == "yn":
            assert it["choices"] == ["Yes", "No"] and "Answer Yes or No." in it["prompt"]
            assert it["answer"] == int(it["prompt"].split("Is ")[1].split()[0]) % 2
        else:  # lettered options: the texts are the choices, the letter picks the answer
            k = int(it["prompt"].split("Pick ")[1].split(".")[0])
            assert it["choices"] == [str(k), str(k + 1), str(k + 2)] and it["answer"] == k % 3
            assert "Reply with the letter" not in it["prompt"]


def test_build_refuses_a_pool_task_that_is_an_evaluation_task(tmp_path):
    wheel = _fake_wheel(tmp_path / "evals.whl")
    other = {"bbh": [{"id": "adder-1", "task": "adder", "prompt": "x\nOptions:\n- a\nAnswer:"}]}
    with pytest.raises(DataError, match="pool tasks that are evaluation tasks: \\['adder'\\]"):
        G.build_general(wheel, tmp_path / "o", other, FAKE_POOL, FAKE_HELD, cap=5, n_heldout=5)


def test_build_refuses_an_evaluation_question_inside_the_pool(tmp_path):
    wheel = _fake_wheel(tmp_path / "evals.whl")
    planted = {"id": "q-1", "task": "other", "prompt": "Repeat exactly this one word back to me: w7.\nOptions:\n- w7\nAnswer:"}
    with pytest.raises(DataError, match="evaluation questions found in the general pool"):
        G.build_general(wheel, tmp_path / "o", {"bbh": [planted]}, FAKE_POOL, FAKE_HELD, cap=30, n_heldout=5)
    # the leak check works on question text: a 40-character question planted inside a pool example
    pool = [{"instruction": "Prefix. " + "What is the colour of the sky at noon today?"}]
    assert G.leaks(pool, [{"id": "z", "prompt": "What is the colour of the sky at noon today?\nOptions:\n- a\nAnswer:"}]) == ["z"]


def test_build_names_a_missing_member(tmp_path):
    wheel = _fake_wheel(tmp_path / "evals.whl")
    with pytest.raises(DataError, match="no member evals/registry/data/nope/x.jsonl"):
        G.build_general(wheel, tmp_path / "o", {}, (G.PoolTask("nope", ("nope/x.jsonl",)),), FAKE_HELD, 5, 5)


# --------------------------------------------------------------------------- the paper-regime config
def test_paper_regime_config_validates_and_its_pool_never_sees_its_suites(pool):
    from devft_lab.runner.config import load_config, stage_rounds

    cfg = load_config("paper_regime")
    assert cfg.data.source == "general" and cfg.devft.enabled
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.target_modules) == (32, 64, ["q_proj", "v_proj"])
    assert (cfg.data.num_clients, cfg.fed.clients_per_round) == (20, 2)
    assert 5e-5 <= cfg.train.lr <= 1e-4 and cfg.train.schedule == "cosine"
    assert len(stage_rounds(cfg)) == cfg.devft.stages == 4 and min(stage_rounds(cfg)) >= 2
    names = expand_suites(cfg.eval.suites)
    items = [it for s in names for it in load_suite(s, cfg.eval.max_per_task)]
    assert {ex["category"] for ex in pool}.isdisjoint(it["task"] for it in items)
    assert sum(len(load_suite(s, cfg.eval.max_per_task)) for s in names if s in UNSEEN) >= 400


def test_the_pool_file_stores_each_chat_once_and_loading_derives_instruction_and_response(pool):
    raw = [json.loads(line) for line in (general_dir() / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all(set(r) == {"id", "category", "messages"} for r in raw)
    for r, ex in zip(raw, pool):
        assert ex["response"] == r["messages"][-1]["content"] and ex["input"] == ""
        assert ex["instruction"] == "\n\n".join(m["content"].strip() for m in r["messages"][:-1] if m["content"].strip())
        assert compact_chat(ex) == r and expand_chat(r) == ex
