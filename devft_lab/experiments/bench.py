"""Runtime benchmark: ratios measured in one run on this machine (not a timed test).

    python -m devft_lab.bench [--model smollm2-135m] [--out results/bench_runtime.json]

Prints and writes, all from the same run (every timing the best of a few passes taken interleaved,
variant 1, 2, ..., 1, 2, ..., so that no variant pays alone for the process's warm-up or a
neighbour's load):

* ``matmul_gflops``: GEMM throughput per dtype (2048^2, best of a measurement before and one
  after the rest), the peak each local-step variant is compared with;
* ``compute_dtype``: what the runtime's probe (:mod:`devft_lab.core.device`) picks here;
* ``local_step``: training tokens/s of the full model's LoRA step (the runtime's loop) for
  padded fp32 batches (the old path), packed fp32, and packed in the probed dtype, each with
  ``peak_share`` = achieved FLOP/s (``(4 N + 6 N_lora)`` per real token, see
  :func:`devft_lab.fl.accounting.training_flops`) over that dtype's matmul peak; and packed in
  the probed dtype with ``train.compile`` (``packed_<dtype>_compiled``, where the machine compiles);
  all with SDPA attention, and where the attention probe (:mod:`devft_lab.core.attention`,
  ``attention_probe``) picks the written-out kernel, packed in the probed dtype with it, eager
  and compiled (``packed_<dtype>_eager``, ``packed_<dtype>_eager_compiled``: the runtime's path);
  and where the probe picks bf16, that fastest path again with the frozen weights themselves in bf16
  (``model.dtype: bfloat16``; LoRA stays fp32): ``<path>_bf16_weights``, whose residual stream and
  norms' inputs are bf16 too, other numerics than autocast over fp32 weights;
* ``step_breakdown``: where the fastest variant's step spends its time (profiled: GEMMs,
  attention, compiled fused loops, dropout's random numbers, casts, other);
* ``gemm_ceiling``: the share of the peak that the step's own linear-layer GEMMs reach when timed
  alone at the step's shapes (:func:`gemm_ceiling`, best of one measurement a pass): an upper bound
  for any local step here;
* ``eval``: multiple-choice items/s of the scorer one item a pass and packed (its defaults)
  (fp32, and in the probed dtype), with how many predictions agree and ``peak_share`` (forward
  FLOP/s, ``2 N`` per token, over the dtype's matmul peak: what bounds any further speed-up);
* ``stage_round_cost_ratio``: one client round's time at each DevFT stage over a full-model
  round (same data, same steps, the runtime's defaults);
* ``trainer_peer``: a federated round of a plain ``Trainer`` + PEFT loop (OpenFedLLM's
  pattern) vs ours, same model, data, steps, batch and sequence length, with peak RSS of both
  (:mod:`devft_lab.experiments.trainer_peer`);
* ``rss_mb_4_clients`` / ``rss_mb_100_clients``: peak RSS of a federated run (FedSA-LoRA,
  whose clients each keep their own B, every client trained once) with 4 and with 100
  clients, each in a fresh process.

Targets (issue 13): local step >= 70% of the peak of the dtype in use; eval >= 3x items/s;
our round >= 2x faster than the Trainer loop. ``targets`` in the output says which are met,
each read on the fastest path the runtime offers (which one is named beside it).
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile

from devft_lab.core.device import autocast_context, matmul_gflops as _gemm, probe_compute_dtype
from devft_lab.core.attention import choose_attention
from devft_lab.core.compiled import compile_available
from devft_lab.core.evaluate import _encode, get_template, score_multiple_choice
from devft_lab.core.layers import decoder_layers, num_layers, unwrap
from devft_lab.core.models import load_model
from devft_lab.core.train import Compute, encode_examples, train_local
from devft_lab.data import load_examples
from devft_lab.data.lab import expand_suites, load_suite
from devft_lab.experiments.trainer_peer import compare
from devft_lab.fl.accounting import peak_rss_mb, tensor_bytes, training_flops
from devft_lab.fl.client import LocalTraining
from devft_lab.fl.simulation import Simulation, SimulationSettings
from devft_lab.fl.strategies import get_strategy
from devft_lab.method.grouping import even_groups
from devft_lab.method.schedule import stage_capacities
from devft_lab.method.submodel import build_submodel, default_lora_config
from devft_lab.plans.devft import DevFTPlan
from devft_lab.runner.config import DevFTConfig
from devft_lab.runner.run import machine


def matmul_gflops(n: int = 2048, repeat: int = 10, dtype: torch.dtype = torch.float32) -> float:
    """Measured GEMM throughput (GFLOP/s) in ``dtype``, best of ``repeat``."""
    return _gemm(dtype, "cpu", n=n, repeat=repeat, budget_s=10.0)


def _examples(n: int = 64) -> list[dict]:
    """``n`` pool examples drawn across tasks (seeded), so lengths vary as in a real batch."""
    try:
        pool = load_examples("lab")
    except Exception:  # the lab pool is not built: the synthetic set has the same shape
        pool = load_examples("tiny")
    return random.Random(0).sample(pool, min(n, len(pool)))


def _client_round_s(model, enc, steps: int, batch_size: int, pad_id: int, packing: bool = True,
                    dtype: str = "float32", compile: bool = False, attention: str = "sdpa") -> tuple[float, int]:
    kw = dict(batch_size=batch_size, lr=1e-4,
              compute=Compute(packing=packing, dtype=dtype, attention=attention, compile=compile, pad_id=pad_id))
    torch.manual_seed(0)
    train_local(model, enc, steps=2 if compile else 1, seed=1, **kw)  # warm-up (and compilation)
    s = train_local(model, enc, steps=steps, seed=0, **kw)
    return s.seconds, s.tokens


def gemm_ceiling(model: torch.nn.Module, tokens: int, dtype: str, repeat: int = 5) -> dict:
    """The best share of the GEMM peak a local step of ``tokens`` tokens a micro-batch could reach.

    Times only the frozen linear layers' GEMMs of one step -- per layer and projection, the
    forward ``[T, in] @ [in, out]`` and the activation gradient ``[T, out] @ [out, in]`` --
    at the step's shapes, in ``dtype``, with nothing between them: no norms, rotary, attention,
    LoRA or casts. ``train_gflops`` of that is what perfect fusion of everything else would give;
    over the square-GEMM peak it bounds ``peak_share`` from above.
    """
    shapes: Counter = Counter()
    for layer in decoder_layers(unwrap(model)):
        for name, mod in layer.named_modules():
            w = getattr(getattr(mod, "base_layer", mod), "weight", None)
            if isinstance(mod, torch.nn.Linear) and "lora_" not in name and w is not None and w.dim() == 2:
                shapes[tuple(w.shape)] += 1
    dt = getattr(torch, dtype)
    seconds, flops = 0.0, 0.0
    for (out_f, in_f), count in shapes.items():
        x, w = torch.randn(tokens, in_f).to(dt), torch.randn(in_f, out_f).to(dt)
        g, wt = torch.randn(tokens, out_f).to(dt), torch.randn(out_f, in_f).to(dt)
        best = float("inf")
        for _ in range(repeat):
            t = time.perf_counter()
            x @ w
            g @ wt
            best = min(best, time.perf_counter() - t)
        seconds += best * count
        flops += 4.0 * tokens * in_f * out_f * count
    return {"tokens_per_micro_batch": tokens, "linear_shapes": {f"{o}x{i}": c for (o, i), c in shapes.items()},
            "gemm_s_per_micro_batch": seconds, "train_gflops": flops / seconds / 1e9}


# how step_breakdown sorts profiled ops (self time): the first pattern an op name contains
_KINDS = (("gemm", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul")),
          ("attention", ("scaled_dot_product", "aten::_softmax", "fused__softmax")),
          ("fused (compiled)", ("cpp_fused", "CompiledFxGraph")),
          ("random (dropout)", ("bernoulli", "dropout", "rand")),
          ("casts", ("aten::copy_", "aten::_to_copy")))


def step_breakdown(model, enc, batch_size: int, pad_id: int, packing: bool, dtype: str, compile: bool,
                   attention: str, steps: int = 2) -> dict[str, float]:
    """Share of one profiled local step's time per kind of work (self CPU time of the ops;
    ``other``: everything not named in :data:`_KINDS`: norms, rotary, SiLU, LoRA, optimizer ...).
    Shows what stands between the step and the GEMM peak. In a compiled step, ``fused (compiled)``
    holds every loop inductor fused (norms, rotary, SiLU, casts, and the softmax of ``eager``
    attention, whose two matmuls count as GEMMs)."""
    kw = dict(batch_size=batch_size, lr=1e-4,
              compute=Compute(packing=packing, dtype=dtype, attention=attention, compile=compile, pad_id=pad_id))
    train_local(model, enc, steps=2 if compile else 1, seed=1, **kw)  # warm-up (and compilation)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_local(model, enc, steps=steps, seed=0, **kw)
    shares: dict[str, float] = {k: 0.0 for k, _ in _KINDS}
    shares["other"] = 0.0
    for e in prof.key_averages():
        kind = next((k for k, pats in _KINDS if any(p in e.key for p in pats)), "other")
        shares[kind] += e.self_cpu_time_total
    total = sum(shares.values()) or 1.0
    return {k: round(v / total, 3) for k, v in shares.items()}


def throughput(model_name: str, dtype: str, peaks: dict[str, float], steps: int = 4, batch_size: int = 8,
               repeats: int = 3) -> dict:
    """Local-step tokens/s and peak share per variant; each stage's round time over the full model's.

    Every timing is the best of ``repeats``, taken in interleaved passes (variant 1, 2, ..., 1, 2, ...):
    on a shared 2-core machine a single pass in a fixed order let the first variants pay for
    the process's warm-up and for neighbours' load (that version measured ``train.compile`` at 1.35x
    over eager; interleaved best-of-3 measured 1.18x). ``seconds_all`` keeps every pass.
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats}: give at least 1.")
    model, tok = load_model(model_name, device="cpu")
    enc = encode_examples(tok, _examples(), "chat", 256)
    pad = tok.pad_token_id or 0
    L = num_layers(model)
    cfg = default_lora_config(r=8, alpha=16, dropout=0.05)
    caps = stage_capacities(L)
    subs = {k: build_submodel(model, even_groups(L, k), 0.1, "dblf", cfg).model for k in caps}
    full = subs[L]
    _, attn_probe = choose_attention("auto", dtype, full)
    kernel = attn_probe["chosen"]
    # (the full model, packing, dtype, compile, attention kernel); fp32 weights and sdpa unless named
    variants = {"padded_float32": (full, False, "float32", False, "sdpa"),
                "packed_float32": (full, True, "float32", False, "sdpa")}
    if dtype != "float32":
        variants[f"packed_{dtype}"] = (full, True, dtype, False, "sdpa")
    if kernel != "sdpa":
        variants[f"packed_{dtype}_{kernel}"] = (full, True, dtype, False, kernel)
    if compile_available()[0]:
        variants[f"packed_{dtype}_compiled"] = (full, True, dtype, True, "sdpa")
        if kernel != "sdpa":
            variants[f"packed_{dtype}_{kernel}_compiled"] = (full, True, dtype, True, kernel)
    if dtype == "bfloat16":  # the runtime's fastest path, the frozen weights in bf16 (model.dtype: bfloat16)
        low, _ = load_model(model_name, device="cpu", dtype=torch.bfloat16)
        path = list(variants)[-1]  # the last added: the runtime's path
        variants[f"{path}_bf16_weights"] = (build_submodel(low, even_groups(L, L), 0.1, "dblf", cfg).model,
                                            *variants[path][1:])
    # one list of timed jobs: the full model's variants, then each shallower stage in the probed dtype
    jobs = dict(variants)
    jobs.update({f"stage_{k}": (subs[k], True, dtype, False, "sdpa") for k in caps if k != L})
    seconds: dict[str, list[float]] = {name: [] for name in jobs}
    tokens: dict[str, int] = {}
    ceilings: list[dict] = []  # the GEMM-only ceiling, once a pass: it too reads lower while neighbours load the CPU
    for _ in range(repeats):
        for name, (m, packing, dt, comp, attn) in jobs.items():
            secs, tokens[name] = _client_round_s(m, enc, steps, batch_size, pad, packing, dt, comp, attn)
            seconds[name].append(secs)
        ceilings.append(gemm_ceiling(full, round(tokens["packed_float32"] / steps), dtype))
    ceiling = max(ceilings, key=lambda c: c["train_gflops"])
    ceiling["train_gflops_all"] = [c["train_gflops"] for c in ceilings]
    n_lora = sum(p.numel() for n, p in full.named_parameters() if "lora_" in n)
    emb = model.get_input_embeddings().weight.numel()
    n_matmul = sum(p.numel() for p in full.parameters()) - n_lora - emb  # decoder (+ no head)
    local = {}
    for name, (_, packing, dt, comp, _) in variants.items():
        secs, tok_n = min(seconds[name]), tokens[name]
        gflops = training_flops(n_matmul, tok_n, n_lora, lora_only=True) / secs / 1e9
        local[name] = {"tokens_per_s": tok_n / secs, "train_gflops": gflops, "seconds": secs,
                       "seconds_all": seconds[name], "tokens": tok_n, "peak_share": gflops / peaks[dt]}
    base = local["padded_float32"]["tokens_per_s"]
    for v in local.values():
        v["speedup_vs_padded_float32"] = v["tokens_per_s"] / base
    times = {k: min(seconds[f"stage_{k}"]) if k != L else local[f"packed_{dtype}"]["seconds"] for k in caps}
    fastest = max(variants, key=lambda n: local[n]["tokens_per_s"])
    m, *setting = variants[fastest]
    breakdown = {"variant": fastest, "share": step_breakdown(m, enc, batch_size, pad, *setting)}
    out = {"local_step": local, "attention_probe": attn_probe, "step_breakdown": breakdown,
           "decoder_params": n_matmul, "lora_params": n_lora, "repeats": repeats,
           "gemm_ceiling": ceiling,
           "stage_capacities": caps, "stage_round_s": [times[k] for k in caps],
           "stage_round_cost_ratio": [times[k] / times[L] for k in caps]}
    return out


