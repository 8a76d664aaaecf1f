"""DBLF: differential-based layer fusion, and its ablation variants.

The paper (STATED), for a group of m layers with anchor a (the first layer)::

    rep = theta_a + beta * sum_{j in group} (theta_j - theta_a)

over every tensor of the block: base weights, norms, LoRA A and B (each fused on its own,
so the fused LoRA's B @ A is *not* the fusion of the members' B @ A). beta = 0.1
(0.15 for LLaMA2-13B).

Every variant is a weighted sum rep = sum_j w_j theta_j, given by :func:`fusion_weights`:

=========  ==========================================  =============
method     weights (anchor first)                      sum
=========  ==========================================  =============
dblf       anchor 1 - beta (m - 1), others beta         1
laco       DBLF with beta = 1: anchor 2 - m, others 1   1
mean       1/m each                                     1
r-one      anchor 1, others 0                           1
sum        1 each                                       m
=========  ==========================================  =============

The anchor's weight 1 - beta (m - 1) is negative for m > 1 + 1/beta (m > 11 at beta 0.1):
:func:`fusion_weights` warns then.

Gemma3 (sliding and full attention): a representative is a copy of its *anchor*
module with the fused tensors written in, so it keeps the anchor's attention type even
when the group mixes sliding and full attention layers.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from devft_lab.core.layers import share_tensors_copy

FUSION_METHODS = ("dblf", "laco", "mean", "r-one", "sum")
ANCHOR_RULES = ("first", "middle", "last")
DEFAULT_BETA = 0.1


def anchor_position(m: int, rule: str = "first") -> int:
    """``anchor_pos``, the position of the anchor inside a sorted group of m layers, from an
    ``anchor_rule`` (one of :data:`ANCHOR_RULES`; the paper's DBLF: the first layer)."""
    if m < 1:
        raise ValueError("a group needs at least one layer.")
    if rule == "first":
        return 0
    if rule == "middle":
        return (m - 1) // 2
    if rule == "last":
        return m - 1
    raise ValueError(f"anchor rule must be one of {ANCHOR_RULES}, got {rule!r}.")


def anchor_weight(m: int, beta: float) -> float:
    """The anchor's effective weight in DBLF: 1 - beta (m - 1) (the paper's DBLF rule expanded)."""
    return 1.0 - beta * (m - 1)


def fusion_weights(m: int, method: str = "dblf", beta: float = DEFAULT_BETA, anchor_pos: int = 0) -> list[float]:
    """Per-member weights w (member order, anchor at position ``anchor_pos``): rep = sum_j w_j theta_j
    (the paper's DBLF: rep = theta_a + beta sum_j (theta_j - theta_a)).

    dblf:  w_a = 1 - beta (m - 1),  w_j = beta  (j != a)
    laco:  dblf with beta = 1
    mean:  w_j = 1/m;   r-one: w_a = 1, w_j = 0;   sum: w_j = 1
    """
    if m < 1:
        raise ValueError("a group needs at least one layer.")
    if not 0 <= anchor_pos < m:
        raise ValueError(f"anchor position {anchor_pos} is outside a group of {m} layers.")
    if method not in FUSION_METHODS:
        raise ValueError(f"fusion method must be one of {FUSION_METHODS}, got {method!r}.")
    if method == "dblf" and not beta > 0:
        raise ValueError(f"beta must be > 0 for DBLF (the paper uses 0.1), got {beta}.")
    if method in ("dblf", "laco"):
        b = 1.0 if method == "laco" else float(beta)
        w = [b] * m
        w[anchor_pos] = anchor_weight(m, b)
        if w[anchor_pos] < 0 and method == "dblf":
            warnings.warn(
                f"DBLF anchor weight 1 - beta*(m-1) = {w[anchor_pos]:.3f} < 0 for a group of {m} layers at "
                f"beta={beta}: the representative extrapolates away from its anchor. Use smaller groups "
                f"(m <= {int(1 + 1 / b)}) or a smaller beta.", stacklevel=2)
        return w
    if method == "mean":
        return [1.0 / m] * m
    if method == "r-one":
        w = [0.0] * m
        w[anchor_pos] = 1.0
        return w
    return [1.0] * m  # sum


def fuse_tensors(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """rep = sum_j w_j theta_j, computed in float32 and returned in the members' dtype.

    A weight of exactly 1 on one member and 0 elsewhere returns that member's values exactly.
    """
    if len(tensors) != len(weights) or not tensors:
        raise ValueError(f"need one weight per tensor, got {len(weights)} weights for {len(tensors)} tensors.")
    shape = tensors[0].shape
    if any(t.shape != shape for t in tensors):
        raise ValueError(f"cannot fuse tensors of different shapes: {[tuple(t.shape) for t in tensors]}.")
    nonzero = [j for j, w in enumerate(weights) if w != 0]
    if len(nonzero) == 1 and weights[nonzero[0]] == 1:
        return tensors[nonzero[0]].detach().clone()
    out = torch.zeros(shape, dtype=torch.float32, device=tensors[0].device)
    for t, w in zip(tensors, weights):
        if w != 0:
            out.add_(t.detach().float(), alpha=float(w))
    return out.to(tensors[0].dtype)


def fuse_state_dicts(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Tensor-by-tensor fusion of state dicts that share their names (DBLF over every tensor)."""
    if not states:
        raise ValueError("need at least one state dict to fuse.")
    names = list(states[0])
    for k, s in enumerate(states[1:], start=1):
        if set(s) != set(names):
            raise ValueError(f"state {k} has other tensor names than state 0: "
                             f"{sorted(set(s) ^ set(names))[:5]}.")
    return {n: fuse_tensors([s[n] for s in states], weights) for n in names}


def fuse_layers(layers: Sequence[nn.Module], weights: Sequence[float], anchor_pos: int = 0) -> nn.Module:
    """The representative layer (the paper's DBLF): a copy of ``layers[anchor_pos]`` (keeping its attention type
    and config) whose parameters are sum_j w_j theta_j.

    The copy is new modules over the anchor's tensors (:func:`share_tensors_copy`); each
    fused parameter is a new tensor. When the weights pick the anchor alone (a singleton
    group, R-ONE) the representative *shares* the anchor's base tensors: no weight memory.
    """
    if not 0 <= anchor_pos < len(layers):
        raise ValueError(f"anchor position {anchor_pos} is outside a group of {len(layers)} layers.")
    if len(weights) != len(layers):
        raise ValueError(f"need one weight per layer, got {len(weights)} weights for {len(layers)} layers.")
    rep = share_tensors_copy(layers[anchor_pos])
    if all(w == (1 if j == anchor_pos else 0) for j, w in enumerate(weights)):
        return rep
    fused = fuse_state_dicts([dict(l.named_parameters()) for l in layers], weights)
    for n, p in list(rep.named_parameters()):
        owner_name, _, leaf = n.rpartition(".")
        owner = rep.get_submodule(owner_name) if owner_name else rep
        setattr(owner, leaf, nn.Parameter(fused.pop(n), requires_grad=p.requires_grad))
    return rep
