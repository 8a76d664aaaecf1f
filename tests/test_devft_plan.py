"""Algorithm 1 as a stage plan (plans/devft.py): hooks watch the stages without changing them, the
loop reads the same through run_stages as through begin/end, and the transfer rule is a strategy."""
import json

import pytest
import torch

from devft_lab.core.lora import to_flat, to_layers
from devft_lab.core.models import load_model
from devft_lab.core.train import collate
from devft_lab.method.similarity import SIMILARITIES
from devft_lab.method.submodel import default_lora_config
from devft_lab.method.transfer import TRANSFER_RULES
from devft_lab.plans.devft import LAYER_SIMILARITY, DevFTPlan, run_stages
from devft_lab.plans.hooks import StageLossProbe, default_hooks
from devft_lab.runner.config import DevFTConfig

CAPS, ROUNDS = [2, 4, 8], [1, 1, 1]


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model("tiny-llama", device="cpu")
    g = torch.Generator().manual_seed(0)
    ex = []
    for i in range(4):
        ids = torch.randint(5, min(tok.vocab_size, 200), (12 + i,), generator=g).tolist()
        ex.append({"input_ids": ids, "labels": [-100] * 6 + ids[6:]})
    return model, default_lora_config(r=2, alpha=4, dropout=0.0), [collate(ex[:2]), collate(ex[2:])]


def _train(stage, bump=0.05):
    """A stand-in for Step 3: every representative's A and B move by a stage-dependent amount."""
    layers, prefix = to_layers(stage.start)
    return to_flat({g: {n: t + bump * (stage.index + 1) * (2 if "lora_B" in n else 1) for n, t in d.items()}
                    for g, d in layers.items()}, prefix)


class Recorder:
    """A hook that writes down what it is shown (and records one number per call)."""

    def __init__(self):
        self.calls = []

    def on_stage_begin(self, plan, stage, sub):
        self.calls.append(("begin", stage, [list(g) for g in sub.groups]))
        return {"seen": f"begin {stage}"}

    def on_stage_end(self, plan, stage, sub, trained):
        self.calls.append(("end", stage, [list(g) for g in sub.groups]))
        self.trained = trained
        return {"seen_end": len(trained)}


def _history(plan):
    """Drive the plan; every stage's start adapter, info and the global LoRA after its transfer."""
    out = []

    def federate(stage):
        out.append({"start": dict(stage.start), "info": json.loads(json.dumps(stage.info))})
        return _train(stage)

    for s in range(len(plan.stage_rounds())):
        plan.end(s, federate(plan.begin(s)))
        out[-1]["global"] = {i: dict(d) for i, d in plan.global_lora.items()}
    return out


def _same(a, b):
    assert [h["info"] for h in a] == [h["info"] for h in b]
    for x, y in zip(a, b):
        assert x["start"].keys() == y["start"].keys() and all(torch.equal(x["start"][k], y["start"][k]) for k in x["start"])
        assert all(torch.equal(x["global"][i][n], y["global"][i][n]) for i in x["global"] for n in x["global"][i])


def test_hooks_are_called_once_per_stage_in_order_with_the_stage_submodel(tiny):
    model, cfg, batches = tiny
    rec = Recorder()
    plan = DevFTPlan(model, cfg, CAPS, ROUNDS, DevFTConfig(grouping="even"), hooks=[rec])
    _history(plan)
    assert [(c[0], c[1]) for c in rec.calls] == [("begin", 0), ("end", 0), ("begin", 1), ("end", 1),
                                                 ("begin", 2), ("end", 2)]
    assert [len(c[2]) for c in rec.calls] == [2, 2, 4, 4, 8, 8]  # the submodel of the stage: L_s groups
    assert rec.calls[0][2] == rec.calls[1][2] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    # what a hook returns is filed under its stage and moment, in order, and survives a checkpoint
    recs = plan.stage_records()
    assert [(r["stage"], r["at"]) for r in recs] == [(s, at) for s in range(3) for at in ("start", "end")]
    assert recs[0]["seen"] == "begin 0" and recs[-1]["seen_end"] == 8
    fresh = DevFTPlan(model, cfg, CAPS, ROUNDS, DevFTConfig(grouping="even"), hooks=[])
    meta, tensors = plan.export()
    fresh.restore(json.loads(json.dumps(meta)), tensors)
    assert fresh.stage_records() == recs


