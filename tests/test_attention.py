"""The training step's attention kernel: set everywhere in a fused submodel, probed (the same maths
in every kernel and layout: tests/test_packed_attention.py)."""

import pytest
import torch
import torch.nn.functional as F

from devft_lab.core import attention
from devft_lab.core.attention import attention_kernel, attention_of, choose_attention, probe_attention
from devft_lab.core.models import load_model
from devft_lab.core.train import Compute, encode_example, lm_loss, pack, train_local


def _submodel(name="tiny-llama"):
    from devft_lab.method.grouping import even_groups
    from devft_lab.method.submodel import build_submodel, default_lora_config

    model, tok = load_model(name, device="cpu")
    sub = build_submodel(model, even_groups(8, 4), 0.1, "dblf", default_lora_config(r=4, alpha=8, dropout=0.0)).model
    return sub, tok


def _examples(tok, n=7):
    return [encode_example(tok, {"instruction": "word " * (3 + 7 * i), "response": "yes " * (1 + i % 3)}, "chat", 128)
            for i in range(n)]


def test_the_kernel_reaches_every_layer_of_a_fused_submodel_and_is_restored():
    sub, _ = _submodel()
    assert len(attention._configs(sub)) > 1  # the fused layers hold configs of their own
    before = attention_of(sub)
    with attention_kernel(sub, "eager"):
        assert attention_of(sub) == {"eager"}
    assert attention_of(sub) == before


def test_eager_runs_no_sdpa_and_sdpa_does(monkeypatch):
    sub, tok = _submodel()
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    batch = pack(_examples(tok), tok.pad_token_id)
    for kernel, expect_calls in (("eager", False), ("sdpa", True)):
        calls.clear()
        with attention_kernel(sub, kernel):
            lm_loss(sub, batch)
        assert bool(calls) is expect_calls, kernel


def test_train_local_trains_with_the_kernel_it_is_given(monkeypatch):
    sub, tok = _submodel()
    seen = []
    real = attention_kernel

    def spy(model, kernel, rows=False):
        seen.append(kernel)
        return real(model, kernel, rows)

    monkeypatch.setattr("devft_lab.core.train.attention_kernel", spy)
    train_local(sub, _examples(tok), steps=1, batch_size=4, lr=1e-3,
                compute=Compute(attention="eager", pad_id=tok.pad_token_id))
    assert seen == ["eager"] and attention_of(sub) == {"sdpa"}  # restored after training


def test_probe_times_both_kernels_and_names_one():
    p = probe_attention(torch.float32, heads=2, head_dim=8, seq=32, rows=2, repeat=1)
    assert p["chosen"] in attention.KERNELS and set(p["ms"]) == {"sdpa", "eager"}
    assert all(v > 0 for v in p["ms"].values())


def test_eager_is_chosen_only_when_clearly_faster():
    assert attention.pick_kernel({"sdpa": 10.0, "eager": 5.0}) == "eager"
    assert attention.pick_kernel({"sdpa": 10.0, "eager": 9.5}) == "sdpa"  # within the probe's noise
    assert attention.pick_kernel({"sdpa": 5.0, "eager": 10.0}) == "sdpa"


def test_choose_attention_takes_a_named_kernel_and_refuses_an_unknown_one():
    sub, _ = _submodel()
    assert choose_attention("eager", "float32", sub) == ("eager", None)
    kernel, probe = choose_attention("auto", "float32", sub)
    assert probe is not None and kernel == probe["chosen"] and probe["shape"][1::2] == [4, 16]
    with pytest.raises(ValueError, match="use auto, sdpa, eager"):
        choose_attention("flash", "float32", sub)
    assert choose_attention("auto", "float32", torch.nn.Linear(2, 2)) == ("sdpa", None)  # no transformers config
