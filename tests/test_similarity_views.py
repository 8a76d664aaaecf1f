"""The devft_lab similarity views added beside the paper's W (per-tensor, functional)."""
import copy

import torch

from devft_lab.core.layers import decoder_layers, with_layers
from devft_lab.method.similarity import (layer_function_similarity, layer_parameter_similarity,
                                         layer_parameter_similarity_per_tensor)
from devft_lab.core.models import load_model


def _tiny():
    model, tok = load_model("tiny-llama", device="cpu")
    return model, tok


def test_per_tensor_similarity_properties():
    model, _ = _tiny()
    sim = layer_parameter_similarity_per_tensor(model)
    L = len(decoder_layers(model))
    assert sim.shape == (L, L)
    assert torch.allclose(sim, sim.T, atol=1e-6)
    assert torch.allclose(sim.diagonal(), torch.ones(L), atol=1e-5)
    assert sim.abs().max() <= 1 + 1e-5


def test_per_tensor_similarity_of_copied_layers_is_one():
    model, _ = _tiny()
    layers = decoder_layers(model)
    twin = with_layers(model, [layers[0], copy.deepcopy(layers[0]), layers[1]], None)
    sim = layer_parameter_similarity_per_tensor(twin)
    assert abs(float(sim[0, 1]) - 1.0) < 1e-5


def test_per_tensor_cosine_equals_plain_cosine_for_one_tensor():
    model, _ = _tiny()
    name = "self_attn.q_proj.weight"
    names = [n for n, _ in decoder_layers(model)[0].named_parameters()]
    skip = [n for n in names if n != name]
    one = layer_parameter_similarity_per_tensor(model, center=False, skip=skip)
    x = torch.stack([dict(l.named_parameters())[name].detach().reshape(-1) for l in decoder_layers(model)])
    x = x / x.norm(dim=1, keepdim=True)
    assert torch.allclose(one, x @ x.T, atol=1e-5)
    # With every tensor kept and no centring it differs from the concatenated cosine in general,
    # but both are L x L similarity matrices of the same model.
    assert layer_parameter_similarity(model).shape == one.shape


def test_function_similarity_properties():
    model, tok = _tiny()
    batch = tok(["the cat sat on the mat", "a b c"], return_tensors="pt", padding=True)
    sim = layer_function_similarity(model, [batch])
    L = len(decoder_layers(model))
    assert sim.shape == (L, L)
    assert torch.allclose(sim, sim.T, atol=1e-5)
    assert torch.allclose(sim.diagonal(), torch.ones(L), atol=1e-4)
