"""Local training pieces: response-only labels, the cheap loss equals the library's, seeded batches."""
import math

import pytest
import torch

from devft_lab.fl.client import get_lora_state, lora_parameters, set_lora_state, set_trainable
from devft_lab.fl.strategies import get_strategy, is_lora_a
from devft_lab.core.models import load_model
from devft_lab.core.train import (IGNORE, Compute, batch_order, collate, encode_example, lm_loss, round_lr,
                                  train_local)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama", device="cpu")


EX = {"instruction": "Say hi", "input": "", "response": "hello there"}


@pytest.mark.parametrize("template", ["chat", "alpaca", "plain"])
def test_labels_cover_exactly_the_response_and_eos(tiny, template):
    _, tok = tiny
    e = encode_example(tok, EX, template, 512)
    labelled = [t for t, l in zip(e["input_ids"], e["labels"]) if l != IGNORE]
    assert labelled[-1] == tok.eos_token_id
    assert tok.decode(labelled[:-1]).strip() == "hello there"
    first = next(i for i, l in enumerate(e["labels"]) if l != IGNORE)
    assert all(l != IGNORE for l in e["labels"][first:])  # one contiguous response span


def test_truncation_keeps_the_response_and_cuts_the_prompt_from_the_left(tiny):
    _, tok = tiny
    long = {"instruction": "x" * 300 + " END", "response": "ok"}
    e = encode_example(tok, long, "plain", 32)
    assert len(e["input_ids"]) == 32
    assert tok.decode([t for t, l in zip(e["input_ids"], e["labels"]) if l != IGNORE][:-1]).strip() == "ok"
    assert "END" in tok.decode(e["input_ids"])


def test_head_only_where_labels_exist_equals_the_full_loss(tiny):
    model, tok = tiny
    batch = collate([encode_example(tok, EX, "chat", 64),
                     encode_example(tok, {"instruction": "a", "response": "bb"}, "plain", 64)], tok.pad_token_id)
    loss, n = lm_loss(model, batch)
    ref = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert n == int((batch["labels"][:, 1:] != IGNORE).sum())
    assert torch.allclose(loss / n, ref, atol=1e-5)


def test_batch_order_is_seeded_and_visits_every_example_each_epoch():
    a = batch_order(10, 5, 4, torch.Generator().manual_seed(3))
    b = batch_order(10, 5, 4, torch.Generator().manual_seed(3))
    assert a == b and len(a) == 5 and all(len(x) == 4 for x in a)
    flat = [i for x in a for i in x]
    assert sorted(flat[:10]) == list(range(10))
    with pytest.raises(ValueError, match="empty shard"):
        batch_order(0, 1, 1, torch.Generator())


def test_cosine_lr_runs_from_lr_to_lr_min():
    assert round_lr(0, 10, 1e-3, 1e-5) == 1e-3
    assert math.isclose(round_lr(9, 10, 1e-3, 1e-5), 1e-5)
    assert round_lr(4, 10, 1e-3, 0, "constant") == 1e-3
    with pytest.raises(ValueError, match="train.schedule"):
        round_lr(1, 10, 1e-3, 0, "step")


def test_training_lowers_the_loss_and_is_reproducible(tiny):
    from peft import get_peft_model

    from devft_lab.method.submodel import default_lora_config

    model, tok = load_model("tiny-llama", device="cpu")
    pm = get_peft_model(model, default_lora_config(r=4, alpha=8, dropout=0.0))
    enc = [encode_example(tok, {"instruction": f"repeat {i}", "response": f"{i} {i}"}, "chat", 64)
           for i in range(16)]
    start = get_lora_state(pm)
    batch = collate(enc, tok.pad_token_id)
    before = float(lm_loss(pm, batch)[0].detach())
    s1 = train_local(pm, enc, steps=15, batch_size=4, lr=1e-2, seed=0, compute=Compute(pad_id=tok.pad_token_id))
    after = float(lm_loss(pm, batch)[0].detach())
    trained = get_lora_state(pm)
    assert after < before and s1.steps == 15 and s1.samples == 60
    set_lora_state(pm, start)
    train_local(pm, enc, steps=15, batch_size=4, lr=1e-2, seed=0, compute=Compute(pad_id=tok.pad_token_id))
    assert all(torch.equal(trained[k], v) for k, v in get_lora_state(pm).items())


def test_ffa_lora_trains_b_only(tiny):
    from peft import get_peft_model

    from devft_lab.method.submodel import default_lora_config

    model, _ = load_model("tiny-llama", device="cpu")
    pm = get_peft_model(model, default_lora_config(r=4, alpha=8, dropout=0.0))
    set_trainable(pm, get_strategy("ffa-lora"))
    flags = {k: p.requires_grad for k, p in lora_parameters(pm).items()}
    assert flags and all(v is (not is_lora_a(k)) for k, v in flags.items())
    with pytest.raises(ValueError, match="does not fit"):
        set_lora_state(pm, {"nope.lora_A.weight": torch.zeros(1)})


