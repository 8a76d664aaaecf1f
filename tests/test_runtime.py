"""The federated runtime end to end on the tiny model: equivalences, strategies, resume, errors."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from devft_lab.runner.config import load_config
from devft_lab.fl.strategies import is_lora_a, is_lora_b
from devft_lab.runner.run import load_adapter, start

BASE = ["fed.num_rounds=4", "devft.rounds_per_stage=null", "eval.holdout=8"]


def _run(tmp_path, name, *overrides):
    cfg = load_config("tiny", [*BASE, f"out_dir={tmp_path}", f"name={name}", *overrides])
    summary = start(cfg, quiet=True)
    return summary, tmp_path / name


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines()]


def test_single_stage_devft_is_fedit_bit_for_bit(tmp_path):
    _, fedit = _run(tmp_path, "fedit", "devft.enabled=false")
    _, devft = _run(tmp_path, "devft1", "devft.enabled=true", "devft.stages=1")
    a, b = load_adapter(fedit), load_adapter(devft)
    assert a.keys() == b.keys() and len(a) == 2 * 2 * 8  # q,v x A,B x 8 layers
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(float(b[k].abs().sum()) > 0 for k in b if is_lora_b(k))  # it trained
    losses = [[r["extra"]["loss"] for r in _rows(d)] for d in (fedit, devft)]
    assert losses[0] == losses[1]


def test_devft_stages_grow_and_bytes_follow_capacity(tmp_path):
    summary, d = _run(tmp_path, "devft4", "devft.stages=4")
    rows = _rows(d)
    caps = [r["extra"]["capacity"] for r in rows]
    assert caps == [1, 2, 4, 8]  # one round per stage, capacities 8 / 2**(S-s)
    up = [r["uplink_bytes"] for r in rows]
    assert up[1] == 2 * up[0] and up[3] == 8 * up[0]  # LoRA uplink is linear in the capacity
    assert summary["final"]["eval_loss"] < summary["initial"]["eval_loss"]
    # fused stages need their dense fused layers delivered once per client; singletons nothing
    assert rows[0]["submodel_delivery_bytes"] > 0 and rows[3]["submodel_delivery_bytes"] == 0
    # the exported adapter is a PEFT adapter of the full model
    from peft import PeftModel

    from devft_lab.fl.client import get_lora_state
    from devft_lab.core.models import load_model

    peft_model = PeftModel.from_pretrained(load_model("tiny-llama", device="cpu")[0], str(d / "adapter"))
    loaded, saved = get_lora_state(peft_model), load_adapter(d)
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_fedsa_never_uploads_b_and_ffa_never_changes_a(tmp_path):
    _, d = _run(tmp_path, "fedsa", "fed.strategy=fedsa-lora", "devft.stages=2")
    rows = _rows(d)
    n_a = sum(1 for k in load_adapter(d) if is_lora_a(k))
    r, hidden = 4, 64  # tiny.yaml's rank, the tiny model's width
    # uplink: A only (r x hidden fp32 per adapted module, q and v per layer), never B
    for row in rows:
        mods = 2 * row["extra"]["capacity"]
        assert row["uplink_bytes"] == row["num_clients"] * mods * r * hidden * 4
    assert n_a == 16
    _, f = _run(tmp_path, "ffa", "fed.strategy=ffa-lora", "devft.enabled=false")
    from devft_lab.fl.strategies import get_strategy
    from devft_lab.runner.run import build
    parts = build(load_config("tiny", [*BASE, "fed.strategy=ffa-lora", "devft.enabled=false"]), progress=False)
    init = get_strategy("ffa-lora").init_global(parts.plan.begin(0).start)
    final = load_adapter(f)
    assert all(torch.equal(final[k], init[k]) for k in final if is_lora_a(k))
    assert any(not torch.equal(final[k], init[k]) for k in final if is_lora_b(k))


def test_progfed_trains_a_growing_prefix(tmp_path):
    _, d = _run(tmp_path, "progfed", "devft.plan=progfed", "devft.stages=2")
    rows = _rows(d)
    assert [r["extra"]["capacity"] for r in rows] == [4, 4, 8, 8]
    assert all(r["submodel_delivery_bytes"] == 0 for r in rows)


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "devft_lab.cli", *args], capture_output=True, text=True, **kw)


@pytest.mark.parametrize("override, field", [
    ("devft.capacities=[4,2,6,8]", "devft.capacities"),
    ("devft.capacities=[1,2,4,9]", "devft.capacities"),
    ("fed.num_rounds=0", "fed.num_rounds"),
    ("fed.strategy=fedavgx", "fed.strategy"),
    ("train.lr=-1", "train.lr"),
    ("train.nonsense=1", "nonsense"),
    ("train.lr=inf", "train.lr = inf is not a finite number"),  # would train NaN rounds, then fail
    ("lora.alpha=inf", "lora.alpha = inf is not a finite number"),  # would train NaN and export it
    ("train.seed=-1", "train.seed = -1 must be >= 0; set train.seed to a value >= 0"),
])
def test_bad_config_exit_2_and_no_run_folder(tmp_path, capsys, override, field):
    from devft_lab.cli import main

    assert main(["run", "tiny", f"out_dir={tmp_path}", "name=bad", override, "--quiet"]) == 2
    assert field in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


# Rounds logged before the kill: 3 puts it inside stage 2 (rounds 2-3 of 4 stages x 2 rounds), after a
# stage boundary and before the next one, so the resume must rebuild a stage from its checkpoint.
KILL_AFTER_ROUNDS = 3


def test_sigkill_then_resume_gives_identical_adapters(tmp_path):
    args = ["tiny", "fed.num_rounds=8", "devft.rounds_per_stage=2", f"out_dir={tmp_path}"]
    ref = _cli("run", *args, "name=ref", "--quiet")
    assert ref.returncode == 0, ref.stderr
    kill_after = KILL_AFTER_ROUNDS
    proc = subprocess.Popen([sys.executable, "-m", "devft_lab.cli", "run", *args, "name=killed", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "killed" / "rounds.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= kill_after:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "adapter").exists()
    res = _cli("resume", str(tmp_path / "killed"), "--quiet")
    assert res.returncode == 0, res.stderr
    a, b = load_adapter(tmp_path / "ref"), load_adapter(tmp_path / "killed")
    assert all(torch.equal(a[k], b[k]) for k in a), f"adapters differ after a kill at round {kill_after}"
    ra, rb = _rows(tmp_path / "ref"), _rows(tmp_path / "killed")
    assert [r["round"] for r in rb] == list(range(8))  # no round lost, none logged twice
    assert [r["extra"]["loss"] for r in ra] == [r["extra"]["loss"] for r in rb]


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    from devft_lab.cli import main

    _run(tmp_path, "once", "devft.enabled=false")
    assert main(["run", "tiny", *BASE, f"out_dir={tmp_path}", "name=once", "--quiet"]) == 2
    assert "resume" in capsys.readouterr().err


def test_flora_merges_the_exact_aggregate_into_the_base(tmp_path):
    """FLoRA: every round merges sum_k p_k s B_k A_k into the base; the adapter restarts at B = 0."""
    from devft_lab.fl.strategies import is_lora_b

    summary, d = _run(tmp_path, "flora", "fed.strategy=flora", "devft.enabled=false")
    final = load_adapter(d)
    assert all(float(final[k].abs().sum()) == 0 for k in final if is_lora_b(k))  # fresh adapter
    assert summary["final"]["eval_loss"] < summary["initial"]["eval_loss"]  # learning went into the base
    rows = _rows(d)
    assert rows[0]["downlink_bytes"] > rows[0]["uplink_bytes"]  # the stacked adapter goes back down
    cfg = load_config("tiny", [*BASE, "fed.strategy=flora", "devft.enabled=true"])
    from devft_lab.runner.config import ConfigError
    from devft_lab.runner.run import build
    with pytest.raises(ConfigError, match="devft.enabled=false"):
        build(cfg, progress=False)


def test_untrained_evaluation_is_scored_once_and_shared_by_methods(tmp_path, monkeypatch):
    monkeypatch.setenv("DEVFT_LAB_CACHE", str(tmp_path / "cache"))
    _, a = _run(tmp_path, "a", "eval.suites=[indist]", "eval.max_per_task=2")
    _, b = _run(tmp_path, "b", "eval.suites=[indist]", "eval.max_per_task=2", "fed.strategy=fedsa")
    ia, ib = (json.loads((d / "initial_eval.json").read_text()) for d in (a, b))
    assert len(list((tmp_path / "cache" / "base_eval").glob("*.json"))) == 1  # b read a's
    assert "(cached" in (b / "run.log").read_text() and "(cached" not in (a / "run.log").read_text()
    assert {k: v for k, v in ia.items() if k != "eval_s"} == {k: v for k, v in ib.items() if k != "eval_s"}
    assert "answer_nll" in ia and ia["answer_nll"] > 0  # the correct answers' loss per token
    _run(tmp_path, "c", "eval.suites=[indist]", "eval.max_per_task=3")  # other items: scored anew
    assert len(list((tmp_path / "cache" / "base_eval").glob("*.json"))) == 2
    monkeypatch.setattr("devft_lab.core.evaluate.scorer_digest", lambda: "changed")  # a changed scorer: scored anew
    _run(tmp_path, "d", "eval.suites=[indist]", "eval.max_per_task=3")
    assert len(list((tmp_path / "cache" / "base_eval").glob("*.json"))) == 3


def test_run_keeps_its_scored_items_and_they_reproduce_its_accuracy(tmp_path, monkeypatch):
    """initial_items.jsonl / final_items.jsonl hold every scored item (cached or not), on the same
    items, and summarising them gives the accuracy the summary reports: a table can pair two runs
    item by item without re-scoring their adapters."""
    from devft_lab.stats import paired_bootstrap, summarise
    from devft_lab.runner.run import read_items

    monkeypatch.setenv("DEVFT_LAB_CACHE", str(tmp_path / "cache"))
    s_a, a = _run(tmp_path, "a", "eval.suites=[indist]", "eval.max_per_task=3")
    s_b, b = _run(tmp_path, "b", "eval.suites=[indist]", "eval.max_per_task=3", "fed.strategy=fedsa")
    for s, d in ((s_a, a), (s_b, b)):
        init, final = read_items(d / "initial_items.jsonl"), read_items(d / "final_items.jsonl")
        assert len(init) == len(final) == summarise(final)["n"] > 0
        assert {(r["suite"], r["id"]) for r in init} == {(r["suite"], r["id"]) for r in final}
        assert summarise(final)["avg"] == pytest.approx(s["final"]["acc"])
        assert summarise(init)["avg"] == pytest.approx(s["initial"]["acc"])
        meta = json.loads((d / "meta.json").read_text())
        assert meta["wall_s"] == pytest.approx(s["wall_s"]) and s["wall_s"] > 0  # the measured run time is in meta.json
        assert meta["cpu_s"] == pytest.approx(s["cpu_s"]) and s["cpu_s"] > 0  # and its CPU time
    assert read_items(a / "initial_items.jsonl") == read_items(b / "initial_items.jsonl")  # b read a's cache
    lo, hi = paired_bootstrap(read_items(a / "final_items.jsonl"), read_items(b / "final_items.jsonl"))
    assert lo <= s_b["final"]["acc"] - s_a["final"]["acc"] <= hi


def test_eval_stage_ends_false_evaluates_only_at_the_end(tmp_path):
    """With eval.stage_ends=false a staged run is scored once, after its last round; the default
    scores every stage's end."""
    _, a = _run(tmp_path, "a", "devft.rounds_per_stage=1")
    _, b = _run(tmp_path, "b", "devft.rounds_per_stage=1", "eval.stage_ends=false")
    evaluated = [[r["round"] for r in _rows(d) if "eval_loss" in r["extra"]] for d in (a, b)]
    assert evaluated == [[0, 1, 2, 3], [3]]


