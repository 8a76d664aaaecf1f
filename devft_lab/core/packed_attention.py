"""Attention for a flat packed micro-batch: no padding in the linear layers.

:func:`devft_lab.core.train.pack` lays a micro-batch's examples end to end in *one* sequence of
``T`` real tokens, so every projection, norm and MLP runs on exactly the tokens that exist. Only
attention needs rows: for it the tokens are gathered into ``R`` rows of ``C`` slots (first-fit
decreasing, :func:`~devft_lab.core.packing.first_fit_decreasing`), each example attends causally
within itself, and the outputs are scattered back to the flat sequence::

    q, k, v   [1, heads, T, d]   --gather-->  [R, heads, C, d]   (rows of whole examples)
    scores    [R, kv_heads, groups * C, C]    (grouped-query heads share their key row; no repeat)
    out       [R, C, heads, d]   --scatter-->  [1, T, heads, d]

Only attention sees the padding tails of the rows (running every layer on the ``R x C`` slots would
spend work on them, ``docs/performance.md#measurements-behind-the-code``), and there the row layout is what keeps its
score matrices small (``C^2`` per row, not ``T^2``).

The layout travels as the ``packed_rows`` keyword of the model call, which transformers hands
down to every attention function; :func:`attention_kernel`'s ``rows=True`` selects
:data:`ROWS` + kernel (``rows_eager``, ``rows_sdpa``), registered here with transformers'
``AttentionInterface``. Names outside the mask interface make transformers skip building its
``T x T`` mask, which this attention does not read.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from devft_lab.core.packing import first_fit_decreasing

ROWS = "rows_"  # prefix of the registered names: rows_eager, rows_sdpa


def rows_layout(lengths: Sequence[int], capacity: int | None = None) -> dict[str, torch.Tensor]:
    """Where each of the flat sequence's tokens sits in the attention rows.

    ``lengths``: the examples' token counts, in the order they are laid end to end.
    Returns ``index`` ``[R * C]`` (the flat token in each slot; a padding slot reads token 0),
    ``slot`` ``[T]`` (each token's slot, the inverse of ``index``) and ``allowed`` ``[R, C, C]``
    (query slot may see key slot: same example and not later; a padding slot sees only itself,
    so no softmax row is empty).
    """
    lengths = [int(n) for n in lengths]
    if not lengths or min(lengths) < 1:
        raise ValueError(f"rows_layout: every example needs at least one token, got lengths {lengths}.")
    cap = max(lengths) if capacity is None else capacity
    rows = first_fit_decreasing(lengths, cap)
    starts = [0]
    for n in lengths[:-1]:
        starts.append(starts[-1] + n)
    R, C = len(rows), cap
    index = torch.zeros(R * C, dtype=torch.long)
    slot = torch.empty(sum(lengths), dtype=torch.long)
    example = torch.full((R, C), -1, dtype=torch.long)  # which example a slot holds (-1: padding)
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            k = lengths[i]
            flat = torch.arange(starts[i], starts[i] + k)
            index[r * C + at:r * C + at + k] = flat
            slot[flat] = torch.arange(r * C + at, r * C + at + k)
            example[r, at:at + k] = i
            at += k
    causal = torch.ones(C, C, dtype=torch.bool).tril()
    same = example[:, :, None] == example[:, None, :]
    pad = example < 0
    allowed = (same & causal & ~pad[:, None, :]) | (torch.eye(C, dtype=torch.bool) & pad[:, :, None])
    return {"index": index, "slot": slot, "allowed": allowed}


def rows_bias(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive mask of :func:`rows_layout`'s ``allowed``: 0 where a key is seen, the dtype's
    lowest value where not (``[R, C, C]``, in ``dtype``, the scores' dtype)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def _rows_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                    *, kernel: str, packed_rows: dict[str, torch.Tensor] | None = None,
                    sliding_window: int | None = None, softcap: float | None = None,
                    **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature (``query`` ``[1, heads, T, d]``, ``key`` and
    ``value`` ``[1, kv_heads, T, d]``, after rotary) -> ``([1, T, heads, d], None)``.

    ``kernel``: ``eager`` (matmuls, the additive ``packed_rows["bias"]``, softmax in fp32) or
    ``sdpa`` (PyTorch's fused kernel with the boolean mask). ``attention_mask`` is not read: the
    layout says who sees whom. ``sliding_window`` (Gemma-3's local layers) and ``softcap`` as
    transformers applies them.
    """
    if packed_rows is None:
        raise ValueError("rows attention needs the packed_rows layout of devft_lab.core.train.pack (the model was "
                         "called with a batch of another layout); run it under attention_kernel(..., rows=False).")
    if kwargs.get("s_aux") is not None:
        raise NotImplementedError("rows attention has no attention sinks (s_aux); train this model with packing off.")
    if dropout:
        raise NotImplementedError("rows attention has no attention dropout; set the model's attention_dropout to 0.")
    B, H, T, d = query.shape
    if B != 1:
        raise ValueError(f"rows attention takes one flat packed sequence, got a batch of {B}.")
    KV = key.shape[1]
    G = H // KV
    index, slot, allowed = packed_rows["index"], packed_rows["slot"], packed_rows["allowed"]
    R, C = allowed.shape[0], allowed.shape[-1]
    if sliding_window is not None:  # key at most sliding_window - 1 positions back, as transformers' masks
        band = torch.ones(C, C, dtype=torch.bool, device=allowed.device).triu(-(sliding_window - 1))
        allowed = allowed & band
    scale = scaling if scaling is not None else 1.0 / math.sqrt(d)
    # query head h = kv * G + g reads key head kv (transformers' repeat_kv order)
    q = query[0].index_select(1, index).view(KV, G, R, C, d).permute(2, 0, 1, 3, 4)  # [R, KV, G, C, d]
    k = key[0].index_select(1, index).view(KV, R, C, d).transpose(0, 1)  # [R, KV, C, d]
    v = value[0].index_select(1, index).view(KV, R, C, d).transpose(0, 1)
    if kernel == "sdpa" and softcap is None:
        out = F.scaled_dot_product_attention(q.reshape(R, H, C, d), k, v, attn_mask=allowed[:, None], scale=scale,
                                             enable_gqa=G > 1)
    else:  # eager: two matmuls and a softmax in fp32, as transformers' eager_attention_forward
        w = torch.matmul(q.reshape(R, KV, G * C, d), k.transpose(-1, -2)) * scale  # a key row serves its G heads
        if softcap is not None:
            w = torch.tanh(w / softcap) * softcap
        bias = packed_rows.get("bias")
        if bias is None or bias.dtype != w.dtype or sliding_window is not None:
            bias = rows_bias(allowed, w.dtype)  # (allowed with the window's band, for a sliding layer)
        w = w.view(R, KV, G, C, C) + bias[:, None, None]  # an added bias fuses into the softmax (a select did not)
        p = F.softmax(w, dim=-1, dtype=torch.float32).to(v.dtype).view(R, KV, G * C, C)
        out = torch.matmul(p, v)
    # [R, KV, G, C, d] -> the flat sequence's [T, heads, d], heads in transformers' order
    out = out.reshape(R, KV, G, C, d).permute(0, 3, 1, 2, 4).reshape(R * C, H, d).index_select(0, slot)
    return out.unsqueeze(0), None


def _register() -> None:
    from transformers import AttentionInterface  # optional/heavy: transformers

    for kernel in ("eager", "sdpa"):
        def fn(*args: Any, _kernel: str = kernel, **kwargs: Any):
            return _rows_attention(*args, kernel=_kernel, **kwargs)

        AttentionInterface.register(ROWS + kernel, fn)


_register()
