"""DevFT's method math, one concept per module (nothing here knows about clients or rounds).

=================  ==========================================================
schedule.py        stage capacities L_1 < ... < L_S = L and rounds per stage
similarity.py      layer similarity (DGLG's W: parameters or residual updates), conflict, Block Influence
grouping.py        DGLG: spectral grouping, contiguous DP, EVEN and RANDOM baselines
fusion.py          DBLF and its variants as per-member fusion weights
submodel.py        the runnable stage submodel (shared embeddings/head, PEFT LoRA)
transfer.py        knowledge transfer rules, a registry (copy, copy-scaled, anchor-only, increment)
=================  ==========================================================
(the per-stage submodel measurement is ``python -m devft_lab.experiments.submodels``)
"""
from devft_lab.method.fusion import anchor_weight, fuse_layers, fuse_state_dicts, fuse_tensors, fusion_weights
from devft_lab.method.grouping import (contiguous_groups, cut_value, even_groups, group_layers, random_groups,
                                       spectral_groups, validate_groups)
from devft_lab.method.schedule import Stage, make_schedule, stage_capacities, validate_capacities
from devft_lab.method.similarity import (SIMILARITIES, block_influence, client_update_conflict,
                                         layer_parameter_similarity, layer_update_conflict,
                                         residual_update_similarity)
from devft_lab.method.submodel import (Submodel, build_submodel, default_lora_config, fuse_lora, init_global_lora,
                                       set_submodel_lora_state, submodel_lora_state)
from devft_lab.method.transfer import TRANSFER_RULES, TransferRule, transfer_lora, transfer_rule

__all__ = [
    "Stage", "make_schedule", "stage_capacities", "validate_capacities",
    "layer_parameter_similarity", "layer_update_conflict", "client_update_conflict", "block_influence",
    "residual_update_similarity", "SIMILARITIES",
    "spectral_groups", "contiguous_groups", "even_groups", "random_groups", "group_layers", "cut_value",
    "validate_groups",
    "fusion_weights", "anchor_weight", "fuse_tensors", "fuse_state_dicts", "fuse_layers",
    "Submodel", "build_submodel", "default_lora_config", "init_global_lora", "fuse_lora",
    "submodel_lora_state", "set_submodel_lora_state",
    "transfer_lora", "TRANSFER_RULES", "TransferRule", "transfer_rule",
]
