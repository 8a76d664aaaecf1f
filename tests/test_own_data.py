"""Your own model and your own data (#17): GGUF paths, suites from a file, early validation,
schedule sizing, split suggestions, shared base tensors, submodel notes from the numbers."""
import json
import warnings
from pathlib import Path

import pytest
import torch

from devft_lab.cli import main
from devft_lab.core import models
from devft_lab.core.layers import decoder_layers
from devft_lab.core.models import ModelLoadError, load_model
from devft_lab.data.lab import expand_suites, load_suite, read_user_items, suite_name
from devft_lab.data.partition import feasible_split, partition
from devft_lab.data.records import DataError
from devft_lab.runner.config import ConfigError, load_config, stage_rounds

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_TRAIN = ROOT / "data" / "examples" / "capitals_train.jsonl"
EXAMPLE_EVAL = ROOT / "data" / "examples" / "capitals_eval.jsonl"


# --------------------------------------------------------------------------- GGUF paths
@pytest.fixture
def own_gguf(tmp_path, monkeypatch):
    """A .gguf file whose 'conversion' writes the tiny Qwen2 model (seed 0); counts conversions."""
    src = tmp_path / "mine" / "my-qwen.gguf"
    src.parent.mkdir()
    src.write_bytes(b"GGUF" * 64)
    calls = []

    def convert(s, dst):
        calls.append(Path(s))
        model, tok = models.tiny_model("qwen2", seed=0)
        model.save_pretrained(dst)
        tok.save_pretrained(dst)

    monkeypatch.setenv("DEVFT_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "_convert_gguf", convert)
    return src, calls


def test_a_gguf_file_path_is_converted_once_and_loads_the_model(own_gguf):
    src, calls = own_gguf
    model, _ = load_model(str(src), device="cpu")
    ref, _ = models.tiny_model("qwen2", seed=0)
    assert model.config.model_type == "qwen2"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))
    load_model(str(src), device="cpu")
    assert calls == [src.resolve()]  # the second load reads the cache
    folder = models.gguf_cache_folder(src)
    assert folder.parent == models.cache_dir() and folder.name.startswith("gguf-my-qwen-")
    assert models.cache_is_valid(folder)


def test_a_folder_holding_one_gguf_uses_the_same_cache(own_gguf):
    src, calls = own_gguf
    assert models.gguf_file_of(src.parent) == src.resolve()
    load_model(str(src.parent), device="cpu")
    load_model(str(src), device="cpu")
    assert len(calls) == 1


def test_gguf_paths_that_cannot_work_say_why(tmp_path):
    with pytest.raises(ModelLoadError, match="No GGUF file at"):
        models.gguf_file_of(tmp_path / "missing.gguf")
    two = tmp_path / "two"
    two.mkdir()
    for n in ("a.gguf", "b.gguf"):
        (two / n).write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match="holds 2 GGUF files.*a.gguf, b.gguf"):
        models.gguf_file_of(two)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert models.gguf_file_of(empty) is None
    with pytest.raises(ModelLoadError, match="No model folder or GGUF file"):
        load_model(str(tmp_path / "nothing-here"))


def test_a_gguf_transformers_cannot_read_gives_one_model_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DEVFT_LAB_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(ModelLoadError, match="Could not convert .*broken.gguf"):
        models.prepare_gguf(bad, verbose=False)
    assert not models.gguf_cache_folder(bad).exists()  # nothing half-written


def test_cli_model_prepare_takes_a_path(own_gguf, capsys):
    src, calls = own_gguf
    assert main(["model", "prepare", str(src)]) == 0
    assert str(models.gguf_cache_folder(src)) in capsys.readouterr().out and len(calls) == 1
    assert main(["model", "prepare", str(src.parent / "nope")]) == 2
    assert "not a .gguf file" in capsys.readouterr().err