def test_a_plan_without_hooks_trains_what_a_plan_with_the_default_hooks_trains(tiny):
    model, cfg, batches = tiny
    d = DevFTConfig(probe_loss=True, transfer="increment", grouping="even")  # increment: uses the most plan state
    caps, rounds = [2, 8], [1, 1]  # the probe runs the model: two stages keep the test short
    probed = DevFTPlan(model, cfg, caps, rounds, d, probe_batches=batches)  # hooks=None: default_hooks(d)
    assert len(probed.hooks) == 1 and isinstance(probed.hooks[0], StageLossProbe)
    bare = DevFTPlan(model, cfg, caps, rounds, d, probe_batches=batches, hooks=[])
    watched = DevFTPlan(model, cfg, caps, rounds, d, probe_batches=batches, hooks=[Recorder()])
    a, b, c = _history(probed), _history(bare), _history(watched)
    _same(a, b)
    _same(a, c)
    assert [(r["stage"], r["at"]) for r in probed.stage_records()] == [(0, "start"), (0, "end"), (1, "start"),
                                                                       (1, "end")]
    assert bare.stage_records() == [] and len(watched.stage_records()) == 4
    assert default_hooks(DevFTConfig(), batches) == []  # probe_loss off: nothing watches


def test_run_stages_is_begin_then_end_for_every_stage(tiny):
    model, cfg, _ = tiny
    d = DevFTConfig(transfer="increment")
    by_hand = DevFTPlan(model, cfg, CAPS, ROUNDS, d)
    hist = _history(by_hand)
    plan = DevFTPlan(model, cfg, CAPS, ROUNDS, d)
    out = run_stages(plan, _train)
    assert out is plan.global_lora
    assert all(torch.equal(out[i][n], hist[-1]["global"][i][n]) for i in out for n in out[i])


@pytest.mark.parametrize("transfer", list(TRANSFER_RULES))
def test_a_client_that_kept_exactly_the_aggregate_is_carried_to_the_next_stage_start(tiny, transfer):
    """carry = the rule's transfer_kept, then the next stage's fusion: with no deviation of its own,
    a client's kept B is the next stage's fused global B, under every rule."""
    model, cfg, _ = tiny
    plan = DevFTPlan(model, cfg, CAPS, ROUNDS, DevFTConfig(transfer=transfer))
    first = plan.begin(0)
    trained = _train(first)
    plan.end(0, trained)
    second = plan.begin(1)
    kept = {k: t for k, t in trained.items() if "lora_B" in k}
    carried = plan.carry(kept, second, first)
    want = {k: t for k, t in second.start.items() if "lora_B" in k}
    assert carried.keys() == want.keys() and all(torch.equal(carried[k], want[k]) for k in want)


def test_increment_carry_needs_the_ended_aggregate_and_the_checkpoint_keeps_it(tiny):
    model, cfg, _ = tiny
    plan = DevFTPlan(model, cfg, CAPS, ROUNDS, DevFTConfig(transfer="increment"))
    first = plan.begin(0)
    plan.end(0, _train(first))
    second = plan.begin(1)
    _, tensors = plan.export()
    assert any(k.startswith("e.layers.") for k in tensors)  # the rule's transfer_kept needs the aggregate
    copy_plan = DevFTPlan(model, cfg, CAPS, ROUNDS, DevFTConfig(transfer="copy"))
    copy_plan.end(0, _train(copy_plan.begin(0)))
    assert not any(k.startswith("e.layers.") for k in copy_plan.export()[1])  # copy does not
    kept = {k: t + 1.0 for k, t in _train(first).items() if "lora_B" in k}
    restarted = DevFTPlan(model, cfg, CAPS, ROUNDS, DevFTConfig(transfer="increment"))
    restarted.restore({}, tensors)
    a, b = plan.carry(kept, second, first), restarted.carry(kept, second, first)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    cold = DevFTPlan(model, cfg, CAPS, ROUNDS, DevFTConfig(transfer="increment"))
    with pytest.raises(ValueError, match="aggregate"):
        cold.carry(kept, second, first)


def test_config_names_are_checked_by_their_registries(tiny):
    model, cfg, _ = tiny
    assert set(LAYER_SIMILARITY) == set(SIMILARITIES)
    with pytest.raises(ValueError, match="copy, copy-scaled, anchor-only, increment"):
        DevFTPlan(model, cfg, CAPS, ROUNDS, DevFTConfig(transfer="avg"))
    with pytest.raises(ValueError, match="parameters, function"):
        DevFTPlan(model, cfg, CAPS, ROUNDS, DevFTConfig(similarity="gradients"))
    with pytest.raises(ValueError, match="pass probe_batches"):
        DevFTPlan(model, cfg, CAPS, ROUNDS, DevFTConfig(similarity="function"))
    assert DevFTPlan(model, cfg, CAPS, ROUNDS, DevFTConfig(probe_loss=True), probe_batches=[], hooks=[]).hooks == []
