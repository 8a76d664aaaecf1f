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

OPEN, chosen by config (defaults = the paper): ``transfer`` (the rule of step 4, see
:mod:`devft_lab.method.transfer`; ``increment`` measures the representative's change from
the LoRA it was fused with at the stage start, kept here), ``similarity`` (DGLG's W from the
layers' parameters, or ``function``: the cosine of the layers' residual updates on the probe
batches, run through the full model with the current global LoRA) and ``probe_loss`` (the
mean response loss of the submodel and of the full model on the probe batches at the start
and at the end of every stage, kept in :attr:`DevFTPlan.probes` and in the checkpoint).

The last stage has L_s = L: singleton groups, so the submodel is the full model (a fused
singleton is its layer, exactly) and a one-stage DevFT is FedIT.

The runtime (:mod:`devft_lab.fl.simulation`) drives this through the
:class:`devft_lab.fl.stages.StagePlan` interface and knows nothing else of DevFT.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from devft_lab.fl.accounting import tensor_bytes
from devft_lab.core.layers import decoder_layers, num_layers, unwrap
from devft_lab.core.lora import GlobalLoRA, get_lora_state, to_flat, to_layers
from devft_lab.fl.stages import StageModel, stage_groups
from devft_lab.method.grouping import group_layers
from devft_lab.method.similarity import layer_io, layer_parameter_similarity, residual_update_similarity
from devft_lab.method.submodel import (build_submodel, fuse_lora, init_global_lora, lora_scaling,
                                       set_submodel_lora_state)
from devft_lab.method.transfer import transfer_lora

Batches = Sequence[Mapping[str, torch.Tensor]]


