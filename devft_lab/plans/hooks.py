"""Stage hooks: what watches Algorithm 1 without being part of it.

A :class:`~devft_lab.plans.devft.DevFTPlan` calls each of its hooks twice per stage, in
order: ``on_stage_begin`` once DGLG and DBLF have built the stage's submodel (before any
round), and ``on_stage_end`` once the transfer has written the trained representatives into
the full model. A hook may return a record (a JSON-able dict); the plan files it under the
stage and the moment (``start`` / ``end``), keeps it in its checkpoint and hands it out with
``stage_records()`` (``stages.jsonl`` of a run). A hook must not change the global LoRA: a
plan trains the same adapters with or without its hooks.

The one hook the config can ask for is :class:`StageLossProbe` (``devft.probe_loss``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

import torch

from devft_lab.core.lora import GlobalLoRA
from devft_lab.core.train import mean_response_loss
from devft_lab.method.submodel import Submodel, set_submodel_lora_state

if TYPE_CHECKING:
    from devft_lab.plans.devft import DevFTPlan

Batches = Sequence[Mapping[str, torch.Tensor]]
Record = dict[str, Any]


class StageHooks(Protocol):
    """What a plan calls at each stage's begin and end."""

    def on_stage_begin(self, plan: "DevFTPlan", stage: int, sub: Submodel) -> Record | None:
        """After DGLG and DBLF: ``sub`` is the stage's submodel with its fused (untrained) LoRA."""

    def on_stage_end(self, plan: "DevFTPlan", stage: int, sub: Submodel, trained: GlobalLoRA) -> Record | None:
        """After the transfer: ``trained`` is the stage's aggregated representatives' LoRA
        ({group position: {name: tensor}}), ``plan.global_lora`` the full model's LoRA after it."""


class StageLossProbe:
    """``devft.probe_loss``: the mean response loss on fixed probe batches of the stage's submodel
    and of the full model, at the stage's start and end::

        gap = L(submodel) - L(full model with the global LoRA)

    The last stage's submodel is the full model (gap 0). Between a stage's end and the next
    start the global LoRA does not change, so the full model's loss is measured once.
    """

    def __init__(self, batches: Batches | None, dtype: str | None = None):
        if not batches:
            raise ValueError("probe_loss=True runs the model on probe batches; pass probe_batches "
                             "(collated examples with labels).")
        self.batches, self.dtype = list(batches), dtype
        self._full_at_end: float | None = None  # the full model's loss at the last stage end

    def on_stage_begin(self, plan: "DevFTPlan", stage: int, sub: Submodel) -> Record:
        return self._measure(plan, sub, "start")

    def on_stage_end(self, plan: "DevFTPlan", stage: int, sub: Submodel, trained: GlobalLoRA) -> Record:
        set_submodel_lora_state(sub.model, trained)
        return self._measure(plan, sub, "end")

    def _measure(self, plan: "DevFTPlan", sub: Submodel, at: str) -> Record:
        sub_loss = mean_response_loss(sub.model, self.batches, self.dtype)
        if all(len(g) == 1 for g in sub.groups):  # the submodel is the full model
            full_loss = sub_loss
        elif at == "start" and self._full_at_end is not None:  # the global LoRA has not changed since the last end
            full_loss = self._full_at_end
        else:
            full_loss = mean_response_loss(plan.full_model(), self.batches, self.dtype)
        self._full_at_end = full_loss if at == "end" else None
        return {"capacity": len(sub.groups), "sub_loss": sub_loss, "full_loss": full_loss, "gap": sub_loss - full_loss}


def default_hooks(config, probe_batches: Batches | None = None, probe_dtype: str | None = None) -> list[StageHooks]:
    """The hooks the ``devft`` config section asks for: the stage loss probe if ``probe_loss``."""
    return [StageLossProbe(probe_batches, probe_dtype)] if config.probe_loss else []
