"""Knowledge transfer: write each representative's trained LoRA back into its group.

The paper (STATED), rule ``copy``: after stage s, every original layer of group g takes the
trained LoRA A and B of representative g::

    A_i <- A_rep(g),  B_i <- B_rep(g)      for every i in group g

(the base weights are untouched; grouping is recomputed at the next stage). A group of m
layers thus applies the representative's update m times along the residual stream.

OPEN, devft_lab's alternatives (``devft.transfer``), all rank r and tensor by tensor:

=============  ==========================================================  ===========================
rule           member i of group g (m members, anchor a, rep start A0, B0)  property
=============  ==========================================================  ===========================
copy           A_i <- A_rep,  B_i <- B_rep                                 the paper's rule
copy-scaled    A_i <- A_rep,  B_i <- B_rep / m                             sum_i B_i A_i = B_rep A_rep
anchor-only    a: A_a <- A_rep, B_a <- B_rep;  others keep A_i, B_i        non-anchors untouched
increment      A_i <- A_i + (A_rep - A0),  B_i <- B_i + (B_rep - B0)       equal starts: == copy
=============  ==========================================================  ===========================

``increment`` is a *factor-space* increment: each member keeps its own LoRA and adds the
change the representative's factors made during the stage. It is not the exact sum of
weight deltas dW_i + (B_rep A_rep - B0 A0) (which needs rank 2r). With dA = A_rep - A0 and
dB = B_rep - B0, member i's product changes by

    (B_i + dB)(A_i + dA) - B_i A_i = (B0 dA + dB A0 + dB dA) + [(B_i - B0) dA + dB (A_i - A0)]

i.e. by the representative's own change plus a cross term that is first order in how far the
member started from the representative's start (zero when it started there). Members with
different starting LoRA keep their differences (A_i - A_j and B_i - B_j are unchanged).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from devft_lab.core.lora import GlobalLoRA
from devft_lab.method.grouping import validate_groups

TRANSFER_RULES = ("copy", "copy-scaled", "anchor-only", "increment")

LoRA = Mapping[int, Mapping[str, torch.Tensor]]


def _clone(d: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in d.items()}


def transfer_tensor(name: str, member: torch.Tensor, rep: torch.Tensor, rule: str, m: int, is_anchor: bool,
                    rep_start: torch.Tensor | None = None) -> torch.Tensor:
    """One LoRA tensor of one member after transfer under ``rule`` (see the module's table).

    ``name`` tells A from B (``...lora_B...``); ``m`` is the group's size; ``rep_start`` the
    representative's tensor at the stage start (``increment`` only). Returns a new tensor.
    """
    if rule == "copy":
        return rep.detach().clone()
    if rule == "copy-scaled":
        return rep.detach() / m if ".lora_B." in name else rep.detach().clone()
    if rule == "anchor-only":
        return (rep if is_anchor else member).detach().clone()
    if rule == "increment":
        if rep_start is None:
            raise ValueError("transfer rule 'increment' needs the representatives' LoRA at the stage start "
                             "(rep_start).")
        return (member.detach().float() + (rep.detach().float() - rep_start.detach().float())).to(member.dtype)
    raise ValueError(f"transfer rule must be one of {', '.join(TRANSFER_RULES)}, got {rule!r}.")


def transfer_lora(global_lora: LoRA, groups: Sequence[Sequence[int]], representative_lora: LoRA,
                  rule: str = "copy", *, anchors: Sequence[int] | None = None,
                  start_lora: LoRA | None = None) -> GlobalLoRA:
    """A new global LoRA with each representative's LoRA written into its group under ``rule``.

    ``global_lora``: {layer index: {name: tensor}} of the full model (L entries);
    ``representative_lora``: {group position: {name: tensor}} (e.g. Submodel.lora_state());
    ``anchors``: full-model index of each group's anchor (``anchor-only``; Submodel.anchors);
    ``start_lora``: {group position: {name: tensor}}, the representatives' LoRA at the stage
    start (``increment``). A representative may carry a subset of the layer's tensor names
    (e.g. FedSA-LoRA's kept B only): then only those names are transferred.
    Inputs are not modified; the result holds fresh tensors.
    """
    if rule not in TRANSFER_RULES:
        raise ValueError(f"transfer rule must be one of {', '.join(TRANSFER_RULES)}, got {rule!r}.")
    L = len(global_lora)
    if sorted(global_lora) != list(range(L)):
        raise ValueError(f"global LoRA must have layers 0..L-1, got {sorted(global_lora)[:10]}.")
    validate_groups(groups, L)
    if sorted(representative_lora) != list(range(len(groups))):
        raise ValueError(f"need one representative LoRA per group (positions 0..{len(groups) - 1}), "
                         f"got positions {sorted(representative_lora)}.")
    if rule == "anchor-only":
        if anchors is None or len(anchors) != len(groups) or any(a not in g for a, g in zip(anchors, groups)):
            raise ValueError(f"transfer rule 'anchor-only' needs one anchor per group, inside it; got anchors "
                             f"{None if anchors is None else list(anchors)} for groups {list(map(list, groups))}.")
    if rule == "increment" and (start_lora is None or sorted(start_lora) != list(range(len(groups)))):
        raise ValueError("transfer rule 'increment' needs start_lora: the representatives' LoRA at the stage start, "
                         f"one per group (positions 0..{len(groups) - 1}).")
    out: GlobalLoRA = {}
    for g, members in enumerate(groups):
        rep = representative_lora[g]
        for i in members:
            if not set(rep) <= set(global_lora[i]):
                raise ValueError(f"representative {g} has LoRA tensors {sorted(rep)} but layer {i} has "
                                 f"{sorted(global_lora[i])}; both must adapt the same modules.")
            layer = _clone(global_lora[i])
            for n, t in rep.items():
                layer[n] = transfer_tensor(n, global_lora[i][n], t, rule, len(members),
                                           anchors is not None and i == anchors[g],
                                           start_lora[g][n] if start_lora is not None else None)
            out[i] = layer
    return dict(sorted(out.items()))
