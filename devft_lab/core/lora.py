"""LoRA state: its two forms, the parser between them, reading/writing a model, and the initialiser.

One module that ``method/``, ``fl/``, ``plans/`` and ``flower/`` share (it imports nothing of them).

Forms
-----
*flat* (:data:`State`), what the federated runtime sends and aggregates: ``{PEFT key: tensor}``
with keys as ``peft.get_peft_model_state_dict`` writes them::

    base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight   (r, in)
    base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight   (out, r)

(``model.named_parameters()`` adds the adapter name, ``...lora_A.default.weight``;
:func:`canonical_key` strips it, and every function here accepts both spellings).

*per layer* (:data:`GlobalLoRA`), what the method works on (fusion, transfer, similarity):
``{layer index: {name inside the layer: tensor}}``, e.g. ``{0: {"self_attn.q_proj.lora_A.weight": A}}``.

:func:`to_layers` and :func:`to_flat` convert between the two (one parser, one regex).

Initialisation (one draw, one seed rule, PEFT's default)
--------------------------------------------------------
``A ~ U(-1/sqrt(in), 1/sqrt(in))`` (PEFT's ``kaiming_uniform_(a=sqrt 5)``), ``B = 0``, so a fresh
adapter changes nothing (``B A = 0``). :func:`draw_lora_a` is the one draw; one generator seeded
by ``seed`` draws the As in module order, layer by layer: :func:`seeded_lora_init` over a flat
template (FFA-LoRA's shared A, FLoRA's per-round adapters) and
:func:`devft_lab.method.submodel.init_global_lora` over a model (the full model's global LoRA)
give the same As for the same seed.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch

State = dict[str, torch.Tensor]  # flat: {PEFT key: tensor}
LayerLoRA = dict[str, torch.Tensor]  # one layer: {name inside the layer: tensor}
GlobalLoRA = dict[int, LayerLoRA]  # per layer: {layer index: LayerLoRA}

_LORA_RE = re.compile(r"(^|\.)(lora_[AB])(\.[^.]+)?\.weight$")


# --------------------------------------------------------------------------- keys
def canonical_key(key: str) -> str:
    """``...lora_A.default.weight`` -> ``...lora_A.weight`` (drop the adapter name)."""
    return _LORA_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}.weight", key)


def is_lora_a(key: str) -> bool:
    m = _LORA_RE.search(key)
    return bool(m) and m.group(2) == "lora_A"


def is_lora_b(key: str) -> bool:
    m = _LORA_RE.search(key)
    return bool(m) and m.group(2) == "lora_B"


def module_name(key: str) -> str:
    """The adapted module of a LoRA key: ``...q_proj.lora_B.weight`` -> ``...q_proj``."""
    m = _LORA_RE.search(key)
    if not m:
        raise ValueError(f"{key!r} is not a LoRA key (expected ...lora_A.weight or ...lora_B.weight)")
    return key[: m.start()]


def lora_pairs(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[str, str]]:
    """``module -> (A key, B key)`` for every adapted module; raises if an A or B is missing."""
    a, b = {}, {}
    for k in state:
        if is_lora_a(k):
            a[module_name(k)] = k
        elif is_lora_b(k):
            b[module_name(k)] = k
    if a.keys() != b.keys():
        missing = sorted(set(a) ^ set(b))
        raise ValueError(f"LoRA state has unpaired A/B for modules: {missing[:5]}")
    return {m: (a[m], b[m]) for m in a}


# --------------------------------------------------------------------------- flat <-> per layer
def layer_key_pattern(layers_path: str = "layers") -> re.Pattern:
    """The regex that splits a key into ``pre`` (up to ``layers_path``), layer ``i`` and ``name``.

    ``layers_path`` is the module path of the decoder layer list (``model.layers`` for LLaMA,
    see :func:`devft_lab.core.layers.layer_prefix`); the default matches any ``...layers``."""
    return re.compile(rf"^(?P<pre>(?:.*?\.)?{re.escape(layers_path)})\.(?P<i>\d+)\.(?P<name>.+)$")


_ANY_LAYERS = layer_key_pattern()


def to_layers(state: Mapping[str, torch.Tensor], pattern: re.Pattern | None = None
              ) -> tuple[GlobalLoRA, str]:
    """Flat LoRA state -> ``({layer index: {name: tensor}}, key prefix)`` (layers sorted)."""
    pat = pattern or _ANY_LAYERS
    out: GlobalLoRA = {}
    prefix = None
    for k, v in state.items():
        m = pat.match(k)
        if m is None:
            raise ValueError(f"LoRA key {k!r} is not inside a decoder layer ('...layers.<i>.<name>'); "
                             "devft_lab only adapts decoder layers.")
        prefix = prefix or m["pre"]
        out.setdefault(int(m["i"]), {})[m["name"]] = v
    return dict(sorted(out.items())), prefix or "base_model.model.model.layers"


def to_flat(layers: Mapping[int, Mapping[str, torch.Tensor]], prefix: str) -> State:
    """Inverse of :func:`to_layers`: ``{f"{prefix}.{i}.{name}": tensor}``."""
    return {f"{prefix}.{i}.{name}": t for i in sorted(layers) for name, t in layers[i].items()}


# --------------------------------------------------------------------------- a model's adapter
def lora_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """``{canonical PEFT key: parameter}`` of every LoRA A/B weight of ``model``."""
    out = {}
    for name, p in model.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            out[canonical_key(name)] = p
    if not out:
        raise ValueError("the model has no LoRA parameters; wrap it with peft.get_peft_model first.")
    return out


def get_lora_state(model: torch.nn.Module) -> State:
    """The model's current adapter (flat) as detached CPU clones."""
    return {k: p.detach().to("cpu", copy=True) for k, p in lora_parameters(model).items()}


