"""Similarity and conflict views between decoder layers (input to DGLG).

Parameter view (STATED, Eq. of DGLG): the cosine similarity of two layers' parameter
vectors, LoRA included::

    sim(i, j) = <theta_i, theta_j> / (|theta_i| |theta_j|)

with theta_i every tensor of layer i, flattened and concatenated. LoRA enters theta as its
merged delta (OPEN, chosen: the natural reading): W + s * B @ A, s = lora_alpha / r.

Layers of one model share tensor names (``self_attn.q_proj.weight`` ...), so the inner
products are streamed one tensor name at a time::

    G[i, j] = sum_t <flat_i_t, flat_j_t>         sim = G / sqrt(diag(G) diag(G)^T)

and only the L rows of one tensor name are ever flattened together.

Conflict views: cosine and TIES' sign-conflict rate between layers' LoRA updates or
gradients, and between clients' updates of the same layer. Functional view: ShortGPT's
Block Influence, BI_i = 1 - E_tokens[cos(h_in_i, h_out_i)].
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from devft_lab.core.layers import decoder_layers, num_layers
from devft_lab.core.lora import delta

SIMILARITIES = ("parameters", "function")  # devft.similarity: DGLG's W from parameters (paper) or function
TensorDict = Mapping[str, torch.Tensor]
GlobalLoRA = Mapping[int, TensorDict]  # read-only devft_lab.core.lora.GlobalLoRA: {layer: {name: A or B}}


def _common_names(states: Sequence[TensorDict]) -> list[str]:
    if len(states) == 0:
        raise ValueError("need at least one state dict to compare.")
    names = list(states[0].keys())
    for k, s in enumerate(states[1:], start=1):
        if set(s.keys()) != set(names):
            diff = sorted(set(s.keys()) ^ set(names))[:5]
            raise ValueError(f"state {k} has different tensor names than state 0 (e.g. {diff}); "
                             "compare states of the same shape (layers of one model, one layer's updates).")
    return names


def streamed_gram(states: Sequence[TensorDict]) -> torch.Tensor:
    """Gram matrix of concatenated parameter vectors, one tensor name at a time.

    G[i, j] = sum_t <flat_i_t, flat_j_t>   (float64, n x n for n states)
    """
    names = _common_names(states)
    n = len(states)
    gram = torch.zeros(n, n, dtype=torch.float64)
    for t in names:
        x = torch.stack([s[t].detach().reshape(-1).float().cpu() for s in states])
        gram += (x @ x.T).double()
    return gram


def cosine_from_gram(gram: torch.Tensor) -> torch.Tensor:
    """sim(i, j) = G[i, j] / sqrt(G[i, i] G[j, j]); a zero vector gets similarity 0."""
    norms = gram.diagonal().clamp_min(0).sqrt()
    denom = norms[:, None] * norms[None, :]
    return torch.where(denom > 0, gram / denom.clamp_min(1e-300), torch.zeros_like(gram))


def streamed_sign_conflict(states: Sequence[TensorDict]) -> torch.Tensor:
    """TIES' sign conflict: the share of coordinates where two vectors have opposite signs.

    R[i, j] = #{k : x_ik * x_jk < 0} / #{k : x_ik != 0 and x_jk != 0}

    Streamed per tensor name with sign matrices S = sign(X): opposite = (N - S S^T) / 2,
    N = |S| |S|^T. Pairs with no shared non-zero coordinate get 0.
    """
    names = _common_names(states)
    n = len(states)
    agree = torch.zeros(n, n, dtype=torch.float64)
    both = torch.zeros(n, n, dtype=torch.float64)
    for t in names:
        s = torch.stack([st[t].detach().reshape(-1).float().cpu() for st in states]).sign()
        agree += (s @ s.T).double()
        a = s.abs()
        both += (a @ a.T).double()
    opposite = (both - agree) / 2
    return torch.where(both > 0, opposite / both.clamp_min(1), torch.zeros_like(both))


@dataclass(frozen=True)
class ConflictView:
    """Cosine similarity and sign-conflict rate between n update vectors (n x n each)."""

    cosine: torch.Tensor
    sign_conflict: torch.Tensor


def update_conflict(updates: Sequence[TensorDict]) -> ConflictView:
    """Cosine and sign-conflict rate between update (or gradient) vectors.

    cos(i, j) = <u_i, u_j> / (|u_i| |u_j|),  R[i, j] as in :func:`streamed_sign_conflict`.
    """
    return ConflictView(cosine_from_gram(streamed_gram(updates)), streamed_sign_conflict(updates))


def layer_update_conflict(updates: GlobalLoRA) -> ConflictView:
    """Conflict between *layers*: ``updates[i]`` is layer i's LoRA update/gradient dict.

    Rows/columns follow ``sorted(updates)`` (the layer indices).
    """
    return update_conflict([updates[i] for i in sorted(updates)])


def client_update_conflict(updates: Sequence[TensorDict]) -> ConflictView:
    """Conflict between *clients*: ``updates[c]`` is client c's update of the same layer(s)."""
    if len(updates) < 2:
        raise ValueError(f"client conflict needs updates from at least 2 clients, got {len(updates)}.")
    return update_conflict(updates)


