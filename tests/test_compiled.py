"""Regional compilation (train.compile): the same training as eager, and eager again afterwards."""
import math

import pytest
import torch

from devft_lab.core.compiled import compile_available, compiled_layers
from devft_lab.core.layers import decoder_layers
from devft_lab.core.models import load_model
from devft_lab.core.train import Compute, encode_example, train_local
from devft_lab.fl.client import get_lora_state, set_lora_state

pytestmark = pytest.mark.skipif(not compile_available()[0], reason=compile_available()[1])


def _peft_tiny(dropout: float = 0.0):
    from peft import get_peft_model

    from devft_lab.method.submodel import default_lora_config

    model, tok = load_model("tiny-llama", device="cpu")
    pm = get_peft_model(model, default_lora_config(r=4, alpha=8, dropout=dropout))
    enc = [encode_example(tok, {"instruction": "word " * (2 + 5 * i), "response": "yes " * (1 + i % 3)}, "chat", 96)
           for i in range(10)]
    return pm, tok, enc


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_compiled_training_matches_eager_training_and_leaves_the_layers_eager(dropout):
    pm, tok, enc = _peft_tiny(dropout)
    start = get_lora_state(pm)
    runs = []
    for compile in (False, True):
        set_lora_state(pm, start)
        torch.manual_seed(0)  # dropout: compiled layers draw from torch's generator, as eager does
        losses = []
        s = train_local(pm, enc, steps=4, batch_size=4, lr=1e-2, seed=0, progress=lambda i, l: losses.append(l),
                        compute=Compute(compile=compile, pad_id=tok.pad_token_id))
        runs.append((s, losses, get_lora_state(pm)))
    (s0, l0, a), (s1, l1, b) = runs
    assert s0.tokens == s1.tokens and len(l0) == len(l1) == 4
    for x, y in zip(l0, l1):  # fp32: the same maths, fused, so equal to float rounding
        assert math.isclose(x, y, rel_tol=1e-4), (l0, l1)
    assert l1[-1] < l1[0]  # and it trains
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    assert all(layer._compiled_call_impl is None for layer in decoder_layers(pm.get_base_model()))


def test_compiled_layers_is_a_no_op_when_disabled():
    pm, _, _ = _peft_tiny()
    with compiled_layers(pm, enabled=False) as on:
        assert on is False
        assert all(layer._compiled_call_impl is None for layer in decoder_layers(pm.get_base_model()))
    with compiled_layers(pm) as on:
        assert on is True
        assert all(layer._compiled_call_impl is not None for layer in decoder_layers(pm.get_base_model()))
    assert all(layer._compiled_call_impl is None for layer in decoder_layers(pm.get_base_model()))


def test_train_compile_is_not_part_of_the_config_hash():
    from devft_lab.runner.config import config_hash, load_config

    a, b = load_config("tiny"), load_config("tiny", ["train.compile=true"])
    assert b.train.compile is True and config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(load_config("tiny", ["train.packing=false"]))