# --------------------------------------------------------------------------- packing
def _varied(tok, n=7):
    """Examples of clearly different lengths (the case where padding wastes work)."""
    return [encode_example(tok, {"instruction": "word " * (3 + 7 * i), "response": "yes " * (1 + i % 3)}, "chat", 128)
            for i in range(n)]


def test_pack_lays_every_token_once_in_one_row_and_restarts_positions(tiny):
    from devft_lab.core.train import pack

    _, tok = tiny
    enc = _varied(tok)
    b = pack(enc, tok.pad_token_id)
    total = sum(len(e["input_ids"]) for e in enc)
    assert b["input_ids"].shape == (1, total)  # no padding at all
    assert b["input_ids"][0].tolist() == [t for e in enc for t in e["input_ids"]]
    assert int((b["position_ids"] == 0).sum()) == len(enc)  # a segment per example
    labelled = int((b["labels"] != IGNORE).sum())
    # every response token is labelled once (first tokens of examples are prompt tokens)
    assert labelled == sum(sum(1 for l in e["labels"][1:] if l != IGNORE) for e in enc)
    assert b["rows_allowed"].shape[0] < len(enc)  # attention rows share examples
    with pytest.raises(ValueError, match="capacity"):
        pack(enc, tok.pad_token_id, capacity=4)


def test_packed_loss_and_gradients_equal_the_padded_ones(tiny):
    from peft import get_peft_model

    from devft_lab.core.train import pack
    from devft_lab.method.submodel import default_lora_config

    model, tok = load_model("tiny-llama", device="cpu")
    pm = get_peft_model(model, default_lora_config(r=4, alpha=8, dropout=0.0))
    torch.manual_seed(0)
    with torch.no_grad():
        for k, p in lora_parameters(pm).items():
            p.normal_(0, 0.05)  # B != 0, so the LoRA path takes part
    enc = _varied(tok)
    grads = []
    losses = []
    for make in (collate, pack):
        pm.zero_grad(set_to_none=True)
        loss, n = lm_loss(pm, make(enc, tok.pad_token_id))
        (loss / n).backward()
        losses.append((float(loss.detach()), n))
        grads.append({k: p.grad.clone() for k, p in lora_parameters(pm).items() if p.grad is not None})
    (la, na), (lb, nb) = losses
    assert na == nb and math.isclose(la, lb, rel_tol=1e-5)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], atol=1e-6, rtol=1e-4), k


def test_packed_training_matches_padded_training(tiny):
    from peft import get_peft_model

    from devft_lab.method.submodel import default_lora_config

    model, tok = load_model("tiny-llama", device="cpu")
    pm = get_peft_model(model, default_lora_config(r=4, alpha=8, dropout=0.0))
    enc = _varied(tok, 12)
    start = get_lora_state(pm)
    results = []
    for packing in (False, True):
        set_lora_state(pm, start)
        s = train_local(pm, enc, steps=4, batch_size=4, lr=1e-2, seed=0,
                        compute=Compute(packing=packing, pad_id=tok.pad_token_id))
        results.append((s, get_lora_state(pm)))
    (s0, a), (s1, b) = results
    assert s0.tokens == s1.tokens and s0.target_tokens == s1.target_tokens
    assert math.isclose(s0.loss, s1.loss, rel_tol=1e-4)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_bf16_autocast_loss_is_close_to_fp32(tiny):
    from devft_lab.core.device import autocast_context

    model, tok = tiny
    batch = collate(_varied(tok, 3), tok.pad_token_id)
    with torch.no_grad():
        ref, n = lm_loss(model, batch)
        with autocast_context("cpu", "bfloat16"):
            low, _ = lm_loss(model, batch)
        with autocast_context("cpu", "float32"):
            same, _ = lm_loss(model, batch)
    assert float(same) == float(ref)  # fp32 "autocast" is no autocast
    assert float(low) != float(ref) and math.isclose(float(low) / n, float(ref) / n, rel_tol=0.05)


def test_a_stage_scoped_decay_restarts_at_the_peak_and_ends_at_the_floor_in_every_stage():
    from devft_lab.core.train import scheduled_lr

    lens, lr, lo = [2, 2, 3, 3], 1e-3, 1e-4
    for n in lens:
        lrs = [scheduled_lr(0, r, n, sum(lens), lr, lo, scope="stage") for r in range(n)]
        assert lrs[0] == lr and math.isclose(lrs[-1], lo) and lrs == sorted(lrs, reverse=True)


def test_a_run_window_trains_at_the_tail_of_the_longer_decay():
    from devft_lab.core.train import scheduled_lr

    tail = [scheduled_lr(t, 0, 0, 3, 1e-3, 1e-4, start=7, length=10) for t in range(3)]
    assert tail == [round_lr(t, 10, 1e-3, 1e-4) for t in (7, 8, 9)]
    assert [scheduled_lr(t, 0, 0, 10, 1e-3, 1e-4) for t in range(10)] == [round_lr(t, 10, 1e-3, 1e-4) for t in range(10)]
    with pytest.raises(ValueError, match="train.schedule_scope"):
        scheduled_lr(0, 0, 1, 1, 1e-3, scope="epoch")
