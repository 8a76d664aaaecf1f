"""DevFT as a stage plan: grow the trained model stage by stage, over any LoRA strategy.

At stage s (paper, Sec. 3; STATED unless marked):

1. **DGLG** groups the L layers of the current global model (base weights with the global
   LoRA merged) into L_s groups by their parameter similarity;
2. **DBLF** fuses each group into one representative layer,
   ``rep = theta_anchor + beta * sum_j (theta_j - theta_anchor)`` (base tensors and LoRA);
3. the federation trains the submodel of the L_s representatives for the stage's rounds
   with whatever strategy the run uses (FedIT by default);
4. **knowledge transfer**: each representative's trained LoRA A and B are copied into
   every member of its group; the next stage regroups from the updated global model.

The last stage has L_s = L: singleton groups, so the submodel is the full model (a fused
singleton is its layer, exactly) and a one-stage DevFT is FedIT.

The runtime (:mod:`devft_lab.fl.simulation`) drives this through the
:class:`devft_lab.fl.stages.StagePlan` interface and knows nothing else of DevFT.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from devft_lab.fl.accounting import tensor_bytes
from devft_lab.core.layers import decoder_layers, num_layers
from devft_lab.core.lora import GlobalLoRA, get_lora_state, to_flat, to_layers
from devft_lab.fl.stages import StageModel, stage_groups
from devft_lab.method.grouping import group_layers
from devft_lab.method.similarity import layer_parameter_similarity
from devft_lab.method.submodel import (build_submodel, fuse_lora, init_global_lora, lora_scaling,
                                       set_submodel_lora_state)
from devft_lab.method.transfer import transfer_lora



def fused_delivery_bytes(full_model: torch.nn.Module, groups: Sequence[Sequence[int]]) -> int:
    """Bytes of the dense fused layers a client needs for a stage (ASSUMED accounting).

    Clients already hold the base model (embeddings, head and the original layers never
    change), so a singleton group costs nothing; a fused representative is a new dense
    layer the server sends (unless the client fuses it itself, as the Flower app does).
    """
    layers = decoder_layers(full_model)
    return sum(tensor_bytes(dict(layers[g[0]].state_dict())) for g in groups if len(g) > 1)


class DevFTPlan:
    """DevFT's growing stage schedule around a plain (un-wrapped) full model."""

    def __init__(self, full_model: torch.nn.Module, lora_config, capacities: Sequence[int],
                 rounds: Sequence[int], *, beta: float = 0.1, grouping: str = "spectral",
                 affinity: str = "clip", fusion: str = "dblf", anchor_rule: str = "first", seed: int = 0,
                 global_lora: GlobalLoRA | None = None):
        if len(capacities) != len(rounds):
            raise ValueError(f"{len(capacities)} capacities but {len(rounds)} stage round counts.")
        self.full, self.lora_config = full_model, lora_config
        self.L = num_layers(full_model)
        self.capacities, self.rounds = [int(c) for c in capacities], [int(r) for r in rounds]
        self.beta, self.grouping, self.affinity = float(beta), grouping, affinity
        self.fusion, self.anchor_rule, self.seed = fusion, anchor_rule, int(seed)
        self.global_lora: GlobalLoRA = global_lora or init_global_lora(full_model, lora_config, seed)
        self._sub = None  # the current stage's Submodel
        self._eval = None  # singleton (full-model) submodel used to evaluate between stages

    # the StagePlan interface --------------------------------------------------------
    def stage_rounds(self) -> list[int]:
        return list(self.rounds)

    def groups_for(self, stage: int) -> list[list[int]]:
        """DGLG on the current global model (with its LoRA merged), or EVEN/RANDOM baselines."""
        k = self.capacities[stage]
        if k == self.L:
            return [[i] for i in range(self.L)]
        sim = None
        if self.grouping in ("spectral", "contiguous"):
            sim = layer_parameter_similarity(self.full, self.global_lora, lora_scaling(self.lora_config))
        return group_layers(sim, self.L, k, method=self.grouping, negatives=self.affinity,
                            seed=self.seed + stage)

    def begin(self, stage: int, info: Mapping[str, Any] | None = None) -> StageModel:
        groups = stage_groups(info) or self.groups_for(stage)
        self._sub = None
        sub = build_submodel(self.full, groups, self.beta, self.fusion, self.lora_config,
                             global_lora=self.global_lora, anchor_rule=self.anchor_rule, seed=self.seed)
        self._sub = sub
        n_params = sum(p.numel() for layer in decoder_layers(sub.model.get_base_model()) for p in layer.parameters())
        return StageModel(stage, sub.model, get_lora_state(sub.model), self.rounds[stage],
                          fused_delivery_bytes(self.full, groups),
                          {"capacity": len(groups), "groups": groups, "beta": self.beta,
                           "fusion": self.fusion, "grouping": self.grouping, "layer_params": n_params})

    def end(self, stage: int, state: Mapping[str, torch.Tensor]) -> None:
        """Knowledge transfer of the stage's adapter into every member layer."""
        reps, _ = to_layers(state)
        self.global_lora = transfer_lora(self.global_lora, self._sub.groups, reps)
        self._sub = None

    def carry(self, state: Mapping[str, torch.Tensor], stage: StageModel,
              previous: StageModel | None) -> dict[str, torch.Tensor]:
        """Move a client's kept tensors (FedSA-LoRA's B) through transfer and the next fusion."""
        if not state or previous is None:
            return dict(state)
        reps, prefix = to_layers(state)
        full = {i: dict(self.global_lora[i]) for i in range(self.L)}
        for g, members in enumerate(previous.info["groups"]):
            for i in members:
                full[i].update({n: t.clone() for n, t in reps[g].items()})
        fused = fuse_lora(full, stage.info["groups"], self.fusion, self.beta, self.anchor_rule, warn=False)
        keep = {n for layer in reps.values() for n in layer}
        return to_flat({g: {n: t for n, t in d.items() if n in keep} for g, d in fused.items()}, prefix)

    def eval_model(self, stage: StageModel, state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
        """The full model with the stage's adapter transferred in (what DevFT would deploy now)."""
        reps, _ = to_layers(state)
        if all(len(g) == 1 for g in stage.info["groups"]) and len(stage.info["groups"]) == self.L:
            set_submodel_lora_state(stage.model, reps)
            return stage.model
        full = transfer_lora(self.global_lora, stage.info["groups"], reps)
        if self._eval is None:
            self._eval = build_submodel(self.full, [[i] for i in range(self.L)], self.beta, self.fusion,
                                        self.lora_config, global_lora=full, anchor_rule=self.anchor_rule)
        else:
            self._eval.load_lora_state(full)
        self._eval.model.eval()
        return self._eval.model

    def export(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {}, to_flat(self.global_lora, "g.layers")

    def restore(self, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
        layers, _ = to_layers(dict(tensors))
        if sorted(layers) != list(range(self.L)):
            raise ValueError(f"checkpoint holds LoRA for layers {sorted(layers)[:5]}..., the model has {self.L}.")
        self.global_lora = layers
