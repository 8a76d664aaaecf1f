"""DGLG grouping and the layer similarity / conflict views."""
import itertools

import numpy as np
import pytest
import torch

from devft_lab.method.grouping import (canonical, contiguous_groups, cut_value, even_groups, group_layers,
                                       random_groups, spectral_groups, validate_groups)
from devft_lab.method.similarity import (client_update_conflict, cosine_from_gram, layer_update_conflict,
                                         streamed_gram, streamed_sign_conflict)


def planted(sizes, inside=0.9, outside=0.05, noise=0.03, seed=0, shuffle=True):
    """Similarity with planted blocks (optionally on shuffled layer indices)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    if shuffle:
        labels = rng.permutation(labels)
    s = np.where(labels[:, None] == labels[None, :], inside, outside) + noise * rng.standard_normal((len(labels),) * 2)
    s = (s + s.T) / 2
    np.fill_diagonal(s, 1.0)
    truth = canonical([list(np.flatnonzero(labels == c)) for c in range(len(sizes))])
    return s, truth


def _check_partition(groups, L, k):
    validate_groups(groups, L, k)
    assert groups == canonical(groups)


@pytest.mark.parametrize("method", ["spectral", "contiguous", "even", "random"])
@pytest.mark.parametrize("L, k", [(8, 1), (8, 3), (8, 8), (30, 4), (30, 15), (13, 5)])
def test_exactly_k_groups(method, L, k):
    s, _ = planted([L], seed=L)
    for seed in range(3):
        _check_partition(group_layers(s, L, k, method=method, seed=seed), L, k)


def test_degenerate_similarity_is_repaired():
    # all-equal similarity: eigenvectors carry no structure, k-means may merge clusters
    s = np.ones((10, 10))
    for k in range(1, 11):
        _check_partition(spectral_groups(s, k), 10, k)
        _check_partition(spectral_groups(np.zeros((10, 10)), k), 10, k)


@pytest.mark.parametrize("sizes", [[3, 5, 4], [2, 2, 2, 2], [7, 8, 8, 7]])
@pytest.mark.parametrize("negatives", ["clip", "shift"])
def test_spectral_recovers_planted_blocks(sizes, negatives):
    s, truth = planted(sizes, seed=len(sizes))
    assert spectral_groups(s, len(sizes), negatives=negatives, seed=1) == truth


def test_contiguous_recovers_contiguous_blocks():
    s, truth = planted([3, 5, 4, 6], shuffle=False)
    assert contiguous_groups(s, 4) == truth


@pytest.mark.parametrize("objective", ["ratio", "cut"])
@pytest.mark.parametrize("seed", range(5))
def test_contiguous_is_contiguous_and_beats_even(objective, seed):
    rng = np.random.default_rng(seed)
    s = rng.uniform(-0.2, 1, (16, 16))
    for k in [2, 3, 5, 8]:
        g = contiguous_groups(s, k, objective=objective)
        _check_partition(g, 16, k)
        assert all(grp == list(range(grp[0], grp[-1] + 1)) for grp in g)
        assert cut_value(s, g, objective) <= cut_value(s, even_groups(16, k), objective) + 1e-9


def test_contiguous_dp_is_optimal_by_brute_force():
    rng = np.random.default_rng(3)
    s = rng.uniform(0, 1, (9, 9))
    for k in [2, 3, 4]:
        best = min(
            (cut_value(s, [list(range(a, b)) for a, b in zip((0, *c), (*c, 9))], "ratio"))
            for c in itertools.combinations(range(1, 9), k - 1))
        assert cut_value(s, contiguous_groups(s, k), "ratio") == pytest.approx(best)


def test_even_and_random_baselines():
    assert even_groups(10, 3) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert random_groups(30, 8, seed=1) == random_groups(30, 8, seed=1)
    assert random_groups(30, 8, seed=1) != random_groups(30, 8, seed=2)


@pytest.mark.parametrize("groups, match", [
    ([[0, 1], [3]], r"miss layer\(s\) \[2\]"),
    ([[0, 1], [1, 2, 3]], r"repeat layer\(s\) \[1\]"),
    ([[0, 1], [], [2, 3]], "non-empty"),
    ([[0, 1], [2, 3, 4]], "outside"),
])
def test_bad_groups(groups, match):
    with pytest.raises(ValueError, match=match):
        validate_groups(groups, 4)


def test_bad_grouping_arguments():
    with pytest.raises(ValueError, match="cannot split 4 layers into 5"):
        even_groups(4, 5)
    with pytest.raises(ValueError, match="negatives must be one of"):
        spectral_groups(np.eye(4), 2, negatives="abs")
    with pytest.raises(ValueError, match="square"):
        spectral_groups(np.ones((3, 4)), 2)
    with pytest.raises(ValueError, match="needs a similarity"):
        group_layers(None, 4, 2, method="spectral")


def test_streamed_gram_equals_concatenation():
    g = torch.Generator().manual_seed(0)
    states = [{"a": torch.randn(3, 4, generator=g), "b": torch.randn(5, generator=g)} for _ in range(4)]
    flat = torch.stack([torch.cat([s["a"].flatten(), s["b"]]) for s in states]).double()
    assert torch.allclose(streamed_gram(states), flat @ flat.T, atol=1e-5)
    cos = cosine_from_gram(streamed_gram(states))
    assert torch.allclose(cos, torch.nn.functional.cosine_similarity(flat[:, None], flat[None], dim=-1), atol=1e-6)
    signs = flat.sign()
    want = ((signs[:, None] * signs[None]) < 0).double().mean(-1)
    assert torch.allclose(streamed_sign_conflict(states), want)


def test_update_conflict_views():
    u = {"lora_A": torch.tensor([1.0, -2.0, 3.0, 0.0])}
    neg = {"lora_A": -u["lora_A"]}
    view = client_update_conflict([u, neg, u])
    assert view.cosine[0, 1] == pytest.approx(-1) and view.cosine[0, 2] == pytest.approx(1)
    assert view.sign_conflict[0, 1] == pytest.approx(1) and view.sign_conflict[0, 2] == 0
    by_layer = layer_update_conflict({1: neg, 0: u})
    assert by_layer.cosine[0, 1] == pytest.approx(-1)
    with pytest.raises(ValueError, match="at least 2 clients"):
        client_update_conflict([u])
    with pytest.raises(ValueError, match="different tensor names"):
        client_update_conflict([u, {"lora_B": u["lora_A"]}])
