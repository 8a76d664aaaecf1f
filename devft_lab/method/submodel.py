"""The stage submodel: L_s representative layers between the full model's embeddings and head.

Built from the current global model in two steps (STATED): the groups (DGLG) and one
representative per group (DBLF), in group order. The embeddings, rotary embedding, final
norm and LM head are *shared* with the full model (no copy; OPEN, the obvious choice), via
:func:`devft_lab.core.layers.with_layers`. Each representative is a copy of its anchor's
modules holding the fused tensors, so it keeps the anchor's attention type (Gemma3); a
singleton group's representative shares its layer's frozen base tensors (no copy), so the
last stage and the evaluation model cost adapters only.

LoRA: the full model stays a plain HF model; its adapters are the *global LoRA*
(:data:`devft_lab.core.lora.GlobalLoRA`), a dict
``{layer_index: {"self_attn.q_proj.lora_A.weight": A, "self_attn.q_proj.lora_B.weight": B, ...}}``
(names relative to the layer, as PEFT names them; A is r x in, B is out x r). The
submodel is a PEFT model whose LoRA on representative g is the same DBLF fusion of its
members' A and B (each fused on its own). :func:`submodel_lora_state` /
:func:`set_submodel_lora_state` move adapters in and out through PEFT's
``get_peft_model_state_dict`` / ``set_peft_model_state_dict``, keyed by representative
position.

Default LoRA (OPEN; the common federated instruction-tuning recipe): r = 32, alpha = 64,
dropout 0.05, on q_proj and v_proj.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from devft_lab.core.layers import decoder_layers, layer_prefix, layer_types, num_layers, with_layers
from devft_lab.core.lora import GlobalLoRA, LayerLoRA, draw_lora_a, layer_key_pattern, to_layers
from devft_lab.method.fusion import DEFAULT_BETA, anchor_position, fuse_layers, fuse_state_dicts, fusion_weights
from devft_lab.method.grouping import Groups, canonical, validate_groups



def default_lora_config(r: int = 32, alpha: int = 64, dropout: float = 0.05,
                        target_modules: Sequence[str] = ("q_proj", "v_proj")):
    """The paper's common recipe: r=32, alpha=64, dropout 0.05 on q_proj and v_proj."""
    from peft import LoraConfig  # optional/heavy: peft

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                      bias="none", task_type="CAUSAL_LM")


def lora_scaling(lora_config) -> float:
    """s = lora_alpha / r (PEFT's scaling without rslora)."""
    return lora_config.lora_alpha / lora_config.r


def _targets(lora_config) -> set[str]:
    t = lora_config.target_modules
    if isinstance(t, str):
        raise ValueError("pass target_modules as a list of module names (e.g. ['q_proj', 'v_proj']), "
                         "not a regex string.")
    return set(t)


def init_global_lora(full_model: nn.Module, lora_config=None, seed: int = 0) -> GlobalLoRA:
    """A fresh global LoRA as PEFT initialises it: A ~ kaiming_uniform(a=sqrt 5), B = 0.

    The seed rule (see :mod:`devft_lab.core.lora`): one generator seeded by ``seed``
    draws every A (:func:`~devft_lab.core.lora.draw_lora_a`) layer by layer, modules in
    ``named_modules`` order. A non-zero B (e.g. for tests) is obtained by editing the tensors.
    """
    cfg = lora_config or default_lora_config()
    targets = _targets(cfg)
    gen = torch.Generator().manual_seed(seed)
    out: GlobalLoRA = {}
    for i, layer in enumerate(decoder_layers(full_model)):
        entry: LayerLoRA = {}
        for name, mod in layer.named_modules():
            if name.split(".")[-1] in targets and isinstance(mod, nn.Linear):
                w = mod.weight
                a = draw_lora_a((cfg.r, mod.in_features), gen)
                entry[f"{name}.lora_A.weight"] = a.to(w.dtype).to(w.device)
                entry[f"{name}.lora_B.weight"] = torch.zeros(mod.out_features, cfg.r, dtype=w.dtype, device=w.device)
        if not entry:
            raise ValueError(f"no module of layer {i} matches target_modules {sorted(targets)}.")
        out[i] = entry
    return out


@dataclass
class Submodel:
    """A runnable stage submodel (a PEFT model) and how it was built."""

    model: nn.Module  # peft.PeftModel over a with_layers() model
    groups: Groups
    anchors: list[int]  # full-model index of each representative's anchor
    types: list[str | None]  # attention type of each representative (its anchor's)
    weights: list[list[float]]  # fusion weights per group, member order
    lora_config: object = field(repr=False)

    @property
    def capacity(self) -> int:
        return len(self.groups)

    def lora_state(self) -> GlobalLoRA:
        """{representative position: {name: tensor}} (detached clones)."""
        return submodel_lora_state(self.model)

    def load_lora_state(self, state: Mapping[int, Mapping[str, torch.Tensor]]) -> None:
        set_submodel_lora_state(self.model, state)

def layer_key_pattern_of(peft_model) -> re.Pattern:
    """:func:`devft_lab.core.lora.layer_key_pattern` for this model's decoder-layer path."""
    base = peft_model.get_base_model()
    return layer_key_pattern(layer_prefix(base, 0)[: -len(".0")])


