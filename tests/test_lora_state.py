import math
import zlib

import pytest
import torch

from devft_lab.core.lora import (draw_lora_a, is_lora_a, key_seed, layer_key_pattern, seeded_lora_init, to_flat,
                                 to_layers)

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


def test_per_key_seed_rule_is_the_documented_formula():
    template = flat(2)
    out = seeded_lora_init(template, seed=5)
    for k, v in template.items():
        if is_lora_a(k):
            seed = (5 * 1_000_003 + zlib.crc32(k.encode())) % 2**63
            assert key_seed(5, k) == seed
            g = torch.Generator().manual_seed(seed)
            expected = (torch.rand(v.shape, generator=g) * 2 - 1) / math.sqrt(v.shape[1])
            assert torch.equal(out[k], expected)
            assert float(out[k].abs().max()) <= 1 / math.sqrt(v.shape[1])
        else:
            assert torch.count_nonzero(out[k]) == 0
    # the adapter-name spelling gives the same A (the seed uses the canonical key)
    k = KEY.format(i=0, m="q", ab="A")
    named = {k.replace("lora_A.weight", "lora_A.default.weight"): template[k]}
    assert torch.equal(next(iter(seeded_lora_init(named, 5).values())), out[k])


def test_draw_is_uniform_in_the_kaiming_bound():
    a = draw_lora_a((64, 100), torch.Generator().manual_seed(0))
    assert a.dtype == torch.float32 and a.shape == (64, 100)
    assert float(a.abs().max()) <= 0.1 and float(a.abs().max()) > 0.099  # bound 1/sqrt(100)
    assert abs(float(a.mean())) < 0.005
