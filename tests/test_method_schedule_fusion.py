"""Schedule and DBLF fusion: properties and error messages."""
import pytest
import torch

from devft_lab.method.fusion import anchor_weight, fuse_state_dicts, fuse_tensors, fusion_weights
from devft_lab.method.schedule import make_schedule, stage_capacities, validate_capacities


def test_paper_schedule_and_rounding():
    assert stage_capacities(32) == [4, 8, 16, 32]
    assert stage_capacities(30) == [4, 8, 15, 30]
    assert stage_capacities(8) == [1, 2, 4, 8]
    assert stage_capacities(3, 3) == [1, 2, 3]
    for L in range(4, 40):
        caps = stage_capacities(L)
        validate_capacities(caps, L)
    stages = make_schedule(30, rounds=[1, 2, 3, 4])
    assert [(s.capacity, s.rounds) for s in stages] == [(4, 1), (8, 2), (15, 3), (30, 4)]


@pytest.mark.parametrize("caps, match", [
    ([4, 8, 40], "capacity > L"),
    ([4, 4, 30], "strictly increasing"),
    ([8, 4, 30], "strictly increasing"),
    ([4, 8, 15], "last stage must be the full model"),
    ([0, 8, 30], ">= 1"),
    ([], "at least one"),
])
def test_bad_schedules(caps, match):
    with pytest.raises(ValueError, match=match):
        make_schedule(30, capacities=caps)


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="stages need at least"):
        stage_capacities(3, 4)
    with pytest.raises(ValueError, match="growth must be > 1"):
        stage_capacities(30, 4, 1.0)
    with pytest.raises(ValueError, match="one per stage"):
        make_schedule(30, rounds=[1, 2])


@pytest.mark.parametrize("method", ["dblf", "mean", "laco", "r-one"])
@pytest.mark.parametrize("m", [1, 2, 5, 8])
@pytest.mark.parametrize("anchor", [0, -1])
def test_weights_sum_to_one(method, m, anchor):
    with pytest.warns() if (method == "dblf" and anchor_weight(m, 0.3) < 0) else _nothing():
        w = fusion_weights(m, method, beta=0.3, anchor_pos=anchor % m)
    assert len(w) == m and sum(w) == pytest.approx(1.0)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_sum_weights_and_anchor_weight():
    assert fusion_weights(4, "sum") == [1.0] * 4
    assert fusion_weights(4, "dblf", 0.1)[0] == pytest.approx(anchor_weight(4, 0.1)) == pytest.approx(0.7)
    with pytest.warns(UserWarning, match="anchor weight"):
        fusion_weights(13, "dblf", 0.1)


def _group(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"w": torch.randn(3, 4, generator=g), "n": torch.randn(4, generator=g)} for _ in range(m)]


def test_r_one_returns_anchor_and_singleton_returns_layer():
    states = _group(4)
    for a in range(4):
        out = fuse_state_dicts(states, fusion_weights(4, "r-one", anchor_pos=a))
        assert all(torch.equal(out[k], states[a][k]) for k in out)
    for method in ["dblf", "mean", "laco", "r-one", "sum"]:
        out = fuse_state_dicts(states[:1], fusion_weights(1, method, beta=0.7))
        assert all(torch.equal(out[k], states[0][k]) for k in out)


def test_dblf_formula_and_laco():
    states = _group(5)
    t = [s["w"] for s in states]
    for beta in [0.1, 0.15, 0.25]:
        want = t[0] + beta * sum(x - t[0] for x in t)
        got = fuse_tensors(t, fusion_weights(5, "dblf", beta))
        assert torch.allclose(got, want, atol=1e-6)
    laco = t[0] + sum(x - t[0] for x in t)  # LaCo: beta = 1
    with pytest.warns(UserWarning):
        dblf1 = fuse_tensors(t, fusion_weights(5, "dblf", 1.0))
    assert torch.allclose(fuse_tensors(t, fusion_weights(5, "laco")), laco, atol=1e-6)
    assert torch.allclose(dblf1, laco, atol=1e-6)
    mid = fusion_weights(5, "dblf", 0.1, anchor_pos=2)
    assert torch.allclose(fuse_tensors(t, mid), t[2] + 0.1 * sum(x - t[2] for x in t), atol=1e-6)


@pytest.mark.parametrize("beta", [0, -0.1])
def test_bad_beta(beta):
    with pytest.raises(ValueError, match="beta must be > 0"):
        fusion_weights(3, "dblf", beta)


def test_bad_fusion_inputs():
    with pytest.raises(ValueError, match="fusion method must be one of"):
        fusion_weights(3, "max")
    with pytest.raises(ValueError, match="different shapes"):
        fuse_tensors([torch.zeros(2), torch.zeros(3)], [0.5, 0.5])
    with pytest.raises(ValueError, match="one weight per tensor"):
        fuse_tensors([torch.zeros(2)], [0.5, 0.5])