def eval_speed(model_name: str, dtype: str, n_items: int = 60, repeats: int = 2) -> dict:
    """Items/s of the scorer one item a pass vs packed (its defaults), and agreement of predictions
    (each the best of ``repeats`` interleaved passes, as in :func:`throughput`)."""
    model, tok = load_model(model_name, device="cpu")
    items = [it for s in expand_suites("lab") for it in load_suite(s)]
    items = random.Random(0).sample(items, min(n_items, len(items)))
    score_multiple_choice(model, tok, items[:2], "chat")  # warm-up
    one, packed = dict(max_tokens=1, row_tokens=1), {}  # pass and row sizes
    runs = {"one_at_a_time_float32": (one, "float32"), "batched_float32": (packed, "float32")}
    if dtype != "float32":
        runs[f"batched_{dtype}"] = (packed, dtype)

    chat = get_template("chat")
    tokens = sum(len(p) + sum(len(c) - 1 for c in cs) for p, cs in (_encode(tok, chat, it) for it in items))
    out, rows = {"items": len(items), "tokens": tokens}, {}
    best = {name: float("inf") for name in runs}
    for _ in range(max(1, repeats)):
        for name, (sizes, dt) in runs.items():
            t = time.perf_counter()
            with autocast_context("cpu", dt):
                rows[name] = score_multiple_choice(model, tok, items, "chat", **sizes)
            best[name] = min(best[name], time.perf_counter() - t)
    for name in runs:
        out[name] = {"items_per_s": len(items) / best[name],
                     "acc": 100.0 * sum(r["correct"] for r in rows[name]) / len(items)}
    ref = rows["one_at_a_time_float32"]
    for name in runs:
        out[name]["speedup"] = out[name]["items_per_s"] / out["one_at_a_time_float32"]["items_per_s"]
        out[name]["same_pred"] = sum(a["pred"] == b["pred"] for a, b in zip(ref, rows[name]))
        out[name]["max_ll_diff"] = max(abs(u - v) for a, b in zip(ref, rows[name]) for u, v in zip(a["lls"], b["lls"]))
    return out


