"""Architecture adapter: rebuilding a model over a list of decoder layers."""
import copy

import pytest
import torch

from devft_lab.core import layers
from devft_lab.core.models import load_model, tiny_model
from tests.conftest import TINY


def _ids(tok):
    return tok("DevFT grows a model stage by stage.", return_tensors="pt").input_ids


@pytest.mark.parametrize("name", TINY)
def test_rebuild_over_own_layers_gives_identical_logits(name):
    model, tok = load_model(name, device="cpu")
    ids = _ids(tok)
    with torch.no_grad():
        before = model(ids).logits
        again = layers.with_layers(model, list(layers.decoder_layers(model)))
        after = again(ids).logits
    assert torch.equal(before, after)


@pytest.mark.parametrize("name", TINY)
def test_subset_runs_forward_and_backward_and_shares_the_rest(name):
    model, tok = load_model(name, device="cpu")
    keep = [0, 2, 5]
    full_types = layers.layer_types(model)
    sub = layers.with_layers(
        model,
        [copy.deepcopy(layers.decoder_layers(model)[i]) for i in keep],
        types=[full_types[i] for i in keep],
    )
    assert layers.num_layers(sub) == 3 and sub.config.num_hidden_layers == 3
    assert model.config.num_hidden_layers == 8  # the full model's config is untouched
    assert sub.get_input_embeddings() is model.get_input_embeddings()
    assert sub.get_output_embeddings() is model.get_output_embeddings()
    assert sub.model.norm is model.model.norm
    ids = _ids(tok)
    out = sub(ids, labels=ids)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in layers.decoder_layers(sub).parameters()]
    assert all(g is not None for g in grads)
    # a sub-stack computes something different from the full stack
    with torch.no_grad():
        assert not torch.allclose(sub(ids).logits, model(ids).logits)


def test_gemma3_types_follow_the_layers():
    model, _ = load_model("tiny-gemma3", device="cpu")
    types = layers.layer_types(model)
    assert set(types) == {"sliding_attention", "full_attention"}
    sub = layers.with_layers(model, [copy.deepcopy(layers.decoder_layers(model)[i]) for i in (2, 3)],
                             types=[types[2], types[3]])
    assert sub.config.layer_types == ["full_attention", "sliding_attention"]
    with pytest.raises(ValueError, match="pass `types`"):
        layers.with_layers(model, [copy.deepcopy(layers.decoder_layers(model)[0])])


def test_layer_prefix_names_real_modules():
    model, _ = tiny_model("llama")
    names = dict(model.named_modules())
    assert layers.layer_prefix(model, 3) in names
    assert names[layers.layer_prefix(model, 3)] is layers.decoder_layers(model)[3]


def test_unsupported_architecture_is_named():
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("gpt2", n_layer=2, n_embd=32, n_head=2, vocab_size=100)
    gpt2 = AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(layers.UnsupportedArchitectureError, match="GPT2LMHeadModel.*gpt2"):
        layers.num_layers(gpt2)


def test_empty_layer_list_is_refused():
    model, _ = tiny_model("llama")
    with pytest.raises(ValueError, match="at least one"):
        layers.with_layers(model, [])