# --------------------------------------------------------------------------- suites from a file
def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_user_items_get_defaults_and_are_named_after_the_file(tmp_path):
    f = _write(tmp_path / "med_mc.jsonl", [
        json.dumps({"prompt": "Q1?", "choices": ["a", "b"], "answer": 1}),
        "",
        json.dumps({"prompt": "Q2?", "choices": ["c", "d", "e"], "answer": 0, "task": "cardio", "id": 7}),
    ])
    items = read_user_items(f)
    assert [(i["id"], i["task"]) for i in items] == [("med_mc-1", "med_mc"), ("7", "cardio")]
    assert suite_name(str(f)) == "med_mc" and suite_name("indist") == "indist"
    assert expand_suites([str(f), "indist", str(f)]) == [str(f), "indist"]
    assert [i["prompt"] for i in load_suite(str(f), max_per_task=1)] == ["Q1?", "Q2?"]  # one per task


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "Q?", "choices": ["a"]}', r"bad.jsonl:2: missing field\(s\) \['answer'\]"),
    ('{"prompt": "Q?", "choices": ["a", "b"], "answer": 2}', r"bad.jsonl:2: 'answer' = 2 is out of range"),
    ('{"prompt": "Q?", "choices": [], "answer": 0}', r"bad.jsonl:2: 'choices' is empty"),
    ('{"prompt": "Q?", "choices": ["a"], "answer": 0', r"bad.jsonl:2: malformed JSON"),
    ('{"prompt": "Q2", "choices": ["a"], "answer": 0, "id": "x"}', r"bad.jsonl:2: id 'x' repeats line 1"),
    ('{"prompt": "Q?", "choices": ["Paris", "Rome", "Paris"], "answer": 0}',
     r"bad.jsonl:2: choices 0 and 2 are the same \('Paris'\)"),
])
def test_bad_user_items_name_file_and_line(tmp_path, line, message):
    f = _write(tmp_path / "bad.jsonl", ['{"prompt": "Q1", "choices": ["a"], "answer": 0, "id": "x"}', line])
    with pytest.raises(DataError, match=message):
        read_user_items(f)


def test_two_suites_with_one_name_are_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for d in (a, b):
        _write(d / "x.jsonl", ['{"prompt": "Q", "choices": ["a"], "answer": 0}'])
    with pytest.raises(DataError, match="both be reported as 'x'"):
        expand_suites([str(a / "x.jsonl"), str(b / "x.jsonl")])


@pytest.mark.parametrize("suites, message", [
    ("[truthfulqa]", "unknown evaluation suite 'truthfulqa'"),
    ("[no/such/file.jsonl]", "no such file"),
])
def test_bad_eval_suites_fail_validation(suites, message):
    with pytest.raises(ConfigError, match=rf"eval.suites = .*{message}"):
        load_config("tiny", [f"eval.suites={suites}"])


def test_bad_suite_file_exits_2_before_anything_is_written(tmp_path, capsys):
    bad = _write(tmp_path / "mine.jsonl", ['{"prompt": "Q", "choices": ["a", "b"], "answer": 5}'])
    out = tmp_path / "runs"
    assert main(["run", "tiny", f"out_dir={out}", f"eval.suites=[{bad}]", "--quiet"]) == 2
    assert "mine.jsonl:1: 'answer' = 5" in capsys.readouterr().err
    assert not out.exists()
    assert main(["run", "tiny", f"out_dir={out}", f"data.source={tmp_path / 'nope.jsonl'}", "--quiet"]) == 2
    assert "data.source" in capsys.readouterr().err and not out.exists()