def test_start_or_reuse_reads_a_finished_run_of_the_same_config_only(tmp_path):
    from devft_lab.runner.run import start_or_reuse

    cfg = load_config("tiny", [*BASE, f"out_dir={tmp_path}", "name=r"])
    s1, reused1 = start_or_reuse(cfg, quiet=True)
    s2, reused2 = start_or_reuse(cfg, quiet=True)
    assert (reused1, reused2) == (False, True) and s2 == json.loads((tmp_path / "r" / "summary.json").read_text())
    other = load_config("tiny", [*BASE, f"out_dir={tmp_path}", "name=r", "train.lr=2e-3"])
    _, reused3 = start_or_reuse(other, quiet=True)  # another training config: trained anew
    assert reused3 is False and load_config(tmp_path / "r" / "config.yaml").train.lr == 2e-3


def test_a_stage_scoped_decay_logs_a_restart_at_every_stage(tmp_path):
    _, d = _run(tmp_path, "stage_lr", "devft.enabled=true", "fed.num_rounds=8", "devft.rounds_per_stage=2",
                "train.schedule_scope=stage", "train.lr=0.001", "train.lr_min=0.0001")
    lrs = [r["extra"]["lr"] for r in _rows(d)]
    assert [r["stage"] for r in _rows(d)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert lrs[0::2] == [0.001] * 4 and all(abs(x - 0.0001) < 1e-12 for x in lrs[1::2])


def _cut(tmp_path, name, until_round):
    """A run folder as a kill leaves it: config saved, rounds logged and checkpointed to ``until_round``."""
    from devft_lab.fl.simulation import Simulation
    from devft_lab.runner.config import to_yaml
    from devft_lab.runner.run import build

    cfg = load_config("tiny", [*BASE, f"out_dir={tmp_path}", f"name={name}"])
    parts = build(cfg, progress=False)
    d = tmp_path / name
    d.mkdir()
    (d / "config.yaml").write_text(to_yaml(cfg))
    Simulation(parts.plan, parts.strategy, parts.client_data, parts.settings, d, parts.evaluator).run(until_round)
    return d


def test_resume_rebuilds_a_deleted_log_and_falls_back_past_a_damaged_checkpoint(tmp_path):
    """Nothing lost, nothing under-counted: rounds.jsonl deleted and the newest checkpoint truncated,
    the resumed run still ends bit for bit as the uninterrupted one, with every round counted."""
    from devft_lab.runner.run import resume

    whole, ref = _run(tmp_path, "whole")
    d = _cut(tmp_path, "cut", 3)
    ckpts = d / "checkpoints"
    kept = sorted(p.name for p in ckpts.iterdir() if p.is_dir())
    assert kept == ["round-000002", "round-000003"]  # the previous complete checkpoint is kept
    (d / "rounds.jsonl").unlink()
    t = ckpts / "round-000003" / "tensors.safetensors"
    t.write_bytes(t.read_bytes()[: t.stat().st_size // 2])
    summary = resume(d, quiet=True)
    a, b = load_adapter(ref), load_adapter(d)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for k in ("rounds", "paper_bytes", "full_bytes", "flops_estimate"):
        assert summary[k] == whole[k], k  # 4 rounds counted, not the 1 logged after the resume
    assert [r["round"] for r in _rows(d)] == [0, 1, 2, 3]
    assert [r["extra"]["loss"] for r in _rows(d)] == [r["extra"]["loss"] for r in _rows(ref)]
    warnings = [line for line in (d / "run.log").read_text().splitlines() if "warning:" in line]
    assert any("round-000003/tensors.safetensors is truncated" in w and "previous complete checkpoint "
               "round-000002" in w for w in warnings)
    assert any("rounds.jsonl (was missing) rebuilt from rounds.csv: 2 rounds" in w for w in warnings)


def test_resume_refuses_when_every_log_of_the_rounds_is_gone(tmp_path):
    d = _cut(tmp_path, "cut", 2)
    (d / "rounds.jsonl").unlink()
    (d / "rounds.csv").unlink()
    res = _cli("resume", str(d), "--quiet")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "rounds.jsonl (missing) and rounds.csv (missing)" in res.stderr and "--force" in res.stderr
    assert not (d / "summary.json").exists() and not (d / "adapter").exists()


def test_resume_names_the_run_folders_config_when_it_was_edited(tmp_path, capsys):
    from devft_lab.cli import main

    d = tmp_path / "edited"
    d.mkdir()
    (d / "config.yaml").write_text("name: edited\nfed:\n  num_rounds: three\n")
    assert main(["resume", str(d), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{d / 'config.yaml'}: fed.num_rounds = 'three' should be int" in err