def _rss_child(model_name: str, clients: int) -> None:
    """Run in a fresh process: a FedSA-LoRA run where every client trains once; print peak RSS."""
    model, tok = load_model(model_name, device="cpu")
    enc = encode_examples(tok, _examples(8), "chat", 64)
    data = [[enc[i % len(enc)]] for i in range(clients)]
    L = num_layers(model)
    plan = DevFTPlan(model, default_lora_config(r=8, alpha=16, dropout=0.0), [stage_capacities(L)[0]], [1],
                     DevFTConfig(grouping="even"))
    settings = SimulationSettings(clients_per_round=clients, seed=0, progress=False, checkpoint_every=0,
                                  training=LocalTraining(steps=1, batch_size=1, lr=1e-4,
                                                         compute=Compute(pad_id=tok.pad_token_id or 0)),
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

    t0 = time.perf_counter()
    res = {"model": args.model, "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "command": "python -m devft_lab.bench " + " ".join(argv if argv is not None else sys.argv[1:])}
    probe = probe_compute_dtype("cpu")
    dtype = probe["chosen"]
    res["compute_dtype"] = probe
    first = {"float32": matmul_gflops(), "bfloat16": matmul_gflops(dtype=torch.bfloat16)}
    res.update(throughput(args.model, dtype, first))
    # the machine's throughput: the better of a measurement before and after training (other
    # processes on a shared machine depress either one); the shares use the final peaks
    peaks = {k: max(v, matmul_gflops(dtype=getattr(torch, k))) for k, v in first.items()}
    res["matmul_gflops"] = peaks
    for name, v in res["local_step"].items():
        v["peak_share"] = v["train_gflops"] / peaks["float32" if "float32" in name else dtype]
    res["gemm_ceiling"]["peak_share"] = res["gemm_ceiling"]["train_gflops"] / peaks[dtype]
    res["eval"] = eval_speed(args.model, dtype)
    for name, v in res["eval"].items():
        if isinstance(v, dict):  # forward FLOPs: 2 N per token (the head only where a choice is read)
            gflops = 2 * res["decoder_params"] * res["eval"]["tokens"] * v["items_per_s"] / res["eval"]["items"] / 1e9
            v["peak_share"] = gflops / peaks["float32" if name.endswith("float32") else dtype]
    res["trainer_peer"] = compare(args.model, threads=torch.get_num_threads())
    res.update(memory(args.model))
    # the targets read the fastest path the runtime offers in the dtype in use (train.compile
    # where the machine compiles); each entry: [measured, met, which variant]
    step_name = max((k for k in res["local_step"] if dtype in k), key=lambda k: res["local_step"][k]["peak_share"])
    used = res["local_step"][step_name]
    eval_name = max((k for k, v in res["eval"].items() if isinstance(v, dict)), key=lambda k: res["eval"][k]["speedup"])
    best_eval = res["eval"][eval_name]["speedup"]
    peer = res["trainer_peer"]
    round_name = max((k for k in ("ratio", "ratio_compiled") if k in peer), key=lambda k: peer[k])
    res["targets"] = {
        "local_step_peak_share>=0.70": [round(used["peak_share"], 3), used["peak_share"] >= 0.70, step_name],
        # what the step's own GEMMs reach with nothing between them: no implementation beats it
        "gemm_only_ceiling_share": [round(res["gemm_ceiling"]["peak_share"], 3), res["gemm_ceiling"]["peak_share"] >= 0.70,
                                    "gemm_ceiling"],
        "eval_speedup>=3": [round(best_eval, 2), best_eval >= 3.0, eval_name],
        "round_vs_trainer>=2": [round(peer[round_name], 2), peer[round_name] >= 2.0, round_name]}
    res["bench_s"] = time.perf_counter() - t0
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
