"""Solutions to the exercises of notebook 01 (building submodels).

They run on the active profile's model (``DEVFT_PROFILE=ci``: the random 8-layer tiny model, seconds;
unset: SmolLM2-135M-Instruct), print what they find and assert it. From the ``notebooks/`` folder::

    DEVFT_PROFILE=ci python -c "import solutions.nb01 as s; s.exercise_1()"
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import torch

from devft_lab.teach.profile import repo_root

ROOT = repo_root(Path(__file__).parent)


def dblf(states, beta):
    """rep = theta_anchor + beta * sum_j (theta_j - theta_anchor), tensor by tensor (eq. 4 of notebook 01).
    states: the group's layer state dicts, anchor first."""
    anchor = states[0]
    rep = {}
    for name, theta_a in anchor.items():
        diff = sum(s[name].float() - theta_a.float() for s in states)
        rep[name] = (theta_a.float() + beta * diff).to(theta_a.dtype)
    return rep


def exercise_1(m: int = 4) -> float:
    """DBLF is the mean of a group of m layers at beta = 1/m: the anchor's weight 1 - (m - 1)/m = 1/m too."""
    from devft_lab.core.layers import decoder_layers, num_layers
    from devft_lab.method import fuse_state_dicts, fusion_weights
    from devft_lab.teach.profile import load_profile_model

    model, _ = load_profile_model()
    m = min(m, num_layers(model))
    states = [decoder_layers(model)[i].state_dict() for i in range(m)]
    beta = 1 / m
    mine = dblf(states, beta)
    mean = fuse_state_dicts(states, fusion_weights(m, "mean"))
    worst = max((mine[k] - mean[k]).abs().max().item() for k in mine)
    print(f"beta = 1/{m}: DBLF of layers 0..{m - 1} differs from their mean by at most {worst:.1e}")
    assert all(torch.allclose(mine[k], mean[k], rtol=1e-5, atol=1e-6) for k in mine)
    other = dblf(states, beta / 2)
    assert not all(torch.allclose(other[k], mean[k], rtol=1e-5, atol=1e-6) for k in mine), "another beta is not the mean"
    return beta


def exercise_2() -> dict[float, int]:
    """The largest group with non-negative DBLF weights is m = floor(1 + 1/beta): 11 at 0.1, 7 at 0.15;
    SmolLM2's spectral groups exceed it at every stage but the last."""
    from devft_lab.method import anchor_weight

    largest = {}
    for beta in (0.1, 0.15):
        m_max = max(m for m in range(1, 100) if anchor_weight(m, beta) >= -1e-12)  # allow float rounding at 0
        assert m_max == math.floor(1 + 1 / beta + 1e-9)
        largest[beta] = m_max
    print("largest group with non-negative weights:", largest)
    assert largest == {0.1: 11, 0.15: 7}
    data = json.loads((ROOT / "results" / "submodels_smollm2.json").read_text(encoding="utf-8"))
    beta = data["beta"]
    negative = [s + 1 for s, st in enumerate(data["stages"])
                if min(anchor_weight(len(g), beta) for g in st["groups"]) < 0]
    print(f"SmolLM2, spectral groups, beta {beta}: a negative anchor weight at stages {negative}")
    assert negative == list(range(1, len(data["stages"])))  # every stage but the last (singletons)
    return largest


def exercise_3():
    """The schedule picture for EVEN groups; a groups list that misses a layer is refused."""
    from devft_lab.core.layers import num_layers
    from devft_lab.method import even_groups, make_schedule
    from devft_lab.runner.config import load_config, stage_rounds
    from devft_lab.teach.profile import load_profile_model
    from devft_lab.teach.schematic import schedule_diagram

    model, _ = load_profile_model()
    L = num_layers(model)
    caps = [st.capacity for st in make_schedule(L)]
    rounds = stage_rounds(load_config("demo"))
    stages = [{"capacity": c, "groups": even_groups(L, c), "rounds": r} for c, r in zip(caps, rounds)]
    fig = schedule_diagram(stages, L)
    biggest = max(map(len, stages[0]["groups"]))
    print(f"L = {L}, capacities {caps}: {len(fig.axes)} panels; EVEN's largest group at stage 1 has {biggest} layers")
    assert len(fig.axes) == len(caps) and biggest == math.ceil(L / caps[0])
    broken = [dict(st) for st in stages]
    broken[1]["groups"] = [list(g) for g in broken[1]["groups"]]
    dropped = broken[1]["groups"][0].pop()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            schedule_diagram(broken, L)
    except ValueError as e:
        print("refused:", e)
        assert "stage 2" in str(e) and f"miss layer(s) [{dropped}]" in str(e)
    else:
        raise AssertionError("a groups list that misses a layer must be refused")
    return fig


if __name__ == "__main__":
    exercise_1()
    exercise_2()
    exercise_3()
