"""The stage interface between the federated runtime and a training schedule.

The simulation knows nothing of DevFT: it asks a *plan* for its stages. A stage is a
trainable (PEFT) model and the adapter the federation starts it from; after its rounds the
plan takes the trained adapter back. Three plans exist:

* :class:`FullModelPlan` (here): one stage, the whole model -- FedIT, FFA-LoRA, FedSA-LoRA,
  FLoRA, FedProx as their papers run them;
* :class:`devft_lab.plans.devft.DevFTPlan`: growing submodels of fused layers (the paper);
* :class:`devft_lab.plans.progfed.ProgFedPlan`: a growing prefix of the layers (ProgFed).

The flat and per-layer forms of a LoRA state and the parser between them live in
:mod:`devft_lab.core.lora` (:func:`to_layers`, :func:`to_flat` are re-exported here).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Protocol

import torch

from devft_lab.core.lora import State, get_lora_state, set_lora_state, to_flat, to_layers  # noqa: F401

if TYPE_CHECKING:
    from devft_lab.fl.strategies import Strategy


@dataclass
class StageModel:
    """One stage as the runtime sees it."""

    index: int
    model: torch.nn.Module  # the PEFT model clients train during this stage
    start: State  # the adapter the stage starts from
    rounds: int
    delivery_bytes: int = 0  # dense weights a client must receive once to run this stage
    info: dict[str, Any] = field(default_factory=dict)  # JSON-able description (capacity, groups ...)


class StagePlan(Protocol):
    """What the simulation needs from a schedule."""

    def stage_rounds(self) -> list[int]:
        """Rounds of each stage (its length is the number of stages)."""

    def begin(self, stage: int, info: Mapping[str, Any] | None = None) -> StageModel:
        """Build stage ``stage``; ``info`` (from a checkpoint) rebuilds it exactly as before."""

    def end(self, stage: int, state: Mapping[str, torch.Tensor]) -> None:
        """Take the stage's trained (evaluation) adapter back into the full model."""

    def carry(self, state: Mapping[str, torch.Tensor], stage: StageModel,
              previous: StageModel | None) -> State:
        """Map a client's kept tensors from the previous stage's layout into this stage's."""

    def eval_model(self, stage: StageModel, state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
        """The full model with ``state`` folded in, ready for evaluation."""

    def export(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(JSON meta, tensors) that :meth:`restore` needs to continue after a restart."""

    def restore(self, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
        """Inverse of :meth:`export`."""


class FullModelPlan:
    """One stage: the whole model with its adapter (every baseline's plain schedule).

    ``model`` is already a PEFT model of the full model; ``start`` its initial adapter.
    """

    def __init__(self, model: torch.nn.Module, start: Mapping[str, torch.Tensor], rounds: int):
        self.model, self.rounds = model, int(rounds)
        set_lora_state(model, start)
        self.state = get_lora_state(model)
        self.num_layers = len(to_layers(self.state)[0])

    def stage_rounds(self) -> list[int]:
        return [self.rounds]

    def begin(self, stage: int, info: Mapping[str, Any] | None = None) -> StageModel:
        if stage != 0:
            raise ValueError(f"FullModelPlan has one stage, asked for stage {stage}.")
        return StageModel(0, self.model, dict(self.state), self.rounds, 0,
                          {"capacity": self.num_layers, "groups": [[i] for i in range(self.num_layers)]})

    def end(self, stage: int, state: Mapping[str, torch.Tensor]) -> None:
        self.state = {k: v.detach().clone() for k, v in state.items()}

    def carry(self, state, stage, previous) -> State:
        return dict(state)

    def eval_model(self, stage: StageModel, state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
        set_lora_state(self.model, state)
        return self.model

    def export(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {}, {}

    def restore(self, meta, tensors) -> None:
        pass


# --------------------------------------------------------------------------- a stage's life
# The stage begin/end/eval rules that every runtime follows (the in-process
# devft_lab.fl.simulation.Simulation and the Flower devft_lab.flower.devft_workload.DevFTWorkload).
def stage_start_state(strategy: "Strategy", stage: StageModel) -> State:
    """The global adapter stage ``stage`` starts from: the plan's start adapter, through
    ``strategy.init_global`` at the first stage only (FFA-LoRA's shared A is drawn once; later
    stages start from the fused, transferred adapter)."""
    start = dict(stage.start)
    return strategy.init_global(start) if stage.index == 0 else start


def stage_eval_state(strategy: "Strategy", global_state: Mapping[str, torch.Tensor],
                     kept: Mapping[int, Mapping[str, torch.Tensor]], samples: Mapping[int, int]) -> State:
    """``strategy.eval_state`` over the global state and the clients' kept tensors (FedSA-LoRA's
    Bs, weighted by each client's sample count; clients without kept tensors are left out)."""
    clients = [c for c in sorted(kept) if kept[c]]
    if not clients:
        return strategy.eval_state(global_state)
    return strategy.eval_state(global_state, [kept[c] for c in clients], [samples.get(c, 1) for c in clients])


def end_stage(plan: StagePlan, strategy: "Strategy", stage: int, global_state: Mapping[str, torch.Tensor],
              kept: Mapping[int, Mapping[str, torch.Tensor]], samples: Mapping[int, int]) -> None:
    """Hand the stage's evaluation adapter back to the plan (DevFT: knowledge transfer)."""
    plan.end(stage, stage_eval_state(strategy, global_state, kept, samples))


def stage_groups(info: Mapping[str, Any]) -> list[list[int]] | None:
    """The groups recorded in a stage's info, if any."""
    g = info.get("groups") if info else None
    return [list(map(int, x)) for x in g] if g is not None else None


