"""Per-stage local-training time and peak memory of a random 7B-shaped LLaMA on CUDA.

    python -m devft_lab.experiments.cuda_stage_cost --out results/cuda_stage_cost.json
    python -m devft_lab.experiments.cuda_stage_cost --layers 4 --hidden 64 --device cpu   # tiny check

A ``LlamaForCausalLM`` of the LLaMA2-7B shape (:data:`devft_lab.experiments.paper_shapes.PAPER_SHAPES`)
is built directly on the device in bf16 with random weights (no download). For each stage
capacity of the shipped config (LoRA r, targets, batch size and sequence length from it)
the stage submodel is built with :func:`devft_lab.method.submodel.build_submodel` over an
even grouping, and one client's local training (:func:`devft_lab.core.train.train_local`)
runs ``--steps`` steps on random token batches, after one warm-up step.

Recorded per stage: seconds per step, tokens/s, ``torch.cuda.max_memory_allocated`` during
the timed steps (``peak_alloc_bytes``: the full model is resident too, as in the
server-side simulation) and ``client_peak_bytes`` = that peak minus the full model's tensors
the submodel does not use (what a client holding only the submodel would need; exact for
allocated memory, as those tensors do not change during training), and the ratios to the
full stage. Without a CUDA device (and ``--device cuda``) it writes ``{"ran": false, ...}``
(when ``--out`` is given) and exits 0.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from devft_lab.experiments.paper_shapes import PAPER_SHAPES, llama_config
from devft_lab.core.train import train_local
from devft_lab.method.grouping import even_groups
from devft_lab.method.schedule import stage_capacities
from devft_lab.method.submodel import build_submodel, default_lora_config
from devft_lab.runner.config import load_config


@contextmanager
def default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def random_model(config, device: str | torch.device, dtype: torch.dtype = torch.bfloat16):
    """``LlamaForCausalLM(config)`` created on ``device`` in ``dtype`` (random init, no copy in fp32)."""
    from transformers import LlamaForCausalLM  # optional/heavy: transformers

    torch.manual_seed(0)
    with default_dtype(dtype), torch.device(device):
        model = LlamaForCausalLM(config)
    return model.eval()


def random_batches(n: int, seq_len: int, vocab: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """``n`` examples of ``seq_len`` random tokens, every position a target."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, seq_len), generator=g)
    return [{"input_ids": row.tolist(), "labels": row.tolist()} for row in ids]


def _tensor_ids(module: torch.nn.Module) -> set[int]:
    return {t.data_ptr() for t in [*module.parameters(), *module.buffers()]}


def _bytes_not_in(full: torch.nn.Module, sub: torch.nn.Module) -> int:
    """Bytes of ``full``'s tensors that ``sub`` does not share."""
    used = _tensor_ids(sub)
    return sum(t.numel() * t.element_size() for t in [*full.parameters(), *full.buffers()]
               if t.data_ptr() not in used)


def stage_costs(config, capacities: Sequence[int], lora_config, *, steps: int, batch_size: int, seq_len: int,
                device: str, dtype: torch.dtype = torch.bfloat16, beta: float = 0.1) -> list[dict]:
    """One row per stage: step time, tokens/s, peak memory, parameter counts."""
    cuda = torch.device(device).type == "cuda"
    model = random_model(config, device, dtype)
    L = config.num_hidden_layers
    data = random_batches(batch_size * (steps + 1), seq_len, config.vocab_size)
    rows = []
    for k in capacities:
        sub = build_submodel(model, even_groups(L, k), beta, "dblf", lora_config)
        params = sum(p.numel() for p in sub.model.parameters())
        lora = sum(p.numel() for p in sub.model.parameters() if p.requires_grad)
        torch.manual_seed(0)
        train_local(sub.model, data, steps=1, batch_size=batch_size, lr=1e-4, seed=1)  # warm-up
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        stats = train_local(sub.model, data, steps=steps, batch_size=batch_size, lr=1e-4, seed=0)
        if cuda:
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() if cuda else None
        rows.append({
            "layers": k, "submodel_params": params, "lora_params": lora, "steps": steps,
            "step_s": secs / steps, "tokens_per_s": stats.tokens / secs, "loss": stats.loss,
            "peak_alloc_bytes": peak,
            "client_peak_bytes": None if peak is None else peak - _bytes_not_in(model, sub.model),
        })
        del sub, stats
        if cuda:
            torch.cuda.empty_cache()
    full = rows[-1]
    for r in rows:
        r["ratio_step_s"] = full["step_s"] / r["step_s"]
        r["ratio_client_peak"] = (full["client_peak_bytes"] / r["client_peak_bytes"]
                                  if r["client_peak_bytes"] else None)
    return rows


def _machine(device: str) -> str:
    gpu = torch.cuda.get_device_name(0) if torch.device(device).type == "cuda" else "no GPU used"
    return f"{platform.machine()}, {gpu}, torch {torch.__version__}, Python {platform.python_version()}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="llama2_7b", help="shipped config: stages, LoRA, batch size, seq_len")
    ap.add_argument("--shape", default="llama2_7b", choices=sorted(PAPER_SHAPES))
    ap.add_argument("--layers", type=int, help="override num_hidden_layers (stages follow the schedule rule)")
    ap.add_argument("--hidden", type=int, help="override hidden_size (intermediate = 11008/4096 of it, heads of 64 dims)")
    ap.add_argument("--vocab", type=int, help="override vocab_size")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, help="default: the config's train.batch_size")
    ap.add_argument("--seq-len", type=int, help="default: the config's train.seq_len")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", help="write the result JSON here")
    args = ap.parse_args(argv)
    command = "python -m devft_lab.experiments.cuda_stage_cost " + " ".join(argv if argv is not None else sys.argv[1:])

    def finish(payload: dict) -> int:
        payload = {"command": command.strip(), **payload}
        print(json.dumps(payload, indent=1))
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
        return 0

    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        return finish({"ran": False, "reason": "no CUDA device"})

    cfg = load_config(args.config)
    over = {}
    if args.layers:
        over["num_hidden_layers"] = args.layers
    if args.hidden:
        heads = max(1, args.hidden // 64)
        over.update(hidden_size=args.hidden, intermediate_size=int(args.hidden * 11008 / 4096),
                    num_attention_heads=heads, num_key_value_heads=heads)
    if args.vocab:
        over["vocab_size"] = args.vocab
    config = llama_config(args.shape, **over)
    L = config.num_hidden_layers
    caps = (list(cfg.devft.capacities) if cfg.devft.capacities and cfg.devft.capacities[-1] == L
            else stage_capacities(L, cfg.devft.stages, cfg.devft.growth))
    lora = default_lora_config(cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules)
    batch = args.batch_size or cfg.train.batch_size
    seq = args.seq_len or cfg.train.seq_len
    t0 = time.perf_counter()
    rows = stage_costs(config, caps, lora, steps=args.steps, batch_size=batch, seq_len=seq,
                       device=args.device, beta=cfg.devft.beta)
    return finish({
        "ran": True, "reason": f"ran on {args.device}", "machine": _machine(args.device),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "wall_s": time.perf_counter() - t0,
        "shape": {k: getattr(config, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                  "num_attention_heads", "num_key_value_heads", "vocab_size")},
        "dtype": "bfloat16", "batch_size": batch, "seq_len": seq,
        "lora": {"r": cfg.lora.r, "target_modules": list(cfg.lora.target_modules)},
        "grouping": "even", "capacities": caps, "stages": rows,
    })


if __name__ == "__main__":
    sys.exit(main())