@torch.no_grad()
def set_lora_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor], strict: bool = True) -> None:
    """Copy a flat ``state`` into the model's LoRA parameters (shapes must match)."""
    params = lora_parameters(model)
    if strict and set(params) != {canonical_key(k) for k in state}:
        missing = sorted(set(params) - {canonical_key(k) for k in state})[:3]
        extra = sorted({canonical_key(k) for k in state} - set(params))[:3]
        raise ValueError(f"LoRA state does not fit the model: missing {missing}, unexpected {extra}.")
    for k, v in state.items():
        p = params[canonical_key(k)]
        if p.shape != v.shape:
            raise ValueError(f"{k}: state shape {tuple(v.shape)} != parameter shape {tuple(p.shape)}.")
        p.copy_(v.to(device=p.device, dtype=p.dtype))


# --------------------------------------------------------------------------- the update
def delta(a: torch.Tensor, b: torch.Tensor, scaling: float = 1.0) -> torch.Tensor:
    """The weight update of one adapted module, ``Delta W = scaling * B A`` (LoRA, Hu et al. 2021,
    ``h = W x + (alpha / r) B A x``), of shape ``(out, in)`` in the inputs' dtype.

    PEFT's ``LoraLayer.get_delta_weight`` (a ``Linear`` without ``fan_in_fan_out``); the one place
    the product is formed: cast ``a`` and ``b`` first for another precision."""
    return (b @ a) * scaling


# --------------------------------------------------------------------------- initialisation
def draw_lora_a(shape: tuple[int, int] | torch.Size, generator: torch.Generator) -> torch.Tensor:
    """``A ~ U(-1/sqrt(in), 1/sqrt(in))`` of shape ``(r, in)`` in float32 (PEFT's default init)."""
    bound = 1.0 / math.sqrt(shape[1])
    return (torch.rand(tuple(shape), generator=generator, dtype=torch.float32) * 2 - 1) * bound


def seeded_lora_init(template: Mapping[str, torch.Tensor], seed: int, reinit_b: bool = True) -> State:
    """A fresh flat adapter with the template's shapes: one generator seeded by ``seed`` draws
    every A in the template's order (:func:`draw_lora_a`), B = 0 (or kept with ``reinit_b=False``);
    other tensors copied. Any party with the same template and seed rebuilds the same A."""
    gen = torch.Generator().manual_seed(int(seed))
    out: State = {}
    for k, v in template.items():
        if is_lora_a(k):
            out[k] = draw_lora_a(v.shape, gen).to(dtype=v.dtype, device=v.device)
        elif is_lora_b(k) and reinit_b:
            out[k] = torch.zeros_like(v)
        else:
            out[k] = v.detach().clone()
    return out