def submodel_lora_state(peft_model) -> GlobalLoRA:
    """The PEFT model's adapters as {layer position: {name relative to the layer: tensor}}."""
    from peft import get_peft_model_state_dict  # optional/heavy: peft

    state = {k: t.detach().clone() for k, t in get_peft_model_state_dict(peft_model).items()}
    return to_layers(state, layer_key_pattern_of(peft_model))[0]


def set_submodel_lora_state(peft_model, state: Mapping[int, Mapping[str, torch.Tensor]]) -> None:
    """Write {layer position: {name: tensor}} into the PEFT model's adapters (all must be given)."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict  # optional/heavy: peft

    pat = layer_key_pattern_of(peft_model)
    current = get_peft_model_state_dict(peft_model)
    new = {}
    for key, t in current.items():
        m = pat.match(key)
        pos, name = int(m["i"]), m["name"]
        if pos not in state or name not in state[pos]:
            raise ValueError(f"LoRA state has no tensor {name!r} for layer {pos}; give every adapter "
                             f"tensor of the submodel (names like {name!r}).")
        src = state[pos][name]
        if src.shape != t.shape:
            raise ValueError(f"LoRA tensor {name!r} of layer {pos} has shape {tuple(src.shape)}, "
                             f"the model expects {tuple(t.shape)} (check the rank r).")
        new[key] = src.to(dtype=t.dtype, device=t.device)
    extra = [p for p in state if p not in {int(pat.match(k)["i"]) for k in current}]
    if extra:
        raise ValueError(f"LoRA state names layer position(s) {extra} that the model does not have.")
    result = set_peft_model_state_dict(peft_model, new)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"PEFT did not accept adapter keys {result.unexpected_keys[:5]}.")


def fuse_lora(global_lora: Mapping[int, Mapping[str, torch.Tensor]], groups: Sequence[Sequence[int]],
              method: str = "dblf", beta: float = DEFAULT_BETA, anchor_rule: str = "first",
              warn: bool = True) -> GlobalLoRA:
    """{group position: fused LoRA}: rep_A = sum_j w_j A_j and rep_B = sum_j w_j B_j (DBLF weights,
    the paper's DBLF; A and B are fused each on its own, so rep_B rep_A is not the fused B A).

    ``warn=False`` silences the negative-anchor-weight warning (a caller that already
    warned for the same groups, e.g. :func:`build_submodel` fusing the base layers).
    """
    out: GlobalLoRA = {}
    for g, members in enumerate(groups):
        a = anchor_position(len(members), anchor_rule)
        with warnings.catch_warnings():
            if not warn:
                warnings.simplefilter("ignore", UserWarning)
            w = fusion_weights(len(members), method, beta, a)
        try:
            out[g] = fuse_state_dicts([global_lora[i] for i in members], w)
        except KeyError as e:
            raise ValueError(f"global LoRA has no entry for layer {e.args[0]}.") from None
    return out


def build_submodel(full_model: nn.Module, groups: Sequence[Sequence[int]], beta: float = DEFAULT_BETA,
                   method: str = "dblf", lora_config=None, global_lora: Mapping | None = None,
                   anchor_rule: str = "first", seed: int = 0) -> Submodel:
    """Stage submodel of ``len(groups)`` representative layers with PEFT LoRA (the paper's stage loop, step 1: DGLG groups, DBLF fusion).

    For group g with members j and anchor a (the paper's DBLF):
        rep_g = theta_a + beta * sum_j (theta_j - theta_a)      (base tensors, norms, LoRA A, B)
    The submodel's decoder stack is [rep_1, ..., rep_k]; embeddings, final norm and head
    are the full model's own modules. ``global_lora=None`` starts from
    :func:`init_global_lora` (seeded). Note: PEFT freezes every non-LoRA parameter of the
    submodel, and so the shared embeddings/head of the full model too (requires_grad=False).
    """
    from peft import get_peft_model  # optional/heavy: peft

    L = num_layers(full_model)
    groups = [list(map(int, g)) for g in groups]
    validate_groups(groups, L)
    if groups != canonical(groups):
        raise ValueError(f"groups must be ordered by first layer with sorted members, e.g. {canonical(groups)}.")
    cfg = lora_config or default_lora_config()
    lora = global_lora if global_lora is not None else init_global_lora(full_model, cfg, seed)
    layers = decoder_layers(full_model)
    full_types = layer_types(full_model)
    reps, anchors, types, weights = [], [], [], []
    for members in groups:
        a = anchor_position(len(members), anchor_rule)
        w = fusion_weights(len(members), method, beta, a)
        reps.append(fuse_layers([layers[i] for i in members], w, a))
        anchors.append(members[a])
        types.append(full_types[members[a]])
        weights.append(w)
    sub = with_layers(full_model, reps, types)
    peft_model = get_peft_model(sub, cfg)
    set_submodel_lora_state(peft_model, fuse_lora(lora, groups, method, beta, anchor_rule, warn=False))
    peft_model.train(full_model.training)
    return Submodel(peft_model, groups, anchors, types, weights, cfg)
