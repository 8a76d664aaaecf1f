"""Which dtype to compute in: measured on the device in use, not assumed.

Machines differ: bf16 matmul is far slower than fp32 on some CPUs and far faster on others
(``docs/performance.md#measurements-behind-the-code``). :func:`probe_compute_dtype` times a small GEMM in
each dtype and picks bf16 where it is clearly faster; :func:`autocast_context` then runs a
forward pass in that dtype (weights and LoRA stay in their own dtype, fp32 on CPU, so the
optimizer state is full precision).

    model.dtype: auto      -> probe (recorded in the run's meta.json)
    model.dtype: float32   -> fp32 weights, fp32 compute
    model.dtype: bfloat16  -> bf16 weights (and compute)
"""
from __future__ import annotations

import contextlib
import time
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # the one list of names
AUTO = "auto"  # model.dtype: fp32 weights, the compute dtype probed
BF16_MARGIN = 1.1  # bf16 must beat fp32 by this factor to be chosen (the probe is noisy)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", n: int = 1024,
                  repeat: int = 5, budget_s: float = 2.0) -> float:
    """Measured GEMM throughput (GFLOP/s, best of ``repeat``) of ``n x n`` matrices in ``dtype``.

    Stops early after ``budget_s`` seconds, so a dtype that is very slow on this machine costs
    little to find out.
    """
    device = torch.device(device)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # warm-up (kernel selection, page faults)
    _sync(device)
    best, t_end = float("inf"), time.perf_counter() + budget_s
    for _ in range(repeat):
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
        if time.perf_counter() > t_end:
            break
    return 2 * n**3 / best / 1e9


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu"


def probe_compute_dtype(device: str | torch.device = "cpu", n: int = 1024) -> dict[str, Any]:
    """``{"chosen": "bfloat16" | "float32", "gflops": {dtype: GFLOP/s}, "probe_s", "device"}``.

    bf16 is chosen when its measured GEMM throughput is at least :data:`BF16_MARGIN` times
    fp32's on ``device``.
    """
    device = torch.device(device)
    t0 = time.perf_counter()
    gflops = {"float32": matmul_gflops(torch.float32, device, n)}
    if bf16_supported(device):
        gflops["bfloat16"] = matmul_gflops(torch.bfloat16, device, n)
    chosen = "bfloat16" if gflops.get("bfloat16", 0.0) >= BF16_MARGIN * gflops["float32"] else "float32"
    return {"chosen": chosen, "gflops": {k: round(v, 1) for k, v in gflops.items()},
            "probe_s": round(time.perf_counter() - t0, 3), "device": str(device), "matmul_n": n}


def compute_dtype(requested: str, device: str | torch.device) -> tuple[str, dict[str, Any] | None]:
    """The dtype a run computes in and the probe behind it (``None`` when none ran).

    ``requested`` is ``model.dtype``: ``auto`` probes; any other name is taken as it is.
    """
    if requested == AUTO:
        probe = probe_compute_dtype(device)
        return probe["chosen"], probe
    if requested not in DTYPES:
        raise ValueError(f"unknown dtype {requested!r}; use auto, {', '.join(DTYPES)}.")
    return requested, None


def autocast_context(device: str | torch.device, dtype: str | torch.dtype | None):
    """``torch.autocast`` in ``dtype`` on ``device``; a no-op for fp32 or ``None``."""
    device = torch.device(device)
    dt = DTYPES[dtype] if isinstance(dtype, str) else dtype
    if dt is None or dt == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dt)
