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

Each rule is a :class:`TransferRule` in the registry :data:`TRANSFER_RULES` (name -> rule): the
tensor formula of the table, what the rule needs (the anchors, the representatives' start), and
how it moves a client's *kept* representatives (FedSA-LoRA's B) into the full model's layers
(:meth:`TransferRule.transfer_kept`). A plan asks its rule; it never branches on the name.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from devft_lab.core.lora import GlobalLoRA
from devft_lab.method.grouping import validate_groups

LoRA = Mapping[int, Mapping[str, torch.Tensor]]
# (name, member tensor, representative tensor, group size m, member is the anchor, rep's start) -> new tensor
TensorRule = Callable[[str, torch.Tensor, torch.Tensor, int, bool, "torch.Tensor | None"], torch.Tensor]


def _clone(d: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in d.items()}


# --------------------------------------------------------------------------- the rules, tensor by tensor
def _copy(name, member, rep, m, is_anchor, rep_start):
    """A_i <- A_rep,  B_i <- B_rep."""
    return rep.detach().clone()


def _copy_scaled(name, member, rep, m, is_anchor, rep_start):
    """A_i <- A_rep,  B_i <- B_rep / m."""
    return rep.detach() / m if ".lora_B." in name else rep.detach().clone()


def _anchor_only(name, member, rep, m, is_anchor, rep_start):
    """The anchor takes the representative's tensor; the other members keep theirs."""
    return (rep if is_anchor else member).detach().clone()


def _increment(name, member, rep, m, is_anchor, rep_start):
    """X_i <- X_i + (X_rep - X0), X in {A, B} (float32 arithmetic, back to the member's dtype)."""
    if rep_start is None:
        raise ValueError("transfer rule 'increment' needs the representatives' LoRA at the stage start "
                         "(rep_start).")
    return (member.detach().float() + (rep.detach().float() - rep_start.detach().float())).to(member.dtype)


@dataclass(frozen=True)
class TransferRule:
    """One knowledge-transfer rule (a row of the module's table)."""

    name: str
    tensor: TensorRule  # one member tensor after transfer
    needs_anchors: bool = False  # transfer() needs one anchor per group (anchor-only)
    needs_start: bool = False  # transfer() needs the representatives' LoRA at the stage start (increment)
    keeps_aggregate: bool = False  # transfer_kept() needs the ended stage's aggregate (keep it across restarts)

    def transfer(self, global_lora: LoRA, groups: Sequence[Sequence[int]], representative_lora: LoRA, *,
                 anchors: Sequence[int] | None = None, start_lora: LoRA | None = None) -> GlobalLoRA:
        """:func:`transfer_lora` under this rule."""
        return transfer_lora(global_lora, groups, representative_lora, self.name, anchors=anchors,
                             start_lora=start_lora)

    def transfer_kept(self, global_lora: LoRA, groups: Sequence[Sequence[int]], kept: LoRA, *,
                      anchors: Sequence[int] | None = None, aggregate: LoRA | None = None) -> GlobalLoRA:
        """A client's kept representatives (e.g. FedSA-LoRA's B, {group position: {name: tensor}})
        written into the full model's layers, over ``global_lora`` (the LoRA after the stage's
        transfer; ``aggregate`` is the stage's aggregated representatives): the rule itself,
        applied to the client's own representatives. A client that holds exactly the aggregate
        gets ``global_lora`` back."""
        return transfer_lora(global_lora, groups, kept, self.name, anchors=anchors)


@dataclass(frozen=True)
class _IncrementRule(TransferRule):
    def transfer_kept(self, global_lora: LoRA, groups: Sequence[Sequence[int]], kept: LoRA, *,
                      anchors: Sequence[int] | None = None, aggregate: LoRA | None = None) -> GlobalLoRA:
        """Member i of group g: X_i + (X_kept(g) - X_aggregate(g)), the global member plus the
        client's deviation from the aggregate (the client's own increment on top of the federation's)."""
        if aggregate is None:
            raise ValueError("transfer rule 'increment' moves a client's kept LoRA by its deviation from the "
                             "ended stage's aggregate; pass aggregate (a DevFT plan keeps it from end() and in "
                             "the checkpoint).")
        dev = {g: {n: t - aggregate[g][n] for n, t in d.items()} for g, d in kept.items()}
        out = {i: dict(global_lora[i]) for i in range(len(global_lora))}
        for g, members in enumerate(groups):
            for i in members:
                out[i].update({n: out[i][n] + t for n, t in dev[g].items()})
        return out


TRANSFER_RULES: dict[str, TransferRule] = {r.name: r for r in (
    TransferRule("copy", _copy),
    TransferRule("copy-scaled", _copy_scaled),
    TransferRule("anchor-only", _anchor_only, needs_anchors=True),
    _IncrementRule("increment", _increment, needs_start=True, keeps_aggregate=True),
)}


def transfer_rule(name: str) -> TransferRule:
    """The registered rule called ``name`` (``devft.transfer``)."""
    try:
        return TRANSFER_RULES[name]
    except (KeyError, TypeError):
        raise ValueError(f"transfer rule must be one of {', '.join(TRANSFER_RULES)}, got {name!r}.") from None


# --------------------------------------------------------------------------- a whole transfer
def transfer_tensor(name: str, member: torch.Tensor, rep: torch.Tensor, rule: str, m: int, is_anchor: bool,
                    rep_start: torch.Tensor | None = None) -> torch.Tensor:
    """One LoRA tensor of one member after transfer under ``rule`` (see the module's table).

    ``name`` tells A from B (``...lora_B...``); ``m`` is the group's size; ``rep_start`` the
    representative's tensor at the stage start (``increment`` only). Returns a new tensor.
    """
    return transfer_rule(rule).tensor(name, member, rep, m, is_anchor, rep_start)


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
    r = transfer_rule(rule)
    L = len(global_lora)
    if sorted(global_lora) != list(range(L)):
        raise ValueError(f"global LoRA must have layers 0..L-1, got {sorted(global_lora)[:10]}.")
    validate_groups(groups, L)
    if sorted(representative_lora) != list(range(len(groups))):
        raise ValueError(f"need one representative LoRA per group (positions 0..{len(groups) - 1}), "
                         f"got positions {sorted(representative_lora)}.")
    if r.needs_anchors:
        if anchors is None or len(anchors) != len(groups) or any(a not in g for a, g in zip(anchors, groups)):
            raise ValueError(f"transfer rule {rule!r} needs one anchor per group, inside it; got anchors "
                             f"{None if anchors is None else list(anchors)} for groups {list(map(list, groups))}.")
    if r.needs_start and (start_lora is None or sorted(start_lora) != list(range(len(groups)))):
        raise ValueError(f"transfer rule {rule!r} needs start_lora: the representatives' LoRA at the stage start, "
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
                layer[n] = r.tensor(n, global_lora[i][n], t, len(members),
                                    anchors is not None and i == anchors[g],
                                    start_lora[g][n] if start_lora is not None else None)
            out[i] = layer
    return dict(sorted(out.items()))
