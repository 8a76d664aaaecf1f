"""Architecture adapter: the one place that knows where a causal LM keeps its decoder layers.

DevFT builds submodels whose decoder stack is a *different list of layers* while the
embeddings, final norm and LM head stay those of the full model. Everything in
``devft_lab`` that touches the layer list goes through this module, so supporting a
new architecture means adding one entry to :data:`SUPPORTED`.

Supported (tested on tiny random models): LLaMA, Mistral, Qwen2, Gemma3 (text).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

# model_type -> attribute path of the decoder-layer ModuleList, from the *ForCausalLM object.
SUPPORTED: dict[str, str] = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "qwen2": "model.layers",
    "gemma3_text": "model.layers",
}


class UnsupportedArchitectureError(ValueError):
    """Raised for a model whose decoder-layer layout devft_lab does not know."""


def _check(model: nn.Module) -> str:
    mt = getattr(getattr(model, "config", None), "model_type", None)
    if mt not in SUPPORTED:
        raise UnsupportedArchitectureError(
            f"devft_lab does not know the layer layout of {type(model).__name__} "
            f"(model_type={mt!r}). Supported model types: {', '.join(sorted(SUPPORTED))}. "
            "Add an entry to devft_lab.core.layers.SUPPORTED if its decoder layers live in "
            "`model.layers` like LLaMA's."
        )
    return SUPPORTED[mt]


def unwrap(model: nn.Module) -> nn.Module:
    """The ``*ForCausalLM`` module inside a PEFT wrapper (or the model itself)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module, float | None] | None:
    """``(decoder stack, LM head, final logit softcap)`` of a ``*ForCausalLM`` (PEFT-wrapped or
    not), or None for a model without the usual ``.model`` / output-embeddings split."""
    lm = unwrap(model)
    decoder = getattr(lm, "model", None)
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if decoder is None or head is None:
        return None
    return decoder, head, getattr(lm.config, "final_logit_softcapping", None)


def _parent_and_name(model: nn.Module) -> tuple[nn.Module, str]:
    path = _check(model).split(".")
    parent = model
    for p in path[:-1]:
        parent = getattr(parent, p)
    return parent, path[-1]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder-layer list of ``model`` (the live ModuleList, not a copy)."""
    parent, name = _parent_and_name(model)
    return getattr(parent, name)


def num_layers(model: nn.Module) -> int:
    """Number of decoder layers L."""
    return len(decoder_layers(model))


def layer_types(model: nn.Module) -> list[str | None]:
    """Per-layer attention type (Gemma3: sliding/full; others: None unless configured)."""
    cfg = model.config
    types = getattr(cfg, "layer_types", None)
    n = num_layers(model)
    if types is None:
        return [None] * n
    return list(types)[:n]


def layer_prefix(model: nn.Module, index: int) -> str:
    """Module-name prefix of layer ``index`` inside ``model``, e.g. ``model.layers.3``."""
    return f"{_check(model)}.{index}"


def _reindex(layer: nn.Module, index: int) -> None:
    # Attention modules remember their position for the KV cache.
    for m in layer.modules():
        if hasattr(m, "layer_idx") and isinstance(getattr(m, "layer_idx"), int):
            m.layer_idx = index


def share_tensors_copy(module: nn.Module) -> nn.Module:
    """New module objects over the *same* parameter and buffer tensors (no weight memory).

    What a submodel needs of a layer it does not change: PEFT can wrap the copy's Linear
    modules and :func:`with_layers` can reindex it without touching the original, while the
    frozen base weights stay one tensor in memory. Replacing a copy's parameter by a new
    ``nn.Parameter`` leaves the original's alone; writing into it in place does not.
    """
    memo = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    return copy.deepcopy(module, memo)


def with_layers(
    model: nn.Module,
    layers: list[nn.Module],
    types: list[str | None] | None = None,
) -> nn.Module:
    """A model of the same class whose decoder stack is ``layers``.

    Embeddings, rotary embedding, final norm and LM head are *shared* with ``model``
    (same tensors, no copy). The config follows: ``num_hidden_layers`` and, where the
    architecture has them, ``layer_types`` (``types[i]`` is the attention type of
    ``layers[i]``; default: the full model's types when the length matches).

    The layers' attention ``layer_idx`` is set to their new position (in place), so pass
    copies when the layers also belong to a model that will keep being used with a cache
    at other positions. Rebuilding over the model's own full list changes nothing.
    """
    _check(model)
    if len(layers) == 0:
        raise ValueError("with_layers needs at least one decoder layer.")
    cfg = copy.deepcopy(model.config)
    cfg.num_hidden_layers = len(layers)
    if getattr(cfg, "layer_types", None) is not None:
        if types is None:
            full = layer_types(model)
            if len(full) != len(layers):
                raise ValueError(
                    f"{cfg.model_type} has per-layer attention types; pass `types` for the "
                    f"{len(layers)} layers (the full model has {len(full)})."
                )
            types = full
        if len(types) != len(layers):
            raise ValueError(f"got {len(types)} layer types for {len(layers)} layers.")
        cfg.layer_types = list(types)
    # Build the shell on the meta device (no memory), then move the real modules in.
    with torch.device("meta"):
        new = type(model)(cfg)
    src_parent, name = _parent_and_name(model)
    dst_parent, _ = _parent_and_name(new)
    for child_name, child in src_parent.named_children():
        if child_name != name:
            setattr(dst_parent, child_name, child)
    for child_name, child in model.named_children():
        if child is not src_parent:
            setattr(new, child_name, child)
    for i, layer in enumerate(layers):
        _reindex(layer, i)
    setattr(dst_parent, name, nn.ModuleList(layers))
    left = [n for n, t in list(new.named_parameters()) + list(new.named_buffers()) if t.is_meta]
    if left:
        raise UnsupportedArchitectureError(
            f"with_layers could not share these parts of {type(model).__name__}: {left[:5]}"
        )
    new.generation_config = copy.deepcopy(getattr(model, "generation_config", None))
    new.train(model.training)
    return new