def test_the_documented_own_data_command_reports_the_file_suite(tmp_path, capsys, monkeypatch):
    """docs/configuration.md, "Your own model and your own data": the shipped example files on the tiny model."""
    monkeypatch.chdir(ROOT)
    args = ["run", "tiny", "data.source=data/examples/capitals_train.jsonl",
            "eval.suites=[data/examples/capitals_eval.jsonl]", "eval.holdout=8", "name=own_data",
            f"out_dir={tmp_path}", "--quiet"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    final = printed["final"]
    assert set(final) == {"acc", "acc_capitals_eval", "correct_capitals_eval", "answer_nll", "eval_loss"}
    assert final["acc"] == final["acc_capitals_eval"] == final["correct_capitals_eval"]  # one task: same number
    n = sum(1 for _ in open(EXAMPLE_EVAL))
    assert abs(final["acc"] * n / 100 - round(final["acc"] * n / 100)) < 1e-6  # whole items of 16
    # the whole file is scored, though the tiny config caps the lab suites (eval.max_per_task: 8)
    assert load_config("tiny").eval.max_per_task == 8
    assert len((tmp_path / "own_data" / "final_items.jsonl").read_text().splitlines()) == n == 16
    assert printed["scored"]["capitals_eval"].startswith(f"scored {n} of {n} items, 1 task, the whole file")


def test_a_suite_file_is_scored_whole_unless_capped_and_the_cap_is_said(tmp_path):
    from devft_lab.runner.run import scoring

    f = _write(tmp_path / "quiz.jsonl", [json.dumps({"prompt": f"Q{i}?", "choices": ["yes", "no"], "answer": i % 2})
                                         for i in range(300)])  # the minimal format: no task, no id
    cfg = load_config("tiny", [f"eval.suites=[{f}, indist]"])  # tiny: eval.max_per_task = 8
    lines = scoring(cfg)
    assert lines["quiz"].startswith("scored 300 of 300 items, 1 task, the whole file; acc_quiz = ")
    assert "correct_quiz = % of its scored items answered correctly" in lines["quiz"]
    assert lines["indist"].endswith(": eval.max_per_task=8")  # a lab suite's cap is said too
    capped = scoring(load_config("tiny", [f"eval.suites=[{f}]", "eval.max_per_file=8"]))
    assert capped["quiz"].startswith("scored 8 of 300 items, 1 task: eval.max_per_file=8")
    with pytest.raises(ConfigError, match="eval.max_per_file = 0 must be >= 1"):
        load_config("tiny", [f"eval.suites=[{f}]", "eval.max_per_file=0"])


def test_a_suite_file_reports_the_task_mean_and_the_share_correct_under_their_names(tmp_path):
    """acc_<file> averages the accuracies of the file's tasks (as for a lab suite); correct_<file>
    is the share of its items answered correctly; with unequal tasks they differ."""
    from devft_lab.runner.run import make_evaluator

    rows = [{"prompt": "Say it.", "choices": ["a long answer, not the short one", "no"], "answer": 0, "task": "one"}]
    rows += [{"prompt": f"Say {w}.", "choices": [w, "zzzzzzzzzzzz"], "answer": 0, "task": "many"}
             for w in ["cat", "dog", "sun", "sea", "map", "pen"]]  # the untrained model picks the shorter choice
    f = _write(tmp_path / "mixed.jsonl", [json.dumps(r) for r in rows])
    cfg = load_config("tiny", [f"eval.suites=[{f}]", "eval.max_per_task=1"])  # a lab cap leaves files whole
    model, tok = load_model("tiny-llama", device="cpu")
    evaluate = make_evaluator(cfg, tok, [], "float32")
    out = evaluate(model)
    items = evaluate.last_items
    assert len(items) == 7
    by_task = {t: [r["correct"] for r in items if r["task"] == t] for t in ("one", "many")}
    assert out["acc_mixed"] == pytest.approx(sum(100 * sum(v) / len(v) for v in by_task.values()) / 2)
    assert out["correct_mixed"] == pytest.approx(100 * sum(r["correct"] for r in items) / 7)
    assert by_task == {"one": [False], "many": [True] * 6}  # so the two differ: 50 % of tasks, 6 of 7 items
    assert (out["acc_mixed"], out["correct_mixed"]) == (pytest.approx(50.0), pytest.approx(600 / 7))


def test_a_suite_file_with_a_byte_order_mark_reads_like_one_without(tmp_path):
    plain = EXAMPLE_EVAL.read_bytes()
    bom = tmp_path / "capitals_eval.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + plain)
    assert [dict(i, id=None) for i in read_user_items(bom)] == [dict(i, id=None) for i in read_user_items(EXAMPLE_EVAL)]


# --------------------------------------------------------------------------- schedule sizing, splits
def test_overriding_num_rounds_alone_resizes_the_stages():
    assert stage_rounds(load_config("smollm2_lab")) == [3, 3, 3, 3]
    assert stage_rounds(load_config("smollm2_lab", ["fed.num_rounds=4"])) == [1, 1, 1, 1]
    assert stage_rounds(load_config("lab", ["devft.enabled=true", "fed.num_rounds=6"])) == [1, 1, 2, 2]  # remainder to the end
    cfg = load_config("tiny", ["fed.num_rounds=8"])  # the file's 2 per stage still agrees: kept
    assert cfg.devft.rounds_per_stage == 2
    with pytest.raises(ConfigError, match="sums to 8 but fed.num_rounds = 4"):  # both given: your choice
        load_config("tiny", ["fed.num_rounds=4", "devft.rounds_per_stage=2"])


def test_feasible_split_finds_the_most_clients_and_the_largest_minimum():
    cats = ["a"] * 30 + ["b"] * 18
    clients, least = feasible_split(cats, "iid", 20, seed=0, min_samples=8)
    assert (clients, least) == (6, 2)  # 48 // 8 clients; 48 // 20 each
    partition(cats, "iid", clients, 0, 8)
    with pytest.raises(DataError):
        partition(cats, "iid", clients + 1, 0, 8)


def test_too_few_samples_per_client_suggests_the_fix(tmp_path):
    from devft_lab.runner.run import build

    cfg = load_config("tiny", [f"data.source={EXAMPLE_TRAIN}", "data.num_clients=20", "data.min_samples=8",
                               f"out_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"48 training examples: set data.num_clients=6 or data.min_samples=2"):
        build(cfg, progress=False)
    assert not (tmp_path / "tiny").exists()
    cfg = load_config("tiny", [f"data.source={EXAMPLE_TRAIN}", "data.num_clients=20", "data.min_samples=8",
                               "data.partitioner=dirichlet", "data.partitioner_params={alpha: 0.5}", "train.seed=42"])
    with pytest.raises(ConfigError, match=r"set data.num_clients=3 or data.partitioner=iid with "
                                          r"data.num_clients=6 \(the pool has one category"):
        build(cfg, progress=False)


# --------------------------------------------------------------------------- memory: shared base tensors
def test_singleton_representatives_share_the_base_and_leave_the_full_model_alone():
    from devft_lab.method.submodel import build_submodel, default_lora_config

    full, _ = models.tiny_model("llama")
    before = {k: v.clone() for k, v in full.state_dict().items()}
    cfg = default_lora_config(r=2, alpha=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sub = build_submodel(full, [[0, 1, 2], [3], [4], [5], [6], [7]], beta=0.1, lora_config=cfg)
    layers = decoder_layers(full)
    reps = decoder_layers(sub.model.get_base_model())
    ptr = lambda layer: {n: p.data_ptr() for n, p in layer.named_parameters() if "lora_" not in n}
    full_ptrs = {i: {n.replace(".base_layer", ""): v for n, v in ptr(layers[i]).items()} for i in range(8)}
    rep_ptrs = [{n.replace(".base_layer", ""): v for n, v in ptr(r).items()} for r in reps]
    for g, i in enumerate([3, 4, 5, 6, 7], start=1):
        assert rep_ptrs[g] == full_ptrs[i]  # same storage: no copy
    assert not set(rep_ptrs[0].values()) & set(full_ptrs[0].values())  # a fused layer is new memory
    assert not any("lora" in n for n, _ in full.named_modules())  # PEFT wrapped the copies only
    opt = torch.optim.SGD([p for p in sub.model.parameters() if p.requires_grad], lr=1.0)
    ids = torch.randint(0, 250, (2, 12))
    sub.model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in full.state_dict().items())


# --------------------------------------------------------------------------- submodel notes
def _result(sim: list[list[float]], stages: list[dict], full_ppl: float = 10.0) -> dict:
    return {"model": "m", "num_layers": len(sim), "beta": 0.1, "fusion": "dblf", "grouping": "spectral",
            "similarity": sim, "stages": stages, "full_model_perplexity": full_ppl}


def _stage(cap, ppl, largest=1, w=1.0):
    return {"capacity": cap, "perplexity": ppl, "largest_group": largest, "min_fusion_weight": w}


def test_submodel_facts_follow_the_numbers():
    from devft_lab.experiments.submodels import default_out, facts, markdown

    spread = [[1.0, -0.32, 0.71], [-0.32, 1.0, 0.2], [0.71, 0.2, 1.0]]
    f = facts(_result(spread, [_stage(2, 50.0, 2), _stage(3, 10.0)]))
    assert f["similarity"]["min"] == pytest.approx(-0.32) and f["similarity"]["max"] == pytest.approx(0.71)
    assert f["similarity"]["mean"] == pytest.approx((-0.32 + 0.71 + 0.2) / 3)
    assert not f["nearly_orthogonal"] and f["extrapolating_stages"] == [] and f["last_equals_full"] is True
    assert f["negative_anchor_above"] == pytest.approx(11.0) and f["worst_perplexity"] == 50.0
    flat = [[1.0, 0.004, -0.001], [0.004, 1.0, 0.002], [-0.001, 0.002, 1.0]]
    f = facts(_result(flat, [_stage(1, 1e6, 3, -0.1), _stage(3, 12.0)]))
    assert f["nearly_orthogonal"] and f["largest_first_group"] == 3
    assert f["extrapolating_stages"] == [1] and f["last_equals_full"] is False
    assert facts(_result(flat, [_stage(1, 1e6, 3, -0.1), _stage(2, 12.0)]))["last_equals_full"] is None
    r = {**_result(flat, [_stage(1, 1e6, 3, -0.1), _stage(3, 12.0)]), "command": "c", "similarity_view": "v",
         "heldout": "h", "similarity_seconds": 0.1}
    r["stages"] = [{**st, "build_seconds": 0.1, "groups": [[0, 1, 2]]} for st in r["stages"]]
    md = markdown(r)
    assert "| stages with a negative fusion weight | 1 |" in md and "| 3 of 3 layers |" in md
    assert md.rstrip().endswith("No written reading yet.")
    assert default_out("smollm2-135m") == Path("results/submodels_smollm2-135m.json")
    assert default_out("/models/Qwen2.5-0.5B.gguf") == Path("results/submodels_Qwen2.5-0.5B.json")
    assert default_out("Qwen/Qwen2-0.5B") == Path("results/submodels_Qwen_Qwen2-0.5B.json")
