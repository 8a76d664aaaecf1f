"""Worked answers to the exercises of notebook 02 (gradient conflicts and layer similarity).

Each function runs in either profile (``DEVFT_PROFILE=ci``: the tiny random model, seconds)
and asserts what it finds.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def exercise_1():
    """A weakly connected layer gets a group of its own.

    Ten layers that are all equally similar (W = 0.5), except layer 6, whose similarity to every
    other layer is only 0.01. Cutting layer 6 off has RatioCut 0.09/1 + 0.09/9 = 0.1 (the cut,
    9 × 0.01, divided by each side's size), far less than a balanced split, which cuts many pairs
    of weight 0.5; so spectral DGLG isolates it, while EVEN keeps it with its neighbours.
    """
    from devft_lab.method.grouping import cut_value, group_layers

    L, weak = 10, 6
    W = np.full((L, L), 0.5)
    W[weak, :] = W[:, weak] = 0.01
    np.fill_diagonal(W, 1.0)
    spectral = group_layers(W, L, 2, method="spectral")
    even = group_layers(W, L, 2, method="even")
    assert [weak] in spectral, f"spectral DGLG isolates layer {weak}: {spectral}"
    assert [weak] not in even
    rc_spectral, rc_even = cut_value(W, spectral, "ratio"), cut_value(W, even, "ratio")
    assert rc_spectral < rc_even
    # the Fiedler vector (eigenvector 2 of D - W) localises on the weak layer
    from devft_lab.teach.explore import spectral_embedding

    _, emb = spectral_embedding(W, 2)
    fiedler = np.abs(emb[:, 1])
    assert int(np.argmax(fiedler)) == weak
    print(f"spectral groups {spectral} (RatioCut {rc_spectral:.3f}); EVEN {even} (RatioCut {rc_even:.3f})")


def exercise_2():
    """For Gaussian vectors with correlation ρ, the share of coordinates with opposite signs is
    arccos(ρ)/π: cosine 0 ↔ sign-conflict rate 0.5, cosine 1 ↔ 0, cosine −1 ↔ 1.

    So the notebook's two measures tell the same story for gradients that look Gaussian: a mean
    cosine near 0 goes with a sign-conflict rate near 0.5.
    """
    from devft_lab.method import client_update_conflict

    d = 200_000
    g = torch.Generator().manual_seed(0)
    for rho in (-0.5, 0.0, 0.5, 0.9):
        x = torch.randn(d, generator=g, dtype=torch.float64)
        z = torch.randn(d, generator=g, dtype=torch.float64)
        y = rho * x + math.sqrt(1 - rho ** 2) * z
        view = client_update_conflict([{"w": x}, {"w": y}])
        cos, rate = float(view.cosine[0, 1]), float(view.sign_conflict[0, 1])
        assert abs(cos - rho) < 0.01, (rho, cos)
        assert abs(rate - math.acos(rho) / math.pi) < 0.01, (rho, rate)
        print(f"ρ = {rho:+.1f}: cosine {cos:+.3f}, sign-conflict rate {rate:.3f}, arccos(ρ)/π = {math.acos(rho) / math.pi:.3f}")


def exercise_3():
    """Clients holding texts of the same register agree more, on average, than clients of
    different registers.

    Two clients share the code texts, two share the cooking texts. The mean gradient cosine of the
    two same-register pairs (code-code, cooking-cooking) is higher than the mean of the four
    code-cooking pairs. (Single pairs can break the pattern when every client has only a few texts.)
    """
    from devft_lab.method import client_update_conflict
    from devft_lab.teach import explore
    from devft_lab.teach.profile import load_profile_model

    model, tok = load_profile_model()
    sub = explore.identity_submodel(model)  # the full model with LoRA, B = 0
    code, cooking = explore.TEXT_CATEGORIES["code"], explore.TEXT_CATEGORIES["cooking"]
    clients = {"code a": code[0::2], "code b": code[1::2], "cooking a": cooking[0::2], "cooking b": cooking[1::2]}
    grads = {k: explore.flatten_layers(explore.lora_gradients(sub, tok, t)) for k, t in clients.items()}
    names = list(grads)
    cos = client_update_conflict([grads[k] for k in names]).cosine
    c = {(a, b): float(cos[i, j]) for i, a in enumerate(names) for j, b in enumerate(names)}
    same = [c["code a", "code b"], c["cooking a", "cooking b"]]
    across = [c[a, b] for a in ("code a", "code b") for b in ("cooking a", "cooking b")]
    assert np.mean(same) > np.mean(across), f"same register {same}, across registers {across}"
    print(f"cosine, same register: code {same[0]:+.3f}, cooking {same[1]:+.3f} (mean {np.mean(same):+.3f}); "
          f"code vs cooking: {min(across):+.3f} to {max(across):+.3f} (mean {np.mean(across):+.3f})")


if __name__ == "__main__":
    for f in (exercise_1, exercise_2, exercise_3):
        f()