def lora_delta_name(lora_a_name: str) -> str:
    """``self_attn.q_proj.lora_A.weight`` -> ``self_attn.q_proj.weight`` (the base tensor)."""
    return lora_a_name.replace(".lora_A.weight", ".weight")


def layer_parameter_similarity(model: nn.Module, global_lora: GlobalLoRA | None = None,
                               scaling: float = 2.0, include_lora: bool = True) -> torch.Tensor:
    """L x L cosine similarity of the layers' parameters (DGLG's W).

    sim(i, j) = <theta_i, theta_j> / (|theta_i| |theta_j|),  theta_i = layer i's tensors with
    its LoRA merged (W + s B A) when ``include_lora`` and ``global_lora`` is given; else the
    base weights only. Streamed one tensor name at a time (the merged delta of one layer is
    built only for the tensor being accumulated).
    """
    layers = list(decoder_layers(model))
    lora = global_lora if (include_lora and global_lora) else {}
    states = [_LazyMerged(layer, lora.get(i), scaling) for i, layer in enumerate(layers)]
    return cosine_from_gram(streamed_gram(states)).float()


class _LazyMerged(Mapping):
    """Mapping view of a layer's tensors that merges LoRA only for the tensor asked for."""

    def __init__(self, layer: nn.Module, lora: TensorDict | None, scaling: float):
        self.params = dict(layer.named_parameters())
        self.lora = dict(lora or {})
        self.scaling = scaling
        for k in self.lora:
            if ".lora_A." in k and lora_delta_name(k) not in self.params:
                raise ValueError(f"LoRA tensor {k!r} does not adapt any weight of the layer.")

    def __getitem__(self, name: str) -> torch.Tensor:
        w = self.params[name].detach()
        a_name = name[: -len(".weight")] + ".lora_A.weight" if name.endswith(".weight") else None
        if a_name in self.lora:
            a, b = self.lora[a_name], self.lora[a_name.replace(".lora_A.", ".lora_B.")]
            w = w.float() + delta(a.float(), b.float(), self.scaling)
        return w

    def __iter__(self):
        return iter(self.params)

    def __len__(self) -> int:
        return len(self.params)


