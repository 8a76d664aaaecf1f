import math

import pytest
import torch
from torch import nn

from devft_lab.core.lora import (delta, draw_lora_a, get_lora_state, is_lora_a, layer_key_pattern, seeded_lora_init,
                                 to_flat, to_layers)

KEY = "base_model.model.model.layers.{i}.self_attn.{m}_proj.lora_{ab}.weight"


def flat(layers=3):
    g = torch.Generator().manual_seed(0)
    return {KEY.format(i=i, m=m, ab=ab): torch.randn(2, 4, generator=g)
            for i in range(layers) for m in "qv" for ab in "AB"}


def test_parser_round_trip_and_prefix():
    state = flat()
    per_layer, prefix = to_layers(state)
    assert prefix == "base_model.model.model.layers"
    assert list(per_layer) == [0, 1, 2]
    assert sorted(per_layer[1]) == ["self_attn.q_proj.lora_A.weight", "self_attn.q_proj.lora_B.weight",
                                    "self_attn.v_proj.lora_A.weight", "self_attn.v_proj.lora_B.weight"]
    back = to_flat(per_layer, prefix)
    assert back.keys() == state.keys() and all(back[k] is state[k] for k in state)
    # a model whose layer list is not called "layers" (GPT-2: transformer.h)
    gpt2 = {"base_model.model.transformer.h.7.attn.c_attn.lora_A.weight": torch.zeros(1)}
    layers, pre = to_layers(gpt2, layer_key_pattern("transformer.h"))
    assert pre == "base_model.model.transformer.h" and list(layers) == [7]
    with pytest.raises(ValueError, match="decoder layer"):
        to_layers({"lm_head.lora_A.weight": torch.zeros(1)})


def test_the_seed_rule_is_one_generator_drawing_the_as_in_order():
    template = flat(2)
    out = seeded_lora_init(template, seed=5)
    g = torch.Generator().manual_seed(5)
    for k, v in template.items():
        if is_lora_a(k):
            expected = (torch.rand(v.shape, generator=g) * 2 - 1) / math.sqrt(v.shape[1])
            assert torch.equal(out[k], expected)
            assert float(out[k].abs().max()) <= 1 / math.sqrt(v.shape[1])
        else:
            assert torch.count_nonzero(out[k]) == 0
    # the adapter-name spelling gives the same A (the rule reads shapes and order, not names)
    named = {k.replace("lora_A.weight", "lora_A.default.weight"): v for k, v in template.items()}
    assert all(torch.equal(a, b) for a, b in zip(seeded_lora_init(named, 5).values(), out.values()))
    assert not torch.equal(seeded_lora_init(template, 6)[KEY.format(i=0, m="q", ab="A")],
                           out[KEY.format(i=0, m="q", ab="A")])


def test_flat_and_per_layer_initialisers_draw_the_same_as():
    from peft import get_peft_model

    from devft_lab.core.models import tiny_model
    from devft_lab.method.submodel import default_lora_config, init_global_lora

    model, _ = tiny_model("llama", num_layers=3, hidden=32, seed=0)
    cfg = default_lora_config(r=4)
    per_layer = init_global_lora(model, cfg, seed=7)
    template = get_lora_state(get_peft_model(model, cfg))
    flat_init, prefix = to_layers(seeded_lora_init(template, 7))
    assert flat_init.keys() == per_layer.keys()
    for i in per_layer:
        assert per_layer[i].keys() == flat_init[i].keys()
        assert all(torch.equal(per_layer[i][k], flat_init[i][k]) for k in per_layer[i])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("r, alpha", [(1, 1), (4, 8), (3, 16)])
def test_delta_is_peft_get_delta_weight(dtype, r, alpha):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(r * 31 + alpha)
    net = nn.Sequential(nn.Linear(7, 5)).to(dtype)
    model = get_peft_model(net, LoraConfig(r=r, lora_alpha=alpha, target_modules=["0"]))
    layer = model.base_model.model[0]
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()  # B starts at 0: make the product non-trivial
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    d = delta(a.detach(), b.detach(), alpha / r)
    assert d.shape == (5, 7) and d.dtype == dtype
    assert torch.equal(d, layer.get_delta_weight("default").detach())
    assert torch.count_nonzero(d) > 0
    # and what the layer adds to its output: W x + Delta W x
    x = torch.randn(3, 7, dtype=dtype)
    assert torch.allclose(layer(x), layer.base_layer(x) + x @ d.T, atol=1e-5)


def test_draw_is_uniform_in_the_kaiming_bound():
    a = draw_lora_a((64, 100), torch.Generator().manual_seed(0))
    assert a.dtype == torch.float32 and a.shape == (64, 100)
    assert float(a.abs().max()) <= 0.1 and float(a.abs().max()) > 0.099  # bound 1/sqrt(100)
    assert abs(float(a.mean())) < 0.005
