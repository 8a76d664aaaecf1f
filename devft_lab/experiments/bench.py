"""Runtime benchmark: ratios measured in one run on this machine (not a timed test).

    python -m devft_lab.experiments.bench [--model smollm2-135m] [--out results/bench_runtime.json]

Prints and writes:

* ``matmul_gflops``: fp32 matmul throughput of this machine (2048^2 GEMMs, best of a
  measurement before and one after the training measurement);
* ``tokens_per_s``: local training throughput of the full model (LoRA, the runtime's loop),
  and ``matmul_ratio`` = achieved training FLOP/s (``(4 N + 6 N_lora)`` per token, see
  :func:`devft_lab.fl.accounting.training_flops`) over the matmul FLOP/s;
* ``stage_round_cost_ratio``: one client round's time at each DevFT stage over a
  full-model round (same data, same steps);
* ``rss_mb_4_clients`` / ``rss_mb_100_clients``: peak RSS of a federated run (FedSA-LoRA,
  whose clients each keep their own B, every client trained once) with 4 and with 100
  clients, each in a fresh process; ``adapter_mb`` the size of one client's kept state.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch


def matmul_gflops(n: int = 2048, repeat: int = 10) -> float:
    """Measured fp32 GEMM throughput (GFLOP/s), best of ``repeat``."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def _examples(n: int = 64) -> list[dict]:
    from devft_lab.data import load_examples

    try:
        return load_examples("lab")[:n]
    except Exception:  # the lab pool is not built: the synthetic set has the same shape
        return load_examples("tiny")[:n]


def _client_round_s(model, enc, steps: int, batch_size: int, pad_id: int) -> tuple[float, int]:
    from devft_lab.core.train import train_local

    torch.manual_seed(0)
    train_local(model, enc, steps=1, batch_size=batch_size, lr=1e-4, seed=1, pad_id=pad_id)  # warm-up
    s = train_local(model, enc, steps=steps, batch_size=batch_size, lr=1e-4, seed=0, pad_id=pad_id)
    return s.seconds, s.tokens


def throughput(model_name: str, steps: int = 4, batch_size: int = 8) -> dict:
    """Training tokens/s of the full model and each stage's round time over the full model's."""
    from devft_lab.fl.accounting import training_flops
    from devft_lab.core.layers import num_layers
    from devft_lab.method.grouping import even_groups
    from devft_lab.method.schedule import stage_capacities
    from devft_lab.method.submodel import build_submodel, default_lora_config
    from devft_lab.core.models import load_model
    from devft_lab.core.train import encode_examples

    model, tok = load_model(model_name, device="cpu")
    enc = encode_examples(tok, _examples(), "chat", 256)
    L = num_layers(model)
    cfg = default_lora_config(r=8, alpha=16, dropout=0.05)
    caps = stage_capacities(L)
    times, out = {}, {}
    for k in caps:
        sub = build_submodel(model, even_groups(L, k), 0.1, "dblf", cfg)
        secs, tokens = _client_round_s(sub.model, enc, steps, batch_size, tok.pad_token_id or 0)
        times[k] = secs
        if k == L:
            n_lora = sum(p.numel() for n, p in sub.model.named_parameters() if "lora_" in n)
            emb = model.get_input_embeddings().weight.numel()
            n_matmul = sum(p.numel() for p in sub.model.parameters()) - n_lora - emb  # decoder (+ no head)
            flops = training_flops(n_matmul, tokens, n_lora, lora_only=True)
            out.update(tokens_per_s=tokens / secs, train_gflops=flops / secs / 1e9, tokens_measured=tokens,
                       decoder_params=n_matmul, lora_params=n_lora)
        del sub
    out["stage_capacities"] = caps
    out["stage_round_s"] = [times[k] for k in caps]
    out["stage_round_cost_ratio"] = [times[k] / times[L] for k in caps]
    return out


def _rss_child(model_name: str, clients: int) -> None:
    """Run in a fresh process: a FedSA-LoRA run where every client trains once; print peak RSS."""
    import tempfile

    from devft_lab.fl.accounting import peak_rss_mb, tensor_bytes
    from devft_lab.fl.client import LocalTraining
    from devft_lab.fl.simulation import Simulation, SimulationSettings
    from devft_lab.fl.strategies import get_strategy
    from devft_lab.method.schedule import stage_capacities
    from devft_lab.plans.devft import DevFTPlan
    from devft_lab.core.layers import num_layers
    from devft_lab.method.submodel import default_lora_config
    from devft_lab.core.models import load_model
    from devft_lab.core.train import encode_examples

    model, tok = load_model(model_name, device="cpu")
    enc = encode_examples(tok, _examples(8), "chat", 64)
    data = [[enc[i % len(enc)]] for i in range(clients)]
    L = num_layers(model)
    plan = DevFTPlan(model, default_lora_config(r=8, alpha=16, dropout=0.0), [stage_capacities(L)[0]], [1],
                     grouping="even")
    settings = SimulationSettings(clients_per_round=clients, seed=0, progress=False, checkpoint_every=0,
                                  training=LocalTraining(steps=1, batch_size=1, lr=1e-4, pad_id=tok.pad_token_id or 0),
                                  lr=1e-4)
    with tempfile.TemporaryDirectory() as d:
        sim = Simulation(plan, get_strategy("fedsa-lora"), data, settings, d)
        sim.run()
        kept = sum(tensor_bytes(s) for s in sim.state.kept.values())
        print(json.dumps({"rss_mb": peak_rss_mb(), "kept_mb": kept / 2**20,
                          "adapter_mb": tensor_bytes(sim.state.global_state) / 2**20,
                          "kept_per_client_mb": kept / max(len(sim.state.kept), 1) / 2**20}))


def memory(model_name: str) -> dict:
    out = {}
    for n in (4, 100):
        res = subprocess.run([sys.executable, "-m", "devft_lab.experiments.bench", "--rss-child", str(n), "--model", model_name],
                             capture_output=True, text=True, check=True)
        child = json.loads(res.stdout.strip().splitlines()[-1])
        out[f"rss_mb_{n}_clients"] = child["rss_mb"]
        out[f"kept_mb_{n}_clients"] = child["kept_mb"]
        out["adapter_mb"] = child["adapter_mb"]
        out["kept_per_client_mb"] = child["kept_per_client_mb"]
    out["rss_growth_mb_per_extra_client"] = (out["rss_mb_100_clients"] - out["rss_mb_4_clients"]) / 96
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devft_lab.experiments.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--out", default=None, help="write the JSON here (e.g. results/bench_runtime.json)")
    p.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rss_child is not None:
        _rss_child(args.model, args.rss_child)
        return 0
    from devft_lab.runner.run import machine

    t0 = time.perf_counter()
    res = {"model": args.model, "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "command": "python -m devft_lab.experiments.bench " + " ".join(argv if argv is not None else sys.argv[1:])}
    first = matmul_gflops()
    res.update(throughput(args.model))
    # the machine's throughput: the better of a measurement before and after training (other
    # processes on a shared machine depress either one)
    res["matmul_gflops"] = max(first, matmul_gflops())
    res["matmul_ratio"] = res["train_gflops"] / res["matmul_gflops"]
    res.update(memory(args.model))
    res["bench_s"] = time.perf_counter() - t0
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
