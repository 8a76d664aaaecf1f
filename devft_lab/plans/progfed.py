"""ProgFed (Wang et al., ICML 2022) as a stage plan: train a growing *prefix* of the layers.

At stage s the clients train the first L_s decoder layers, topped by a temporary head. For
a causal LM the natural temporary head is the model's own final norm and LM head applied
to layer L_s's output (ASSUMED; ProgFed adds a fresh head per stage for classifiers, which
has no counterpart in a pretrained LM). After the stage, the prefix's trained LoRA is
written back to those layers (no fusion, no copying into other layers); the layers above
keep their untouched adapters (B = 0) until a later stage reaches them. DevFT's paper uses
ProgFed as its progressive baseline (Table 1).
"""
from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import torch

from devft_lab.core.layers import decoder_layers, layer_types, num_layers, share_tensors_copy, with_layers
from devft_lab.core.lora import GlobalLoRA, get_lora_state, to_flat, to_layers
from devft_lab.fl.stages import StageModel
from devft_lab.method.submodel import init_global_lora, set_submodel_lora_state



class ProgFedPlan:
    """Stages of prefixes ``layers[:L_s]``; the last stage is the full model."""

    def __init__(self, full_model: torch.nn.Module, lora_config, capacities: Sequence[int],
                 rounds: Sequence[int], *, seed: int = 0, global_lora: GlobalLoRA | None = None):
        if len(capacities) != len(rounds):
            raise ValueError(f"{len(capacities)} capacities but {len(rounds)} stage round counts.")
        self.full, self.lora_config = full_model, lora_config
        self.L = num_layers(full_model)
        self.capacities, self.rounds = [int(c) for c in capacities], [int(r) for r in rounds]
        self.global_lora: GlobalLoRA = global_lora or init_global_lora(full_model, lora_config, seed)
        self._eval = None

    def stage_rounds(self) -> list[int]:
        return list(self.rounds)

    def _prefix_model(self, k: int):
        from peft import get_peft_model  # optional/heavy: peft

        layers = [share_tensors_copy(layer) for layer in decoder_layers(self.full)[:k]]  # frozen: no copy
        types = layer_types(self.full)
        sub = with_layers(self.full, layers, types[:k] if types else None)
        model = get_peft_model(sub, copy.deepcopy(self.lora_config))
        set_submodel_lora_state(model, {i: self.global_lora[i] for i in range(k)})
        return model

    def begin(self, stage: int, info: Mapping[str, Any] | None = None) -> StageModel:
        k = self.capacities[stage]
        model = self._prefix_model(k)
        return StageModel(stage, model, get_lora_state(model), self.rounds[stage], 0,
                          {"capacity": k, "groups": [[i] for i in range(k)], "prefix": True})

    def end(self, stage: int, state: Mapping[str, torch.Tensor]) -> None:
        layers, _ = to_layers(state)
        for i, d in layers.items():
            self.global_lora[i] = {n: t.detach().clone() for n, t in d.items()}

    def carry(self, state, stage, previous) -> dict[str, torch.Tensor]:
        return dict(state)  # a prefix keeps its layer positions

    def eval_model(self, stage: StageModel, state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
        layers, _ = to_layers(state)
        full = {i: layers.get(i, self.global_lora[i]) for i in range(self.L)}
        if stage.info["capacity"] == self.L:
            set_submodel_lora_state(stage.model, full)
            return stage.model
        if self._eval is None:
            self._eval = self._prefix_model(self.L)
        set_submodel_lora_state(self._eval, full)
        self._eval.eval()
        return self._eval

    def export(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:

        return {}, to_flat(self.global_lora, "g.layers")

    def restore(self, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
        self.global_lora, _ = to_layers(dict(tensors))
