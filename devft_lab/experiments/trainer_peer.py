"""The reference point for the runtime benchmark: one federated round, two ways.

    python -m devft_lab.experiments.trainer_peer [--model smollm2-135m] [--threads 1]

* :func:`trainer_round` -- the OpenFedLLM pattern: one PEFT-wrapped model; per client, the
  global LoRA is loaded (``set_peft_model_state_dict``), a fresh Hugging Face ``Trainer`` is
  built and trained for ``steps`` steps, its LoRA read back (``get_peft_model_state_dict``);
  the server takes the sample-weighted FedAvg of the clients' LoRA state dicts (:func:`fedavg`).
* :func:`ours_round` -- the same round through devft_lab's runtime:
  :func:`devft_lab.fl.client.client_update` per client with the ``fedit`` strategy, then
  ``strategy.aggregate``; the full model (no DevFT stage), default :class:`LocalTraining`.

Both take the same model, the same examples split the same way (:func:`split_clients`),
tokenised by the same :func:`devft_lab.core.train.encode_examples` (labels ``-100`` on the
prompt), the same LoRA config, steps, batch size, learning rate and sequence length. Each
times one full round (every client's training + aggregation) after one warm-up round.

:func:`compare` runs each side in a fresh process (``--child trainer|ours``), so their peak
RSS (:func:`devft_lab.fl.accounting.peak_rss_mb`) does not mix, and returns the ratio
``trainer_round_s / ours_round_s`` (> 1: ours is faster).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Mapping, Sequence

import torch

from devft_lab.core.attention import choose_attention
from devft_lab.core.compiled import compile_available
from devft_lab.core.device import compute_dtype
from devft_lab.core.lora import get_lora_state
from devft_lab.core.models import load_model
from devft_lab.core.train import Compute, encode_examples
from devft_lab.data import load_examples
from devft_lab.fl.accounting import peak_rss_mb
from devft_lab.fl.client import LocalTraining, client_update
from devft_lab.fl.strategies import get_strategy
from devft_lab.method.submodel import default_lora_config

DEFAULTS: dict[str, Any] = dict(clients=2, per_client=16, steps=4, batch_size=8, seq_len=192, lr=1e-4,
                                r=8, alpha=16, dropout=0.05, targets=("q_proj", "v_proj"), seed=0,
                                dtype="float32")


# --------------------------------------------------------------------------- shared pieces
def lab_examples(n: int) -> list[dict]:
    """The first ``n`` examples of the lab pool (the synthetic ``tiny`` set if it is not built)."""
    try:
        ex = load_examples("lab")
    except Exception:  # the lab pool is not built: the synthetic set has the same shape
        ex = load_examples("tiny")
    if len(ex) < n:
        ex = [ex[i % len(ex)] for i in range(n)]
    return ex[:n]


def split_clients(items: Sequence, clients: int) -> list[list]:
    """Contiguous, as-even-as-possible shards (client ``k`` gets the ``k``-th slice)."""
    if clients < 1 or clients > len(items):
        raise ValueError(f"cannot split {len(items)} examples over {clients} clients")
    n, extra = divmod(len(items), clients)
    out, i = [], 0
    for k in range(clients):
        j = i + n + (k < extra)
        out.append(list(items[i:j]))
        i = j
    return out


def fedavg(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """OpenFedLLM's FedAvg: ``sum_k (n_k / n) state_k`` per key (float64 accumulation)."""
    total = float(sum(weights))
    if not states or total <= 0:
        raise ValueError("fedavg needs at least one state and a positive total weight")
    out = {}
    for key in states[0]:
        acc = sum((w / total) * s[key].detach().to(torch.float64) for s, w in zip(states, weights))
        out[key] = acc.to(states[0][key].dtype)
    return out