def layer_io(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]
             ) -> Iterator[tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]]:
    """Per batch: (attention mask, [(h_in, h_out) of every decoder layer]), float32, no grad.

    The hidden states entering and leaving each layer are caught with forward hooks; the
    model is put in eval mode meanwhile and restored afterwards.
    """
    layers = list(decoder_layers(model))
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(i):
        def fn(module, args, kwargs, output):
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, tuple) else output
            seen[i] = (h_in.float(), h_out.float())
        return fn

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
            seen.clear()
            with torch.no_grad():
                model(**batch, use_cache=False)
            yield mask, [seen[i] for i in range(len(layers))]
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def block_influence(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> torch.Tensor:
    """ShortGPT's Block Influence of every decoder layer (length-L tensor).

    BI_i = 1 - E_{tokens} [ <h_in, h_out> / (|h_in| |h_out|) ]

    with h_in / h_out the hidden state entering / leaving layer i, averaged over the
    non-padding tokens of ``batches`` (tokenizer outputs: input_ids, attention_mask).
    A high BI means the layer changes its input a lot (ShortGPT keeps those).
    """
    sums = torch.zeros(num_layers(model), dtype=torch.float64)
    count = 0
    for mask, io in layer_io(model, batches):
        m = mask.float()
        count += int(m.sum())
        for i, (h_in, h_out) in enumerate(io):
            sums[i] += float((torch.nn.functional.cosine_similarity(h_in, h_out, dim=-1) * m).sum())
    if count == 0:
        raise ValueError("block_influence got no tokens; pass at least one non-empty batch.")
    return (1 - sums / count).float()


def layer_parameter_similarity_per_tensor(model: nn.Module, global_lora: GlobalLoRA | None = None,
                                          scaling: float = 2.0, include_lora: bool = True,
                                          center: bool = True,
                                          skip: Sequence[str] = ()) -> torch.Tensor:
    """L x L similarity averaged over tensor names instead of over one concatenated vector.

    sim_pt(i, j) = 1/T sum_t corr(theta_i_t, theta_j_t)

    with ``corr`` the Pearson correlation of the flattened tensors (each centred on its own
    mean) when ``center`` (default), else their cosine; two constant tensors (e.g. norm
    weights still at 1) have no correlation and get their plain cosine instead. Every tensor name counts once,
    whatever its size: in :func:`layer_parameter_similarity` the big projection matrices
    (nearly orthogonal between layers of a trained LLM) drown the small norm vectors, whose
    weights *do* vary smoothly with depth. Names containing any string of ``skip`` are left
    out (e.g. ``skip=("norm",)``). LoRA enters as in :func:`layer_parameter_similarity`.
    This is a devft_lab alternative to the paper's W, not the paper's definition.
    """
    layers = list(decoder_layers(model))
    lora = global_lora if (include_lora and global_lora) else {}
    states = [_LazyMerged(layer, lora.get(i), scaling) for i, layer in enumerate(layers)]
    names = [t for t in _common_names(states) if not any(s in t for s in skip)]
    if not names:
        raise ValueError(f"skip={tuple(skip)} leaves no tensor to compare.")
    total = torch.zeros(len(states), len(states), dtype=torch.float64)
    for t in names:
        x = torch.stack([s[t].detach().reshape(-1).double().cpu() for s in states])
        sim = cosine_from_gram(x @ x.T)
        if center:
            xc = x - x.mean(dim=1, keepdim=True)
            flat = xc.norm(dim=1) <= 1e-12 * x.norm(dim=1).clamp_min(1e-300)  # constant tensor (e.g. norms at 1)
            both_flat = flat[:, None] & flat[None, :]
            sim = torch.where(both_flat, sim, cosine_from_gram(xc @ xc.T))
        total += sim
    return (total / len(names)).float()


def residual_update_similarity(updates: Sequence[torch.Tensor]) -> torch.Tensor:
    """L x L functional affinity of layers from their residual updates at the same tokens.

    sim_f(i, j) = 1/N sum_n cos(u_i[n], u_j[n]),   u_i[n] = h_out_i[n] - h_in_i[n]

    ``updates[i]`` is an (N, d) tensor: layer i's residual update (what it writes into the
    residual stream) at N tokens, the same tokens for every layer. In the spirit of ShortGPT's
    Block Influence (Men et al. 2024, which compares one layer's input and output): here two
    layers are alike when they push the residual stream the same way. Symmetric with unit
    diagonal (a layer is its own best match, by definition also for an all-zero update); a
    zero update has similarity 0 to every other layer. Pure: no model, float64 inside.
    """
    if len(updates) == 0:
        raise ValueError("residual_update_similarity needs the updates of at least one layer.")
    shapes = {tuple(u.shape) for u in updates}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"every layer's updates must be one (N tokens, d) tensor of the same shape, got {sorted(shapes)}.")
    n = updates[0].shape[0]
    if n == 0:
        raise ValueError("residual_update_similarity got no tokens; pass at least one token's updates.")
    u = torch.stack([x.detach().double().cpu() for x in updates])  # L x N x d
    u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    sim = torch.einsum("ind,jnd->ij", u, u) / n
    sim = (sim + sim.T) / 2
    sim.fill_diagonal_(1.0)
    return sim.float()


@torch.no_grad()
def layer_function_similarity(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> torch.Tensor:
    """L x L similarity of what the layers *do*: cosine of their residual updates, per token.

    sim_f(i, j) = E_tokens [ cos(dh_i, dh_j) ],   dh_i = h_out_i - h_in_i

    (the change layer i writes into the residual stream), averaged over the non-padding
    tokens of ``batches``. A functional view beside the parameter view of DGLG; not the
    paper's definition.
    """
    n = num_layers(model)
    total = torch.zeros(n, n, dtype=torch.float64)
    count = 0
    for mask, io in layer_io(model, batches):
        m = mask.bool()
        u = torch.stack([(d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12))[m]
                         for d in (h_out - h_in for h_in, h_out in io)])  # n x tokens x d
        total += torch.einsum("itd,jtd->ij", u, u).double()
        count += int(m.sum())
    if count == 0:
        raise ValueError("layer_function_similarity got no tokens; pass at least one non-empty batch.")
    return (total / count).float()
