"""Worked answers to the exercises of notebook 03 (fused layers: DBLF made visible).

Each function runs in either profile (``DEVFT_PROFILE=ci``: the tiny random model, seconds)
and asserts what it finds.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch


def dblf(layers, group, beta):
    """DBLF as written in the notebook: rep = θ_a + β Σ_j (θ_j − θ_a), tensor by tensor."""
    members = [dict(layers[j].named_parameters()) for j in group]
    anchor = members[0]
    rep = {}
    for name, theta_a in anchor.items():
        theta_a = theta_a.detach()
        rep[name] = theta_a + beta * sum(member[name].detach() - theta_a for member in members)
    return rep


def _first_stage(rule: str | None = None):
    """The profile's model, the demo config's first-stage groups under ``rule`` (default: the config's)."""
    from devft_lab.core.layers import decoder_layers, num_layers
    from devft_lab.method import group_layers, layer_parameter_similarity
    from devft_lab.runner.config import load_config, validate_against_model
    from devft_lab.teach.profile import load_profile_model

    cfg = load_config("demo")
    model, _ = load_profile_model()
    L = num_layers(model)
    caps = validate_against_model(cfg, L)
    rule = rule or cfg.devft.grouping
    sim = layer_parameter_similarity(model) if rule in ("spectral", "contiguous") else None
    groups = group_layers(sim, L, caps[0], method=rule, negatives=cfg.devft.affinity)
    return model, decoder_layers(model), groups, cfg


def exercise_1():
    """β = 1/m gives every member the weight 1/m: DBLF becomes MEAN.

    Expanded, the anchor's weight is 1 − β(m − 1) and every other member's is β. They are
    equal when 1 − β(m − 1) = β, that is β = 1/m.
    """
    from devft_lab.teach import explore

    model, layers, groups, _ = _first_stage("even")
    group = max(groups, key=len)
    m = len(group)
    assert m > 1, "the first stage has a group of more than one layer"
    beta = 1 / m
    assert abs((1 - beta * (m - 1)) - beta) < 1e-12  # the anchor's weight equals the others'
    rep = dblf(layers, group, beta)
    for name in rep:
        mean = explore.fused_tensor(model, group, name, method="mean")
        assert torch.allclose(rep[name], mean, atol=1e-5), name
    print(f"group of m = {m}: DBLF at β = 1/m = {beta:.4f} equals MEAN on all {len(rep)} tensors")


def exercise_2():
    """The largest β with no negative anchor weight is 1 / (m_max − 1), m_max the largest group.

    The anchor weight 1 − β(m − 1) decreases with m, so the largest group reaches 0 first.
    """
    from devft_lab.method import fusion_weights

    _, _, groups, cfg = _first_stage()
    m_max = max(len(g) for g in groups)
    assert m_max > 1, "the first stage fuses at least two layers into one"
    beta_max = 1 / (m_max - 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # DBLF warns about negative anchor weights
        at = [fusion_weights(len(g), "dblf", beta_max)[0] for g in groups]
        above = [fusion_weights(len(g), "dblf", beta_max * 1.01)[0] for g in groups]
    assert min(at) >= -1e-12, "no anchor is negative at β_max"
    assert min(above) < 0, "a slightly larger β makes the largest group's anchor negative"
    print(f"{cfg.devft.grouping} groups of the first stage, sizes {sorted(map(len, groups))}: "
          f"β_max = 1/(m_max − 1) = {beta_max:.4f} (the config uses β = {cfg.devft.beta})")


def exercise_3():
    """Σ_j w_j² = (1 − β(m − 1))² + (m − 1)β² is smallest at β = 1/m (MEAN), where it is 1/m:
    the fused layer of m orthogonal members has 1/√m of a member's norm.

    d/dβ: −2(m − 1)(1 − β(m − 1)) + 2(m − 1)β = 0  ⇒  β = 1/m.
    """
    from devft_lab.method.fusion import fuse_tensors, fusion_weights

    m, d = 8, 512
    g = torch.Generator().manual_seed(0)
    members = [torch.randn(d, d, generator=g) for _ in range(m)]
    betas = np.linspace(0.0, 0.5, 101)
    ratios, predicted = [], []
    for b in betas:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            w = fusion_weights(m, "r-one") if b == 0 else fusion_weights(m, "dblf", float(b))
        ratios.append(float(fuse_tensors(members, w).norm() / members[0].norm()))
        predicted.append(float(np.sqrt(np.sum(np.square(w)))))
    ratios, predicted = np.array(ratios), np.array(predicted)
    assert np.allclose(ratios, predicted, rtol=0.02), "random matrices follow the orthogonal prediction"
    best = betas[int(np.argmin(ratios))]
    assert abs(best - 1 / m) <= 0.005 + 1e-12, f"the smallest norm is at β = 1/m = {1 / m}, found {best}"
    assert abs(ratios.min() - 1 / np.sqrt(m)) < 0.02
    print(f"m = {m}: smallest norm ratio {ratios.min():.3f} at β = {best:.3f} (1/m = {1 / m:.3f}, "
          f"1/√m = {1 / np.sqrt(m):.3f})")


if __name__ == "__main__":
    for f in (exercise_1, exercise_2, exercise_3):
        f()