@torch.no_grad()
def residual_updates(model: torch.nn.Module, batches: Batches) -> list[torch.Tensor]:
    """Every decoder layer's residual update h_out - h_in at the non-padding tokens of ``batches``
    (one (N, d) float32 tensor per layer, the same N tokens for all), for
    :func:`devft_lab.method.similarity.residual_update_similarity`."""
    per_layer: list[list[torch.Tensor]] | None = None
    inputs = [{k: v for k, v in b.items() if k != "labels"} for b in batches]
    for mask, io in layer_io(unwrap(model), inputs):  # PEFT's LoRA sits inside the base model's modules
        m = mask.bool()
        ups = [(h_out - h_in)[m].cpu() for h_in, h_out in io]
        per_layer = [[u] for u in ups] if per_layer is None else [p + [u] for p, u in zip(per_layer, ups)]
    if per_layer is None:
        raise ValueError("residual_updates got no batches; give the probe batches.")
    return [torch.cat(p) for p in per_layer]


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
                 global_lora: GlobalLoRA | None = None, transfer: str = "copy", similarity: str = "parameters",
                 probe_batches: Batches | None = None, probe_loss: bool = False, probe_dtype: str | None = None):
        if len(capacities) != len(rounds):
            raise ValueError(f"{len(capacities)} capacities but {len(rounds)} stage round counts.")
        from devft_lab.method.similarity import SIMILARITIES
        from devft_lab.method.transfer import TRANSFER_RULES

        if transfer not in TRANSFER_RULES:
            raise ValueError(f"transfer must be one of {', '.join(TRANSFER_RULES)}, got {transfer!r}.")
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {', '.join(SIMILARITIES)}, got {similarity!r}.")
        if (similarity == "function" or probe_loss) and not probe_batches:
            raise ValueError("similarity='function' and probe_loss=True run the model on probe batches; "
                             "pass probe_batches (collated examples with labels).")
        self.full, self.lora_config = full_model, lora_config
        self.L = num_layers(full_model)
        self.capacities, self.rounds = [int(c) for c in capacities], [int(r) for r in rounds]
        self.beta, self.grouping, self.affinity = float(beta), grouping, affinity
        self.fusion, self.anchor_rule, self.seed = fusion, anchor_rule, int(seed)
        self.global_lora: GlobalLoRA = global_lora or init_global_lora(full_model, lora_config, seed)
        self.transfer, self.similarity = transfer, similarity
        self.probe_batches, self.probe_loss, self.probe_dtype = list(probe_batches or []), bool(probe_loss), probe_dtype
        self._sub = None  # the current stage's Submodel
        self._start: GlobalLoRA | None = None  # its representatives' LoRA at the stage start (increment)
        self._ended: dict[str, GlobalLoRA] = {}  # the last ended stage's aggregated LoRA (carry, increment)
        self._eval = None  # singleton (full-model) submodel used to evaluate between stages
        self.probes: dict[str, dict[str, Any]] = {}  # "<stage>/<start|end>": the stage loss probe
        self._full_probe: float | None = None  # the full model's probe loss at the last stage end

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
            sim = self.similarity_matrix()
        return group_layers(sim, self.L, k, method=self.grouping, negatives=self.affinity,
                            seed=self.seed + stage)

    def begin(self, stage: int, info: Mapping[str, Any] | None = None) -> StageModel:
        groups = stage_groups(info) or self.groups_for(stage)
        self._sub = None
        sub = build_submodel(self.full, groups, self.beta, self.fusion, self.lora_config,
                             global_lora=self.global_lora, anchor_rule=self.anchor_rule, seed=self.seed)
        self._sub = sub
        self._start = sub.lora_state()
        if self.probe_loss:
            self._probe(stage, "start", sub)
        n_params = sum(p.numel() for layer in decoder_layers(sub.model.get_base_model()) for p in layer.parameters())
        return StageModel(stage, sub.model, get_lora_state(sub.model), self.rounds[stage],
                          fused_delivery_bytes(self.full, groups),
                          {"capacity": len(groups), "groups": groups, "beta": self.beta,
                           "fusion": self.fusion, "grouping": self.grouping, "layer_params": n_params,
                           "anchors": list(sub.anchors), "transfer": self.transfer,
                           "similarity": self.similarity})

    def _transfer(self, groups, reps, anchors, start) -> GlobalLoRA:
        return transfer_lora(self.global_lora, groups, reps, self.transfer, anchors=anchors, start_lora=start)

    def end(self, stage: int, state: Mapping[str, torch.Tensor]) -> None:
        """Knowledge transfer of the stage's adapter into the member layers (``self.transfer``)."""
        reps, _ = to_layers(state)
        sub = self._sub
        self.global_lora = self._transfer(sub.groups, reps, sub.anchors, self._start)
        self._ended = {"reps": reps}
        if self.probe_loss:
            set_submodel_lora_state(sub.model, reps)
            self._probe(stage, "end", sub)
        self._sub = None

    # the DGLG similarity and the stage loss probe -------------------------------------
    def full_model(self, lora: GlobalLoRA | None = None) -> torch.nn.Module:
        """The full model with ``lora`` (default: the current global LoRA) in a PEFT wrapper."""
        lora = self.global_lora if lora is None else lora
        if self._eval is None:
            self._eval = build_submodel(self.full, [[i] for i in range(self.L)], self.beta, self.fusion,
                                        self.lora_config, global_lora=lora, anchor_rule=self.anchor_rule)
        else:
            self._eval.load_lora_state(lora)
        self._eval.model.eval()
        return self._eval.model

    def similarity_matrix(self) -> torch.Tensor:
        """DGLG's L x L similarity of the current global model (``self.similarity``)."""
        if self.similarity == "function":
            return residual_update_similarity(residual_updates(self.full_model(), self.probe_batches))
        return layer_parameter_similarity(self.full, self.global_lora, lora_scaling(self.lora_config))

    def _probe(self, stage: int, at: str, sub) -> None:
        """Mean response loss of the stage's submodel and of the full model on the probe batches."""
        from devft_lab.core.train import mean_response_loss

        sub_loss = mean_response_loss(sub.model, self.probe_batches, self.probe_dtype)
        if all(len(g) == 1 for g in sub.groups):  # the submodel is the full model
            full_loss = sub_loss
        elif at == "start" and self._full_probe is not None:  # the global LoRA has not changed since the last end
            full_loss = self._full_probe
        else:
            full_loss = mean_response_loss(self.full_model(), self.probe_batches, self.probe_dtype)
        self._full_probe = full_loss if at == "end" else None
        self.probes[f"{stage}/{at}"] = {"stage": stage, "at": at, "capacity": len(sub.groups),
                                        "sub_loss": sub_loss, "full_loss": full_loss, "gap": sub_loss - full_loss}

    def stage_records(self) -> list[dict[str, Any]]:
        """The stage loss probes so far, in stage order (start before end)."""
        return sorted(self.probes.values(), key=lambda r: (r["stage"], r["at"] != "start"))

    def carry(self, state: Mapping[str, torch.Tensor], stage: StageModel,
              previous: StageModel | None) -> dict[str, torch.Tensor]:
        """Move a client's kept tensors (FedSA-LoRA's B) through transfer and the next fusion."""
        if not state or previous is None:
            return dict(state)
        reps, prefix = to_layers(state)
        groups = previous.info["groups"]
        anchors = previous.info.get("anchors") or [g[0] for g in groups]
        if self.transfer == "increment":  # the client's member = the new global one + its deviation from the aggregate
            if not self._ended:
                raise ValueError("carry under transfer='increment' needs the ended stage's aggregated LoRA "
                                 "(kept by end() and in the checkpoint); none is known.")
            ended = self._ended["reps"]
            dev = {g: {n: t - ended[g][n] for n, t in d.items()} for g, d in reps.items()}
            full = {i: dict(self.global_lora[i]) for i in range(self.L)}
            for g, members in enumerate(groups):
                for i in members:
                    full[i].update({n: full[i][n] + t for n, t in dev[g].items()})
        else:  # the rule applied to the client's own representatives, from the previous stage's global LoRA
            full = transfer_lora(self.global_lora, groups, reps, self.transfer, anchors=anchors)
        fused = fuse_lora(full, stage.info["groups"], self.fusion, self.beta, self.anchor_rule, warn=False)
        keep = {n for layer in reps.values() for n in layer}
        return to_flat({g: {n: t for n, t in d.items() if n in keep} for g, d in fused.items()}, prefix)

    def eval_model(self, stage: StageModel, state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
        """The full model with the stage's adapter transferred in (what DevFT would deploy now)."""
        reps, _ = to_layers(state)
        if all(len(g) == 1 for g in stage.info["groups"]) and len(stage.info["groups"]) == self.L:
            set_submodel_lora_state(stage.model, reps)
            return stage.model
        groups = stage.info["groups"]
        anchors = stage.info.get("anchors") or [g[0] for g in groups]
        return self.full_model(self._transfer(groups, reps, anchors, self._start))

    def export(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        tensors = to_flat(self.global_lora, "g.layers")
        if self.transfer == "increment" and self._ended:  # carry needs the ended stage's aggregate after a restart
            tensors.update(to_flat(self._ended["reps"], "e.layers"))
        return {"probes": self.probes}, tensors

    def restore(self, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
        self.probes = {k: dict(v) for k, v in (meta or {}).get("probes", {}).items()}
        ended = {k: v for k, v in tensors.items() if k.startswith("e.layers.")}
        self._ended = {"reps": to_layers(ended)[0]} if ended else {}
        layers, _ = to_layers({k: v for k, v in tensors.items() if not k.startswith("e.layers.")})
        if sorted(layers) != list(range(self.L)):
            raise ValueError(f"checkpoint holds LoRA for layers {sorted(layers)[:5]}..., the model has {self.L}.")
        self.global_lora = layers
