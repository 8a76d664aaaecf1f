"""Which attention kernel the training step runs: measured on the device in use, not assumed.

transformers offers ``sdpa`` (``torch.nn.functional.scaled_dot_product_attention``) and
``eager`` (two matmuls and a softmax in fp32, written out); packed training runs the row-wise
form of either (:mod:`devft_lab.core.packed_attention`: ``rows_sdpa``, ``rows_eager``). Which is
faster depends on the CPU and the dtype (``python -m devft_lab.bench``: ``attention_probe``,
``step_breakdown``; measurements in ``docs/performance.md#measurements-behind-the-code``). So
:func:`probe_attention` times both at the model's head shape in the compute dtype, and the
training step uses the faster; evaluation keeps ``sdpa`` (its
tree-shaped boolean masks, :mod:`devft_lab.core.evaluate`, are what SDPA takes).

    train.attention: auto   -> probe (the choice recorded in the run's meta.json)
    train.attention: sdpa   -> PyTorch's fused kernel
    train.attention: eager  -> the written-out maths

Same maths either way: in fp32 the losses agree to 1e-5 (relative) and the gradients to 1e-6; in bf16 they differ by rounding, as
bf16 and fp32 do (``tests/test_packed_attention.py``).
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator

import torch

from devft_lab.core.device import DTYPES
from devft_lab.core.packed_attention import ROWS, _rows_attention, rows_bias, rows_layout

KERNELS = ("sdpa", "eager")
EAGER_MARGIN = 1.1  # eager must beat sdpa by this factor to be chosen (the probe is noisy)


def _configs(model: torch.nn.Module) -> list[Any]:
    """Every distinct config object in ``model``'s module tree: a fused submodel's layers hold
    their own, so setting the top model's config alone would not reach them."""
    seen: dict[int, Any] = {}
    for mod in model.modules():
        cfg = getattr(mod, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            seen.setdefault(id(cfg), cfg)
    return list(seen.values())


def attention_of(model: torch.nn.Module) -> set[str]:
    """The attention kernels ``model``'s configs name (one, unless something set them apart)."""
    return {c._attn_implementation for c in _configs(model)}


@contextlib.contextmanager
def attention_kernel(model: torch.nn.Module, kernel: str | None, rows: bool = False) -> Iterator[None]:
    """Run the body with every config in ``model`` set to ``kernel``; restored afterwards.

    ``rows=True``: the row-wise form of the kernel for :func:`~devft_lab.core.train.pack`'s flat
    micro-batches (``rows_eager`` / ``rows_sdpa``, :mod:`devft_lab.core.packed_attention`).
    ``kernel=None`` keeps each config's own kernel (with ``rows``, its row-wise form where it is
    ``eager`` or ``sdpa``; another, e.g. flash attention, reads the packed positions itself).
    A module without transformers configs is left as it is.
    """
    if kernel is not None and kernel not in KERNELS:
        raise ValueError(f"unknown attention kernel {kernel!r}; use one of {', '.join(KERNELS)}.")
    if kernel is None and not rows:
        yield
        return
    configs = _configs(model)
    before = [c._attn_implementation for c in configs]
    for c in configs:
        k = kernel or c._attn_implementation
        c._attn_implementation = ROWS + k if rows and k in KERNELS else k
    try:
        yield
    finally:
        for c, k in zip(configs, before):
            c._attn_implementation = k


def pick_kernel(seconds: dict[str, float]) -> str:
    """``eager`` where its time is at most the SDPA time over :data:`EAGER_MARGIN`, else ``sdpa``."""
    return "eager" if seconds["eager"] * EAGER_MARGIN <= seconds["sdpa"] else "sdpa"


def probe_attention(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", heads: int = 9,
                    head_dim: int = 64, seq: int = 160, rows: int = 4, repeat: int = 3,
                    kv_heads: int | None = None) -> dict[str, Any]:
    """``{"chosen": "sdpa" | "eager", "ms": {kernel: ms}, ...}``: forward and backward of one
    layer's row-wise attention (:mod:`devft_lab.core.packed_attention`, what packed training
    runs) on a flat micro-batch of ``rows`` rows of ``seq`` tokens, two examples a row, in
    ``dtype`` as autocast runs it; best of ``repeat`` interleaved timings. ``eager`` is chosen
    when it is at least :data:`EAGER_MARGIN` times faster."""
    device = torch.device(device)
    t0 = time.perf_counter()
    kv_heads = kv_heads or heads
    half = seq // 2
    layout = {k: v.to(device) for k, v in rows_layout([half, seq - half] * rows, seq).items()}
    layout["bias"] = rows_bias(layout["allowed"], dtype)
    gen = torch.Generator(device="cpu").manual_seed(0)
    qkv = [torch.randn(1, h, rows * seq, head_dim, generator=gen).to(device=device, dtype=dtype).requires_grad_()
           for h in (heads, kv_heads, kv_heads)]
    best = {k: float("inf") for k in KERNELS}
    for i in range(repeat + 1):  # pass 0 warms up and is not counted
        for k in KERNELS:
            t = time.perf_counter()
            out, _ = _rows_attention(None, *qkv, None, head_dim ** -0.5, kernel=k, packed_rows=layout)
            out.float().sum().backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                best[k] = min(best[k], time.perf_counter() - t)
    chosen = pick_kernel(best)
    return {"chosen": chosen, "ms": {k: round(v * 1e3, 2) for k, v in best.items()}, "dtype": str(dtype).split(".")[-1],
            "shape": [rows, heads, seq, head_dim], "kv_heads": kv_heads, "probe_s": round(time.perf_counter() - t0, 3),
            "device": str(device)}


def choose_attention(requested: str, dtype: str, model: torch.nn.Module,
                     device: str | torch.device = "cpu") -> tuple[str, dict[str, Any] | None]:
    """The kernel a run trains with and the probe behind it (``None`` when none ran).

    ``requested`` is ``train.attention``: ``auto`` probes at ``model``'s head shape in ``dtype``
    (the run's compute dtype); ``sdpa`` / ``eager`` are taken as they are.
    """
    if requested == "auto":
        shape = attention_shape(model)
        if shape is None:  # no transformers config: attention_kernel leaves such a module alone
            return "sdpa", None
        heads, head_dim, kv_heads = shape
        probe = probe_attention(DTYPES[dtype], device, heads, head_dim, kv_heads=kv_heads)
        return probe["chosen"], probe
    if requested not in KERNELS:
        raise ValueError(f"unknown attention kernel {requested!r}; use auto, {', '.join(KERNELS)}.")
    return requested, None


def attention_shape(model: torch.nn.Module) -> tuple[int, int, int] | None:
    """(query heads, head dim, key/value heads) of a transformers model's first config that names
    them; ``None`` for a module without one."""
    for c in _configs(model):
        heads = getattr(c, "num_attention_heads", None)
        if heads:
            kv = getattr(c, "num_key_value_heads", None) or heads
            return int(heads), int(getattr(c, "head_dim", None) or c.hidden_size // heads), int(kv)
    return None