def _peft_model(model_name: str, *, r: int, alpha: int, dropout: float, targets: Sequence[str], seed: int):
    """``(peft model, tokenizer)``: the model wrapped once, its LoRA initialised from ``seed``."""
    from peft import get_peft_model  # optional/heavy: peft

    model, tok = load_model(model_name)
    torch.manual_seed(seed)  # PEFT draws A from the global RNG: both sides start from the same A
    return get_peft_model(model, default_lora_config(r=r, alpha=alpha, dropout=dropout, target_modules=targets)), tok


def _client_data(tok, examples: Sequence[Mapping], clients: int, seq_len: int) -> list[list[dict]]:
    return split_clients(encode_examples(tok, examples, "chat", seq_len), clients)


# --------------------------------------------------------------------------- the Trainer loop
class _Encoded(torch.utils.data.Dataset):
    """A list of encoded examples (``input_ids``, ``labels``) as a map-style dataset."""

    def __init__(self, rows: Sequence[Mapping[str, list[int]]]):
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        r = self.rows[i]
        return {"input_ids": list(r["input_ids"]), "labels": list(r["labels"])}


def _training_args(out_dir: str, *, steps: int, batch_size: int, lr: float, seed: int, dtype: str = "float32"):
    """TrainingArguments of one client round (names checked against transformers 5.x);
    ``dtype = bfloat16``: the Trainer's own bf16 mixed precision (autocast), on CPU too."""
    from transformers import TrainingArguments  # optional/heavy: transformers

    cuda = torch.cuda.is_available()
    bf16 = dtype == "bfloat16" or (cuda and torch.cuda.is_bf16_supported())
    return TrainingArguments(
        output_dir=out_dir, max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=lr,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        eval_strategy="no", save_strategy="no", logging_strategy="no", report_to=[], disable_tqdm=True,
        dataloader_num_workers=0, use_cpu=not cuda, bf16=bf16,
        remove_unused_columns=False, seed=seed,
    )


