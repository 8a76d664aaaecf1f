"""Knowledge transfer: write each representative's trained LoRA back into its group.

The paper (STATED): after stage s, every original layer of group g takes the trained
LoRA A and B of representative g::

    A_i <- A_rep(g),  B_i <- B_rep(g)      for every i in group g

(the base weights are untouched; grouping is recomputed at the next stage).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from devft_lab.core.lora import GlobalLoRA
from devft_lab.method.grouping import validate_groups


def transfer_lora(global_lora: Mapping[int, Mapping[str, torch.Tensor]], groups: Sequence[Sequence[int]],
                  representative_lora: Mapping[int, Mapping[str, torch.Tensor]]) -> GlobalLoRA:
    """A new global LoRA where every member of group g holds a copy of representative g's LoRA.

    ``global_lora``: {layer index: {name: tensor}} of the full model (L entries);
    ``representative_lora``: {group position: {name: tensor}} (e.g. Submodel.lora_state()).
    Inputs are not modified; the result holds fresh clones.
    """
    L = len(global_lora)
    if sorted(global_lora) != list(range(L)):
        raise ValueError(f"global LoRA must have layers 0..L-1, got {sorted(global_lora)[:10]}.")
    validate_groups(groups, L)
    if sorted(representative_lora) != list(range(len(groups))):
        raise ValueError(f"need one representative LoRA per group (positions 0..{len(groups) - 1}), "
                         f"got positions {sorted(representative_lora)}.")
    out: GlobalLoRA = {}
    for g, members in enumerate(groups):
        rep = representative_lora[g]
        for i in members:
            if set(rep) != set(global_lora[i]):
                raise ValueError(f"representative {g} has LoRA tensors {sorted(rep)} but layer {i} has "
                                 f"{sorted(global_lora[i])}; both must adapt the same modules.")
            out[i] = {n: t.detach().clone() for n, t in rep.items()}
    return dict(sorted(out.items()))
