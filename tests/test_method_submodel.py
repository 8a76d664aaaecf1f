"""Submodels on tiny LLaMA / Qwen2 / Gemma3, knowledge transfer, similarity on real layers."""
import copy

import pytest
import torch

from devft_lab.core.layers import decoder_layers, num_layers
from devft_lab.method.fusion import fusion_weights
from devft_lab.method.grouping import even_groups, spectral_groups
from devft_lab.method.similarity import block_influence, layer_parameter_similarity
from devft_lab.method.submodel import (build_submodel, default_lora_config, init_global_lora,
                                       set_submodel_lora_state)
from devft_lab.method.transfer import transfer_lora
from devft_lab.core.models import load_model

ARCHS = ["tiny-llama", "tiny-qwen2", "tiny-gemma3"]
TEXT = ["The quick brown fox jumps over the lazy dog.", "DevFT grows the model stage by stage."]


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request):
    model, tok = load_model(request.param, device="cpu")
    return model, tok


def nonzero_lora(model, cfg, seed=0):
    lora = init_global_lora(model, cfg, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    for layer in lora.values():
        for k, t in layer.items():
            if "lora_B" in k:
                layer[k] = 0.05 * torch.randn(t.shape, generator=g)
    return lora


def full_with_lora(model, cfg, lora):
    from peft import get_peft_model

    ref = get_peft_model(copy.deepcopy(model), cfg)
    set_submodel_lora_state(ref, lora)
    return ref.eval()


@pytest.mark.parametrize("beta", [0.1, 0.7])
def test_singleton_groups_reproduce_full_model(tiny, beta):
    model, tok = tiny
    cfg = default_lora_config(r=4, alpha=8)
    lora = nonzero_lora(model, cfg)
    L = num_layers(model)
    sub = build_submodel(model, [[i] for i in range(L)], beta=beta, lora_config=cfg, global_lora=lora)
    enc = tok(TEXT, return_tensors="pt", padding=True)
    with torch.no_grad():
        want = full_with_lora(model, cfg, lora)(**enc).logits
        got = sub.model.eval()(**enc).logits
        plain = model(**enc).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(plain, want, atol=1e-3)  # the LoRA really is non-zero


def test_submodel_is_fused_and_shares_embeddings(tiny):
    model, tok = tiny
    cfg = default_lora_config(r=4, alpha=8)
    lora = nonzero_lora(model, cfg)
    L = num_layers(model)
    groups = even_groups(L, 3)
    before = {n: p.clone() for n, p in model.named_parameters()}
    sub = build_submodel(model, groups, beta=0.2, lora_config=cfg, global_lora=lora)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # full model untouched
    base = sub.model.get_base_model()
    assert base.model.embed_tokens is model.model.embed_tokens
    assert base.model.norm is model.model.norm and base.lm_head is model.lm_head
    assert len(decoder_layers(base)) == 3 and base.config.num_hidden_layers == 3
    full_types = model.config.layer_types if getattr(model.config, "layer_types", None) else [None] * L
    assert sub.types == [full_types[g[0]] for g in groups]
    assert sub.anchors == [g[0] for g in groups]
    # a fused base tensor and fused LoRA follow the DBLF formula
    g1 = groups[1]
    w = fusion_weights(len(g1), "dblf", 0.2)
    name = "mlp.down_proj.weight"
    want = sum(wj * dict(decoder_layers(model)[i].named_parameters())[name] for wj, i in zip(w, g1))
    got = dict(decoder_layers(base)[1].named_parameters())[name]
    assert torch.allclose(got, want, atol=1e-6)
    state = sub.lora_state()
    k = "self_attn.q_proj.lora_B.weight"
    assert torch.allclose(state[1][k], sum(wj * lora[i][k] for wj, i in zip(w, g1)), atol=1e-6)
    enc = tok(TEXT, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = sub.model(**enc).logits
    assert out.shape[:2] == enc.input_ids.shape and torch.isfinite(out).all()


def test_gemma3_mixed_group_takes_anchor_type():
    model, _ = load_model("tiny-gemma3", device="cpu")
    types = model.config.layer_types  # layer 2 is full attention, 0 and 1 sliding
    sub = build_submodel(model, [[0, 1, 2], [3, 4, 5, 6, 7]], beta=0.1, lora_config=default_lora_config(r=2))
    assert sub.types == [types[0], types[3]]
    assert sub.model.get_base_model().config.layer_types == sub.types
    reps = decoder_layers(sub.model.get_base_model())
    assert [r.self_attn.layer_type for r in reps] == sub.types
    assert reps[0].self_attn.is_sliding and types[2] == "full_attention"


def test_lora_round_trip_and_transfer(tiny):
    model, _ = tiny
    cfg = default_lora_config(r=4, alpha=8)
    lora = nonzero_lora(model, cfg)
    L = num_layers(model)
    groups = [[0, 1, 2], [3], [4, 5, 6, 7]]
    sub = build_submodel(model, groups, lora_config=cfg, global_lora=lora)
    trained = {g: {k: t + 1.0 for k, t in d.items()} for g, d in sub.lora_state().items()}
    sub.load_lora_state(trained)
    assert all(torch.equal(sub.lora_state()[g][k], trained[g][k]) for g in trained for k in trained[g])
    new = transfer_lora(lora, groups, sub.lora_state())
    for g, members in enumerate(groups):
        for i in members:
            assert all(torch.equal(new[i][k], trained[g][k]) for k in trained[g])
    assert all(torch.equal(lora[0][k], t) for k, t in init_global_lora(model, cfg, 0)[0].items() if "lora_A" in k)
    # singleton groups: transfer of the submodel's own (untrained) LoRA is the identity
    single = [[i] for i in range(L)]
    sub1 = build_submodel(model, single, beta=0.5, lora_config=cfg, global_lora=lora)
    same = transfer_lora(lora, single, sub1.lora_state())
    assert all(torch.equal(same[i][k], lora[i][k]) for i in lora for k in lora[i])


def test_transfer_and_build_errors():
    model, _ = load_model("tiny-llama", device="cpu")
    lora = init_global_lora(model, default_lora_config(r=2))
    reps = {0: lora[0], 1: lora[1]}
    with pytest.raises(ValueError, match=r"miss layer\(s\)"):
        transfer_lora(lora, [[0, 1, 2], [3]], reps)
    with pytest.raises(ValueError, match=r"repeat layer\(s\)"):
        transfer_lora(lora, [[0, 1, 2, 3], [3, 4, 5, 6, 7]], reps)
    with pytest.raises(ValueError, match="one representative LoRA per group"):
        transfer_lora(lora, [[0, 1, 2, 3], [4, 5, 6, 7]], {0: lora[0]})
    with pytest.raises(ValueError, match="beta must be > 0"):
        build_submodel(model, even_groups(8, 2), beta=0.0, lora_config=default_lora_config(r=2))
    with pytest.raises(ValueError, match=r"miss layer\(s\) \[7\]"):
        build_submodel(model, [[0, 1, 2], [3, 4, 5, 6]], lora_config=default_lora_config(r=2))
    with pytest.raises(ValueError, match="ordered by first layer"):
        build_submodel(model, [[4, 5, 6, 7], [0, 1, 2, 3]], lora_config=default_lora_config(r=2))
    with pytest.raises(ValueError, match="shape"):
        sub = build_submodel(model, even_groups(8, 2), lora_config=default_lora_config(r=2))
        sub.load_lora_state(init_global_lora(model, default_lora_config(r=4)))


def test_layer_similarity_and_block_influence(tiny):
    model, tok = tiny
    cfg = default_lora_config(r=4, alpha=8)
    L = num_layers(model)
    base = layer_parameter_similarity(model)
    assert base.shape == (L, L) and torch.allclose(base.diagonal(), torch.ones(L), atol=1e-5)
    assert torch.allclose(base, base.T, atol=1e-6)
    lora = nonzero_lora(model, cfg)
    merged = layer_parameter_similarity(model, lora, scaling=2.0)
    flat = [torch.cat([(p.detach() + (2.0 * lora[i][n.replace(".weight", ".lora_B.weight")]
                                      @ lora[i][n.replace(".weight", ".lora_A.weight")]
                                      if n.replace(".weight", ".lora_A.weight") in lora[i] else 0)).flatten()
                       for n, p in layer.named_parameters()]) for i, layer in enumerate(decoder_layers(model))]
    flat = torch.stack(flat)
    want = torch.nn.functional.cosine_similarity(flat[:, None], flat[None], dim=-1)
    assert torch.allclose(merged, want, atol=1e-5)
    assert torch.allclose(layer_parameter_similarity(model, lora, include_lora=False), base)
    assert len(spectral_groups(merged, 3)) == 3
    bi = block_influence(model, [dict(tok(TEXT, return_tensors="pt", padding=True))])
    assert bi.shape == (L,) and torch.isfinite(bi).all() and (bi >= -1e-6).all() and (bi <= 2).all()
