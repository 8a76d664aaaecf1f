"""Algorithm 1 of DevFT (paper, Sec. 3) as a stage plan, over any LoRA strategy.

For s = 1..S, with L_1 < ... < L_S = L (STATED unless marked):

1. **DGLG** groups the L layers of the current global model into L_s groups by similarity;
2. **DBLF** fuses each group into one representative layer; the L_s representatives, in
   order, between the full model's embeddings and head, are the stage's submodel;
3. the federation trains the submodel's LoRA for R_s rounds with whatever strategy the run
   uses (FedIT by default);
4. **knowledge transfer** writes each representative's trained LoRA into every member of its
   group; the next stage regroups from the updated global model.

The runtime (:mod:`devft_lab.fl.simulation`) drives these steps through the
:class:`devft_lab.fl.stages.StagePlan` interface and knows nothing else of DevFT: steps 1
and 2 are :meth:`DevFTPlan.begin`, step 3 is the runtime's rounds, step 4 is
:meth:`DevFTPlan.end`. :func:`run_stages` is the whole loop in four lines.

OPEN, chosen by the ``devft`` config section (defaults = the paper): ``similarity`` (DGLG's W
from the layers' parameters, or ``function``: the cosine of the layers' residual updates on
the probe batches), ``transfer`` (a rule of :data:`devft_lab.method.transfer.TRANSFER_RULES`;
the plan asks the rule what it needs and never branches on its name). What only watches the
algorithm (the stage loss probe, ``probe_loss``) is a hook, :mod:`devft_lab.plans.hooks`.

The last stage has L_s = L: singleton groups, so the submodel is the full model (a fused
singleton is its layer, exactly) and a one-stage DevFT is FedIT.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, Sequence

import torch

from devft_lab.core.layers import decoder_layers, num_layers, unwrap
from devft_lab.core.lora import GlobalLoRA, get_lora_state, to_flat, to_layers
from devft_lab.fl.accounting import tensor_bytes
from devft_lab.fl.stages import StageModel, stage_groups
from devft_lab.method.grouping import group_layers
from devft_lab.method.similarity import layer_io, layer_parameter_similarity, residual_update_similarity
from devft_lab.method.submodel import (Submodel, build_submodel, fuse_lora, init_global_lora, lora_scaling,
                                       set_submodel_lora_state)
from devft_lab.method.transfer import transfer_rule
from devft_lab.plans.hooks import Record, StageHooks, default_hooks

Batches = Sequence[Mapping[str, torch.Tensor]]


class DevFTSettings(Protocol):
    """The fields of the ``devft`` config section the plan reads
    (:class:`devft_lab.runner.config.DevFTConfig` is the one to pass)."""

    beta: float  # DBLF's beta
    grouping: str  # spectral (DGLG) | contiguous | even | random
    affinity: str  # negatives in W: clip | shift
    fusion: str  # dblf | r-one | sum | mean | laco
    anchor: str  # which member is the anchor
    transfer: str  # step 4's rule
    similarity: str  # DGLG's W: parameters | function
    probe_loss: bool  # the stage loss probe (a hook)


# --------------------------------------------------------------------------- DGLG's W
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


def _parameter_similarity(plan: "DevFTPlan") -> torch.Tensor:
    """W_ij = <theta_i, theta_j> / (|theta_i| |theta_j|), theta = base weights + s B A (the paper)."""
    return layer_parameter_similarity(plan.full, plan.global_lora, lora_scaling(plan.lora_config))


def _function_similarity(plan: "DevFTPlan") -> torch.Tensor:
    """W_ij = cosine of layers i and j's residual updates on the probe batches (OPEN)."""
    return residual_update_similarity(residual_updates(plan.full_model(), plan.probe_batches))


LAYER_SIMILARITY: dict[str, Callable[["DevFTPlan"], torch.Tensor]] = {
    "parameters": _parameter_similarity, "function": _function_similarity}  # the names of SIMILARITIES


def fused_delivery_bytes(full_model: torch.nn.Module, groups: Sequence[Sequence[int]]) -> int:
    """Bytes of the dense fused layers a client needs for a stage (ASSUMED accounting).

    Clients already hold the base model (embeddings, head and the original layers never
    change), so a singleton group costs nothing; a fused representative is a new dense
    layer the server sends (unless the client fuses it itself, as the Flower app does).
    """
    layers = decoder_layers(full_model)
    return sum(tensor_bytes(dict(layers[g[0]].state_dict())) for g in groups if len(g) > 1)


