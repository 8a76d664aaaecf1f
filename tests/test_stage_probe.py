"""Functional similarity (devft.similarity=function), the stage loss probe (devft.probe_loss)
and the transfer rules inside DevFTPlan, on the tiny test models."""
import json

import pytest
import torch

from devft_lab.core.lora import to_flat, to_layers
from devft_lab.core.models import load_model
from devft_lab.core.train import collate
from devft_lab.method.grouping import group_layers, validate_groups
from devft_lab.method.similarity import residual_update_similarity
from devft_lab.method.submodel import default_lora_config
from devft_lab.plans.devft import DevFTPlan, residual_updates
from devft_lab.runner.config import DevFTConfig

ARCHS = ["tiny-llama", "tiny-qwen2", "tiny-gemma3"]


def _batches(tok, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    ex = []
    for i in range(n):
        ids = torch.randint(5, min(tok.vocab_size, 200), (12 + i,), generator=g).tolist()
        ex.append({"input_ids": ids, "labels": [-100] * 6 + ids[6:]})
    return [collate(ex[:2]), collate(ex[2:])]


# --------------------------------------------------------------------------- the pure similarity
def test_residual_update_similarity_is_symmetric_unit_diagonal_and_one_for_identical_updates():
    g = torch.Generator().manual_seed(0)
    u = [torch.randn(50, 8, generator=g) for _ in range(5)]
    u[3] = 2.5 * u[1]  # the same update at every token (any positive scale)
    sim = residual_update_similarity(u)
    assert sim.shape == (5, 5) and torch.allclose(sim, sim.T)
    assert torch.allclose(sim.diagonal(), torch.ones(5))
    assert sim[1, 3] == pytest.approx(1.0, abs=1e-6)
    assert (sim.abs() <= 1 + 1e-6).all()
    assert residual_update_similarity([u[0], -u[0]])[0, 1] == pytest.approx(-1.0, abs=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        residual_update_similarity([u[0], u[1][:10]])


@pytest.mark.parametrize("arch", ARCHS)
def test_function_similarity_on_tiny_models_groups_into_a_valid_partition(arch):
    model, tok = load_model(arch, device="cpu")
    cfg = default_lora_config(r=2, alpha=4, dropout=0.0)
    plan = DevFTPlan(model, cfg, [2, 4, 8], [1, 1, 1], DevFTConfig(similarity="function"), probe_batches=_batches(tok))
    ups = residual_updates(plan.full_model(), plan.probe_batches)
    assert len(ups) == plan.L and all(u.shape == ups[0].shape for u in ups)
    tokens = sum(int(b["attention_mask"].sum()) for b in plan.probe_batches)
    assert ups[0].shape[0] == tokens  # padding left out
    sim = plan.similarity_matrix()
    assert torch.allclose(sim, sim.T) and torch.allclose(sim.diagonal(), torch.ones(plan.L))
    for method in ("spectral", "contiguous"):
        groups = group_layers(sim, plan.L, 3, method=method)
        validate_groups(groups, plan.L, 3)
    assert plan.groups_for(0) and len(plan.groups_for(0)) == 2


# --------------------------------------------------------------------------- the probe in a plan
def _drive(plan, bump=0.05):
    """Run the plan's stages without federation: each stage 'trains' by adding ``bump`` to its B's."""
    for s in range(len(plan.capacities)):
        sm = plan.begin(s)
        layers, prefix = to_layers(sm.start)
        trained = {g: {n: t + bump if "lora_B" in n else t for n, t in d.items()} for g, d in layers.items()}
        plan.end(s, to_flat(trained, prefix))
    return plan.stage_records()


def test_probe_records_each_stage_start_and_end_and_the_last_stage_has_no_gap():
    model, tok = load_model("tiny-llama", device="cpu")
    cfg = default_lora_config(r=2, alpha=4, dropout=0.0)
    plan = DevFTPlan(model, cfg, [2, 4, 8], [1, 1, 1], DevFTConfig(probe_loss=True), probe_batches=_batches(tok))
    recs = _drive(plan)
    assert [(r["stage"], r["at"]) for r in recs] == [(0, "start"), (0, "end"), (1, "start"), (1, "end"),
                                                     (2, "start"), (2, "end")]
    assert [r["capacity"] for r in recs] == [2, 2, 4, 4, 8, 8]
    for r in recs:
        assert all(isinstance(r[k], float) and r[k] == r[k] and abs(r[k]) < 1e6 for k in ("sub_loss", "full_loss", "gap"))
        assert r["gap"] == pytest.approx(r["sub_loss"] - r["full_loss"])
    assert recs[-1]["gap"] == pytest.approx(0.0, abs=1e-6) and recs[-2]["gap"] == pytest.approx(0.0, abs=1e-6)
    assert recs[0]["gap"] != 0.0  # two fused representatives are not the 8-layer model
    # the full model's loss does not change between a stage's end and the next start
    assert recs[1]["full_loss"] == pytest.approx(recs[2]["full_loss"])
    # the checkpoint keeps the records
    meta, _ = plan.export()
    fresh = DevFTPlan(model, cfg, [2, 4, 8], [1, 1, 1], DevFTConfig(probe_loss=True), probe_batches=_batches(tok))
    fresh.restore(json.loads(json.dumps(meta)), plan.export()[1])
    assert fresh.stage_records() == recs


def test_probe_and_function_similarity_need_probe_batches():
    model, _ = load_model("tiny-llama", device="cpu")
    with pytest.raises(ValueError, match="pass probe_batches"):
        DevFTPlan(model, default_lora_config(r=2), [4, 8], [1, 1], DevFTConfig(probe_loss=True))
    with pytest.raises(ValueError, match="copy, copy-scaled"):
        DevFTPlan(model, default_lora_config(r=2), [4, 8], [1, 1], DevFTConfig(transfer="avg"))


@pytest.mark.parametrize("rule", ["copy", "copy-scaled", "anchor-only", "increment"])
def test_the_plan_applies_its_transfer_rule_at_stage_end(rule):
    model, tok = load_model("tiny-llama", device="cpu")
    cfg = default_lora_config(r=2, alpha=4, dropout=0.0)
    plan = DevFTPlan(model, cfg, [2, 8], [1, 1], DevFTConfig(grouping="even", transfer=rule))
    before = {i: {n: t.clone() for n, t in d.items()} for i, d in plan.global_lora.items()}
    sm = plan.begin(0)
    start, prefix = to_layers(sm.start)
    trained = {g: {n: t + 0.1 for n, t in d.items()} for g, d in start.items()}
    plan.end(0, to_flat(trained, prefix))
    groups, anchors = sm.info["groups"], sm.info["anchors"]
    assert groups == [[0, 1, 2, 3], [4, 5, 6, 7]] and anchors == [0, 4]
    for g, members in enumerate(groups):
        for i in members:
            for n, t in plan.global_lora[i].items():
                if rule == "copy":
                    want = trained[g][n]
                elif rule == "copy-scaled":
                    want = trained[g][n] / 4 if "lora_B" in n else trained[g][n]
                elif rule == "anchor-only":
                    want = trained[g][n] if i == anchors[g] else before[i][n]
                else:
                    want = before[i][n] + 0.1
                assert torch.allclose(t, want, atol=1e-6), (rule, i, n)


def test_a_run_with_probe_loss_writes_stage_records(tmp_path):
    from devft_lab.runner.config import config_hash, load_config
    from devft_lab.runner.run import read_items, start

    ov = ["fed.num_rounds=4", "devft.rounds_per_stage=null", "eval.holdout=8", f"out_dir={tmp_path}", "name=p"]
    cfg = load_config("tiny", ov + ["devft.probe_loss=true", "devft.probe_examples=4"])
    assert config_hash(cfg) == config_hash(load_config("tiny", ov))  # measuring does not change what is trained
    summary = start(cfg, quiet=True)
    rows = read_items(tmp_path / "p" / "stages.jsonl")
    assert len(rows) == 8 and rows == summary["stage_probes"]
    assert rows[-1]["capacity"] == 8 and rows[-1]["gap"] == pytest.approx(0.0, abs=1e-6)


def test_fedsa_lora_with_increment_resumes_between_stages_bit_for_bit(tmp_path):
    """The ended stage's aggregate that carry needs under 'increment' survives a restart."""
    from devft_lab.runner.config import load_config
    from devft_lab.runner.run import build, resume, start
    from devft_lab.fl.simulation import Simulation

    ov = ["fed.strategy=fedsa-lora", "devft.transfer=increment", "fed.num_rounds=4", "devft.rounds_per_stage=null",
          "eval.holdout=8", f"out_dir={tmp_path}"]
    whole = start(load_config("tiny", ov + ["name=whole"]), quiet=True)
    cfg = load_config("tiny", ov + ["name=cut"])
    parts = build(cfg, progress=False)
    d = tmp_path / "cut"
    d.mkdir()
    from devft_lab.runner.config import to_yaml
    (d / "config.yaml").write_text(to_yaml(cfg))
    sim = Simulation(parts.plan, parts.strategy, parts.client_data, parts.settings, d, parts.evaluator)
    sim.run(until_round=2)  # stops at the start of stage 3: stage 2 ended and was checkpointed
    again = resume(d, quiet=True)
    assert again["final"] == whole["final"]