def _trainer_client(model, tok, rows, global_state, *, steps, batch_size, lr, seed, out_dir, dtype="float32") -> dict:
    from peft import get_peft_model_state_dict, set_peft_model_state_dict  # optional/heavy: peft
    from transformers import DataCollatorForSeq2Seq, PrinterCallback, Trainer  # optional/heavy: transformers

    set_peft_model_state_dict(model, global_state)
    trainer = Trainer(model=model, args=_training_args(out_dir, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                                                                dtype=dtype),
                      train_dataset=_Encoded(rows),
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
    trainer.remove_callback(PrinterCallback)  # disable_tqdm adds it: it prints the final metrics line
    trainer.train()
    return {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(model).items()}


def trainer_round(model_name: str, examples: Sequence[Mapping], *, clients: int = 2, steps: int = 4,
                  batch_size: int = 8, seq_len: int = 192, lr: float = 1e-4, r: int = 8, alpha: int = 16,
                  dropout: float = 0.05, targets: Sequence[str] = ("q_proj", "v_proj"), seed: int = 0,
                  warmup: int = 1, dtype: str = "float32", repeats: int = 1) -> dict:
    """One federated round in the OpenFedLLM pattern (a ``Trainer`` per client per round).

    Returns ``round_s`` (the best of ``repeats`` timed rounds, after ``warmup`` untimed ones;
    ``rounds_s`` lists them all), ``warmup_s``,
    ``state`` (the FedAvg global LoRA after the timed round), ``init_state`` and ``client_states``.
    """
    from peft import get_peft_model_state_dict  # optional/heavy: peft

    model, tok = _peft_model(model_name, r=r, alpha=alpha, dropout=dropout, targets=targets, seed=seed)
    data = _client_data(tok, examples, clients, seq_len)
    weights = [len(d) for d in data]
    init = {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(model).items()}
    glob, times = init, []
    with tempfile.TemporaryDirectory() as out_dir:
        for rnd in range(warmup + repeats):
            t0 = time.perf_counter()
            states = [_trainer_client(model, tok, rows, glob, steps=steps, batch_size=batch_size, lr=lr,
                                      seed=seed * 1000 + rnd * 100 + k, out_dir=out_dir, dtype=dtype)
                      for k, rows in enumerate(data)]
            glob = fedavg(states, weights)
            times.append(time.perf_counter() - t0)
    return {"round_s": min(times[warmup:]), "rounds_s": times[warmup:], "warmup_s": sum(times[:warmup]),
            "state": glob, "init_state": init, "client_states": states}


# --------------------------------------------------------------------------- devft_lab's runtime
def ours_round(model_name: str, examples: Sequence[Mapping], *, clients: int = 2, steps: int = 4,
               batch_size: int = 8, seq_len: int = 192, lr: float = 1e-4, r: int = 8, alpha: int = 16,
               dropout: float = 0.05, targets: Sequence[str] = ("q_proj", "v_proj"), seed: int = 0,
               warmup: int = 1, dtype: str = "float32", compile: bool = False, repeats: int = 1,
               attention: str = "auto") -> dict:
    """The same round through :func:`devft_lab.fl.client.client_update` + ``fedit`` aggregation.

    Same returns as :func:`trainer_round`, plus ``attention`` (the kernel used). ``compile``: the
    decoder layers compiled while training (``train.compile``; the compile time falls in the warm-up
    round, ``warmup_s``). ``attention``: ``train.attention`` (``auto``: the runtime's probe decides).
    """
    model, tok = _peft_model(model_name, r=r, alpha=alpha, dropout=dropout, targets=targets, seed=seed)
    data = _client_data(tok, examples, clients, seq_len)
    weights = [len(d) for d in data]
    strategy = get_strategy("fedit")
    kernel, _ = choose_attention(attention, dtype, model)
    compute = Compute(dtype=dtype, attention=kernel, compile=compile, pad_id=tok.pad_token_id or 0)  # packing: default
    training = LocalTraining(steps=steps, batch_size=batch_size, lr=lr, compute=compute)
    init = strategy.init_global(get_lora_state(model))
    glob, times = init, []
    for rnd in range(warmup + repeats):
        t0 = time.perf_counter()
        results = [client_update(model, strategy.client_init(glob), rows, strategy, training,
                                 client=k, round_idx=rnd, seed=seed) for k, rows in enumerate(data)]
        glob = strategy.aggregate(glob, [res.upload for res in results], weights)
        times.append(time.perf_counter() - t0)
    return {"round_s": min(times[warmup:]), "rounds_s": times[warmup:], "warmup_s": sum(times[:warmup]),
            "state": glob, "init_state": init, "client_states": [res.upload for res in results],
            "attention": kernel}


# --------------------------------------------------------------------------- processes
SIDES = {"trainer": trainer_round, "ours": ours_round}


def _child(side: str, model_name: str, settings: Mapping[str, Any], threads: int | None) -> dict:
    """Run one side in this (fresh) process; the JSON line it prints."""
    if threads:
        torch.set_num_threads(threads)
    s = dict(settings)
    examples = lab_examples(s["clients"] * s.pop("per_client"))
    res = SIDES[side](model_name, examples, **s)
    return {"side": side, "round_s": res["round_s"], "rounds_s": res["rounds_s"], "warmup_s": res["warmup_s"],
            "peak_rss_mb": peak_rss_mb(), "threads": torch.get_num_threads(), "attention": res.get("attention", "sdpa")}


def compare(model_name: str = "smollm2-135m", *, threads: int | None = 1, repeats: int = 1, passes: int = 2,
            **settings) -> dict:
    """Both sides, each in a fresh process: round times, their ratio and peak RSS.

    ``ratio = trainer_round_s / ours_round_s`` (the target: >= 2), both in ``dtype``;
    ``dtype = auto`` (the default): the compute dtype devft_lab's probe picks on this machine,
    and then the Trainer is also timed in its own default (fp32 on CPU) as
    ``trainer_default_round_s`` / ``ratio_vs_trainer_default``. Where the machine can compile,
    ours is also timed with ``train.compile`` as ``ours_compiled_round_s`` (``ours_compiled_warmup_s``
    holds its compile time) and ``ratio_compiled = trainer_round_s / ours_compiled_round_s``. ``settings`` override
    :data:`DEFAULTS` (``clients``, ``per_client``, ``steps``, ``batch_size``, ``seq_len``,
    ``lr``, ``r``, ``alpha``, ``dropout``, ``targets``, ``seed``, ``dtype``).

    The sides' processes run in turn, ``passes`` times over (trainer, ours, ..., trainer, ours, ...),
    each timing ``repeats`` rounds after a warm-up round: on a shared machine a neighbour's load
    then falls on every side rather than on whichever ran at the time (one pass of each, two rounds
    apiece, gave ratios from 1.8x to 2.4x within two hours on this 2-core CPU). ``<side>_round_s`` is the
    best of all its timed rounds (``*_rounds_s``: all, pass by pass), ``*_warmup_s`` the first
    pass's warm-up (with ``train.compile``: the compile time, before inductor's on-disk cache helps),
    ``*_peak_rss_mb`` the highest of its processes.
    """
    if passes < 1 or repeats < 1:
        raise ValueError(f"compare(): passes={passes}, repeats={repeats}; give at least 1 of each.")

    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"compare(): unknown settings {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    s = {**DEFAULTS, "dtype": "auto", **settings, "targets": list(settings.get("targets", DEFAULTS["targets"]))}
    requested = s["dtype"]
    s["dtype"], probe = compute_dtype(requested, "cuda" if torch.cuda.is_available() else "cpu")
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))

    runs = [("trainer", "trainer", s["dtype"], {}), ("ours", "ours", s["dtype"], {})]
    if compile_available()[0]:
        runs.append(("ours_compiled", "ours", s["dtype"], {"compile": True}))
    if requested == "auto" and s["dtype"] != "float32" and not torch.cuda.is_available():
        runs.append(("trainer_default", "trainer", "float32", {}))
    out: dict[str, Any] = {}
    for _ in range(passes):
        for label, side, dtype, extra in runs:
            cmd = [sys.executable, "-m", "devft_lab.experiments.trainer_peer", "--child", side, "--model", model_name,
                   "--settings", json.dumps({**s, "dtype": dtype, "repeats": repeats, **extra})]
            res = subprocess.run(cmd + (["--threads", str(threads)] if threads else []), capture_output=True,
                                 text=True, env=env)
            if res.returncode != 0:
                raise RuntimeError(f"trainer_peer --child {side} failed:\n{res.stderr[-4000:]}")
            child = json.loads(res.stdout.strip().splitlines()[-1])
            out.setdefault(f"{label}_rounds_s", []).extend(child["rounds_s"])
            out.setdefault(f"{label}_warmup_s", child["warmup_s"])
            out[f"{label}_peak_rss_mb"] = max(out.get(f"{label}_peak_rss_mb", 0.0), child["peak_rss_mb"])
            out[f"{label}_round_s"] = min(out[f"{label}_rounds_s"])
            out[f"{label}_attention"] = child["attention"]
            out["threads"] = child["threads"]
    out["ratio"] = out["trainer_round_s"] / out["ours_round_s"]
    if "ours_compiled_round_s" in out:
        out["ratio_compiled"] = out["trainer_round_s"] / out["ours_compiled_round_s"]
    if "trainer_default_round_s" in out:
        out["ratio_vs_trainer_default"] = out["trainer_default_round_s"] / out["ours_round_s"]
    out.update(model=model_name, device="cuda" if torch.cuda.is_available() else "cpu", dtype_probe=probe,
               passes=passes, repeats=repeats, **s)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devft_lab.experiments.trainer_peer",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--threads", type=int, default=1, help="torch threads per side (0: torch's default)")
    p.add_argument("--child", choices=sorted(SIDES), default=None, help=argparse.SUPPRESS)
    p.add_argument("--settings", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        settings = {**DEFAULTS, **json.loads(args.settings or "{}")}
        print(json.dumps(_child(args.child, args.model, settings, args.threads or None)))
        return 0
    print(json.dumps(compare(args.model, threads=args.threads or None), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