# --------------------------------------------------------------------------- Algorithm 1
class DevFTPlan:
    """DevFT's growing stages around a plain (un-wrapped) full model.

    ``config``: the ``devft`` config section (:class:`DevFTSettings`); ``seed``: DGLG's k-means
    and the initial LoRA; ``probe_batches``: collated examples for ``similarity=function``;
    ``hooks``: what watches the stages (None: :func:`~devft_lab.plans.hooks.default_hooks` of
    ``config``, i.e. the stage loss probe if ``probe_loss``).
    """

    def __init__(self, full_model: torch.nn.Module, lora_config, capacities: Sequence[int], rounds: Sequence[int],
                 config: DevFTSettings, *, seed: int = 0, global_lora: GlobalLoRA | None = None,
                 probe_batches: Batches | None = None, hooks: Sequence[StageHooks] | None = None):
        if len(capacities) != len(rounds):
            raise ValueError(f"{len(capacities)} capacities but {len(rounds)} stage round counts.")
        if config.similarity not in LAYER_SIMILARITY:
            raise ValueError(f"similarity must be one of {', '.join(LAYER_SIMILARITY)}, got {config.similarity!r}.")
        if config.similarity == "function" and not probe_batches:
            raise ValueError("similarity='function' runs the model on probe batches; pass probe_batches "
                             "(collated examples with labels).")
        self.full, self.lora_config, self.config = full_model, lora_config, config
        self.L = num_layers(full_model)
        self.capacities, self.rounds = [int(c) for c in capacities], [int(r) for r in rounds]
        self.beta, self.seed = float(config.beta), int(seed)
        self.rule = transfer_rule(config.transfer)  # step 4
        self.probe_batches = list(probe_batches or [])
        self.hooks: list[StageHooks] = list(default_hooks(config, self.probe_batches) if hooks is None else hooks)
        self.global_lora: GlobalLoRA = global_lora or init_global_lora(full_model, lora_config, seed)
        self._sub: Submodel | None = None  # the current stage's submodel
        self._start: GlobalLoRA | None = None  # its representatives' LoRA at the stage start
        self._aggregate: GlobalLoRA | None = None  # the last ended stage's aggregated representatives
        self._eval: Submodel | None = None  # the full model in a PEFT wrapper (evaluation, probes)
        self.probes: dict[str, Record] = {}  # "<stage>/<start|end>": what the hooks recorded

    def stage_rounds(self) -> list[int]:
        """R_1, ..., R_S."""
        return list(self.rounds)

    # ## Step 1: DGLG, deconfliction-guided layer grouping
    #
    #     W_ij = sim(i, j)            (``config.similarity``; the paper: cosine of the parameter vectors)
    #     groups = argmin over partitions into L_s groups of  sum_{i, j in different groups} W_ij
    #
    # solved spectrally: Lap = D - W with D = diag(sum_j W_ij); k-means (k = L_s) on the rows of
    # the eigenvectors of Lap's L_s smallest eigenvalues.
    #
    # (``config.grouping`` picks the solver, or the EVEN / RANDOM baselines that ignore W).
    def similarity_matrix(self) -> torch.Tensor:
        """DGLG's L x L similarity W of the current global model."""
        return LAYER_SIMILARITY[self.config.similarity](self)

    def groups_for(self, stage: int) -> list[list[int]]:
        """The L_s groups of stage ``stage`` (singletons at L_s = L)."""
        k = self.capacities[stage]
        if k == self.L:
            return [[i] for i in range(self.L)]
        W = self.similarity_matrix() if self.config.grouping in ("spectral", "contiguous") else None
        return group_layers(W, self.L, k, method=self.config.grouping, negatives=self.config.affinity,
                            seed=self.seed + stage)

    # ## Step 2: DBLF, differential-based layer fusion
    #
    #     rep_g = theta_a + beta * sum_{j in g} (theta_j - theta_a)      a = the anchor of group g
    #
    # for the base tensors and for the LoRA A and B alike; submodel = [rep_1, ..., rep_{L_s}].
    #
    # ## Step 3: the federated rounds
    #
    # The returned :class:`StageModel` goes to the runtime, which trains its LoRA for R_s rounds
    # (``strategy.aggregate``: FedAvg for FedIT) and hands the result to :meth:`end`.
    def begin(self, stage: int, info: Mapping[str, Any] | None = None) -> StageModel:
        """Build stage ``stage`` (Steps 1 and 2); ``info`` (from a checkpoint) gives its groups."""
        groups = stage_groups(info) or self.groups_for(stage)  # Step 1 (a resumed stage keeps its groups)
        sub = build_submodel(self.full, groups, self.beta, self.config.fusion, self.lora_config,  # Step 2
                             global_lora=self.global_lora, anchor_rule=self.config.anchor, seed=self.seed)
        self._sub, self._start = sub, sub.lora_state()  # the representatives' fused LoRA A0, B0
        for hook in self.hooks:  # beside the algorithm: what watches the fused, untrained submodel
            self._record(stage, "start", hook.on_stage_begin(self, stage, sub))
        n_params = sum(p.numel() for layer in decoder_layers(sub.model.get_base_model()) for p in layer.parameters())
        return StageModel(stage, sub.model, get_lora_state(sub.model), self.rounds[stage],
                          fused_delivery_bytes(self.full, groups),
                          {"capacity": len(groups), "groups": groups, "beta": self.beta,
                           "fusion": self.config.fusion, "grouping": self.config.grouping, "layer_params": n_params,
                           "anchors": list(sub.anchors), "transfer": self.config.transfer,
                           "similarity": self.config.similarity})

    # ## Step 4: knowledge transfer
    #
    #     A_i <- A_rep(g),  B_i <- B_rep(g)      for every member i of group g     (the paper: ``copy``)
    #
    # or another rule of ``method.transfer.TRANSFER_RULES`` (``config.transfer``).
    def end(self, stage: int, state: Mapping[str, torch.Tensor]) -> None:
        """Write the stage's trained (evaluation) adapter into the member layers."""
        reps, _ = to_layers(state)
        sub = self._sub
        self.global_lora = self.rule.transfer(self.global_lora, sub.groups, reps, anchors=sub.anchors,
                                              start_lora=self._start)
        self._aggregate = reps  # the stage's aggregate (a rule's transfer_kept may need it)
        for hook in self.hooks:  # beside the algorithm: what watches the trained submodel
            self._record(stage, "end", hook.on_stage_end(self, stage, sub, reps))
        self._sub = None

    # --------------------------------------------------------------------------- beside the algorithm
    def _record(self, stage: int, at: str, record: Record | None) -> None:
        if record:
            self.probes.setdefault(f"{stage}/{at}", {"stage": stage, "at": at}).update(record)

    def stage_records(self) -> list[Record]:
        """What the hooks recorded, in stage order (start before end)."""
        return sorted(self.probes.values(), key=lambda r: (r["stage"], r["at"] != "start"))

    def full_model(self, lora: GlobalLoRA | None = None) -> torch.nn.Module:
        """The full model with ``lora`` (default: the current global LoRA) in a PEFT wrapper."""
        lora = self.global_lora if lora is None else lora
        if self._eval is None:
            self._eval = build_submodel(self.full, [[i] for i in range(self.L)], self.beta, self.config.fusion,
                                        self.lora_config, global_lora=lora, anchor_rule=self.config.anchor)
        else:
            self._eval.load_lora_state(lora)
        self._eval.model.eval()
        return self._eval.model

    def carry(self, state: Mapping[str, torch.Tensor], stage: StageModel,
              previous: StageModel | None) -> dict[str, torch.Tensor]:
        """Move a client's kept tensors (FedSA-LoRA's B) through the previous stage's transfer
        (the rule's :meth:`~devft_lab.method.transfer.TransferRule.transfer_kept`) and this stage's fusion."""
        if not state or previous is None:
            return dict(state)
        reps, prefix = to_layers(state)
        groups = previous.info["groups"]
        anchors = previous.info.get("anchors") or [g[0] for g in groups]
        full = self.rule.transfer_kept(self.global_lora, groups, reps, anchors=anchors, aggregate=self._aggregate)
        fused = fuse_lora(full, stage.info["groups"], self.config.fusion, self.beta, self.config.anchor, warn=False)
        keep = {n for layer in reps.values() for n in layer}
        return to_flat({g: {n: t for n, t in d.items() if n in keep} for g, d in fused.items()}, prefix)

    def eval_model(self, stage: StageModel, state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
        """The full model with the stage's adapter transferred in (what DevFT would deploy now)."""
        reps, _ = to_layers(state)
        groups = stage.info["groups"]
        if all(len(g) == 1 for g in groups) and len(groups) == self.L:
            set_submodel_lora_state(stage.model, reps)
            return stage.model
        anchors = stage.info.get("anchors") or [g[0] for g in groups]
        return self.full_model(self.rule.transfer(self.global_lora, groups, reps, anchors=anchors,
                                                  start_lora=self._start))

    def export(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """The records, the global LoRA and (if the rule's ``transfer_kept`` needs it) the ended aggregate."""
        tensors = to_flat(self.global_lora, "g.layers")
        if self.rule.keeps_aggregate and self._aggregate:
            tensors.update(to_flat(self._aggregate, "e.layers"))
        return {"probes": self.probes}, tensors

    def restore(self, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
        self.probes = {k: dict(v) for k, v in (meta or {}).get("probes", {}).items()}
        ended = {k: v for k, v in tensors.items() if k.startswith("e.layers.")}
        self._aggregate = to_layers(ended)[0] if ended else None
        layers, _ = to_layers({k: v for k, v in tensors.items() if not k.startswith("e.layers.")})
        if sorted(layers) != list(range(self.L)):
            raise ValueError(f"checkpoint holds LoRA for layers {sorted(layers)[:5]}..., the model has {self.L}.")
        self.global_lora = layers


def run_stages(plan: DevFTPlan, federate: Callable[[StageModel], Mapping[str, torch.Tensor]]) -> GlobalLoRA:
    """Algorithm 1 end to end, with ``federate(stage) -> trained adapter`` as Step 3 (the runtime's
    rounds; :class:`devft_lab.fl.simulation.Simulation` adds sampling, carry, evaluation and checkpoints).
    Returns the full model's LoRA after the last transfer."""
    for s in range(len(plan.stage_rounds())):
        stage = plan.begin(s)  # Steps 1 and 2: DGLG, DBLF
        plan.end(s, federate(stage))  # Step 3 (federate), Step 4: transfer
    return plan.global_lora
