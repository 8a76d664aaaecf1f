"""Row-wise attention of flat packed micro-batches: the layout, and the same maths as transformers'."""
import math

import pytest
import torch

from devft_lab.core.attention import attention_kernel, attention_of
from devft_lab.core.models import load_model
from devft_lab.core.packed_attention import rows_layout
from devft_lab.core.train import Compute, collate, encode_example, lm_loss, pack, train_local
from devft_lab.fl.client import lora_parameters


@pytest.mark.parametrize("lengths,capacity", [([5, 3, 8, 1, 4], None), ([7], None), ([2, 2, 2, 2], 5), ([3, 9, 6], 12)])
def test_rows_layout_puts_each_token_in_one_slot_and_sees_only_its_own_past(lengths, capacity):
    lay = rows_layout(lengths, capacity)
    index, slot, allowed = lay["index"], lay["slot"], lay["allowed"]
    T, (R, C, _) = sum(lengths), allowed.shape
    assert C == (capacity or max(lengths)) and index.shape == (R * C,) and slot.shape == (T,)
    assert torch.equal(index[slot], torch.arange(T))  # the slot of token t holds token t
    assert len(set(slot.tolist())) == T
    example = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    position = torch.cat([torch.arange(n) for n in lengths])
    flat_allowed = allowed.reshape(R * C, C)
    for t in range(T):  # query token t sees key token u iff same example and u not later
        r = int(slot[t]) // C
        seen = {int(index[r * C + j]) for j in range(C) if flat_allowed[slot[t], j]}
        want = {u for u in range(T) if example[u] == example[t] and position[u] <= position[t]}
        assert seen == want, t
    padding = torch.ones(R * C, dtype=torch.bool)
    padding[slot] = False
    assert flat_allowed.any(dim=1).all()  # no empty softmax row, padding slots included
    keys_pad = padding.view(R, C)
    for r in range(R):  # nothing real attends to a padding slot
        real_q = ~keys_pad[r]
        assert not allowed[r][real_q][:, keys_pad[r]].any()


def test_rows_layout_refuses_an_empty_example():
    with pytest.raises(ValueError, match="at least one token"):
        rows_layout([3, 0, 2])


def _submodel(name):
    from devft_lab.method.grouping import even_groups
    from devft_lab.method.submodel import build_submodel, default_lora_config

    model, tok = load_model(name, device="cpu")
    sub = build_submodel(model, even_groups(8, 4), 0.1, "dblf", default_lora_config(r=4, alpha=8, dropout=0.0)).model
    torch.manual_seed(0)
    with torch.no_grad():
        for p in lora_parameters(sub).values():
            p.normal_(0, 0.05)  # B != 0, so the LoRA path takes part
    return sub, tok


def _examples(tok, n=7):
    return [encode_example(tok, {"instruction": "word " * (3 + 7 * i), "response": "yes " * (1 + i % 3)}, "chat", 128)
            for i in range(n)]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3"])  # grouped-query heads; Gemma3: sliding window 16
def test_every_kernel_and_layout_gives_the_padded_sdpa_loss_and_gradients(name):
    sub, tok = _submodel(name)
    enc = _examples(tok)
    assert max(len(e["input_ids"]) for e in enc) > 16  # longer than tiny-gemma3's window: the band matters
    results = {}
    # both kernels: padded, packed row-wise, and packed under transformers' own mask from the positions
    for kernel, make, rows in [(k, m, r) for k in ("sdpa", "eager") for m, r in ((collate, False), (pack, True),
                                                                                 (pack, False))]:
        sub.zero_grad(set_to_none=True)
        with attention_kernel(sub, kernel, rows=rows):
            assert attention_of(sub) == {("rows_" if rows else "") + kernel}
            loss, n = lm_loss(sub, make(enc, tok.pad_token_id))
        (loss / n).backward()
        grads = {k: p.grad.clone() for k, p in lora_parameters(sub).items() if p.grad is not None}
        results[kernel, make.__name__, rows] = (float(loss.detach()) / n, grads)
    ref_loss, ref_grads = results["sdpa", "collate", False]
    assert ref_grads
    for key, (loss, grads) in results.items():
        assert math.isclose(loss, ref_loss, rel_tol=1e-5), key
        for k in ref_grads:
            assert torch.allclose(grads[k], ref_grads[k], atol=1e-6, rtol=1e-4), (key, k)


def test_packed_training_runs_the_rows_kernel_and_restores_the_model(monkeypatch):
    import devft_lab.core.packed_attention as pa

    sub, tok = _submodel("tiny-llama")
    calls = []
    real = pa._rows_attention
    monkeypatch.setattr(pa, "_rows_attention", lambda *a, **k: calls.append(k["kernel"]) or real(*a, **k))
    before = attention_of(sub)
    train_local(sub, _examples(tok), steps=1, batch_size=4, lr=1e-3,
                compute=Compute(attention="eager", pad_id=tok.pad_token_id))
    assert calls and set(calls) == {"eager"} and attention_of(sub) == before
    calls.clear()
    train_local(sub, _examples(tok), steps=1, batch_size=4, lr=1e-3,
                compute=Compute(packing=False, pad_id=tok.pad_token_id))
    assert not calls  # padded batches keep transformers' own kernels


def test_rows_attention_refuses_a_batch_without_the_layout():
    sub, tok = _submodel("tiny-llama")
    batch = collate(_examples(tok), tok.pad_token_id)
    with attention_kernel(sub, "eager", rows=True), pytest.raises(ValueError, match="packed_rows"):
        lm_loss(sub, batch)
