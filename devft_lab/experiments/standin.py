"""How close must a stand-in be? Stand-ins of L_s layers, trained, copied back, against the full model.

    python -m devft_lab.experiments.standin --model smollm2-135m --seeds 42 43 44 --out results/standin_smollm2
        [--sizes 4 8 15 22 26 29] [--kinds dblf drop pairs] [--steps 6] [--max-points K] [--dry-run]

Central, no federation: one DevFT stage run by hand, so that only the *transfer* is measured (no
client sampling, no aggregation, no non-IID drift). Each point (a stand-in kind, a size L_s, a seed):

1. from the untrained model (LoRA r, alpha, dropout and targets of the lab config
   ``devft_lab/runner/configs/lab.yaml``; B = 0), build the stand-in exactly as
   :class:`devft_lab.plans.devft.DevFTPlan` builds a stage (``begin`` with the given groups), and
   measure its **probe gap**: the stand-in's mean response loss minus the full model's, on a fixed
   probe set (``devft.probe_examples`` of the held-out examples, :func:`devft_lab.runner.run.probe_set`);
2. train the stand-in's LoRA for the same budget at every point: ``--steps`` AdamW steps of the lab's
   batch size at the lab's peak learning rate (constant), packed batches, the lab's clipping; the
   batches come from the seed alone (:func:`devft_lab.core.train.train_local`), so every point of a
   seed sees the same examples in the same order, and the LoRA dropout from ``torch.manual_seed(seed)``;
3. copy back (the paper's ``copy`` rule, ``DevFTPlan.end``) and measure the full model: its mean
   response loss on ``--holdout`` held-out pool examples and its accuracy (and ``answer_nll``) on a
   fixed subset of the in-distribution suite (``--max-per-task`` items per task: 25 gives 100 items
   of the 420, chosen with seed 0, the same items for every point, to keep a point affordable on a CPU).

The held-out examples are drawn from the pool with seed 0 as the runner draws ``eval.holdout`` and are
never trained on; the probe set is 16 of them, evenly spaced. Both are the same for every seed, so a
seed changes only the LoRA A initialisation, the batches and the dropout. Training runs in the compute
dtype and attention kernel the device probes choose (recorded in the first point and reused by every
later invocation) and, as the lab does, with the decoder layer compiled (speed only; the first trained
point of a process pays the compilation, ``--no-compile`` trains eager).

Stand-in kinds at size L_s (L layers):

``dblf``   L_s contiguous runs of nearly equal size, spread evenly through the stack (run g starts at
           layer round(g L / L_s), :func:`balanced_groups`), each fused by DBLF (beta 0.1, anchor first).
           Balanced runs rather than DGLG's spectral groups: on SmolLM2 spectral clustering puts most
           layers into one group at small L_s (results/submodels_smollm2.md), so size and grouping would
           move together; with balanced runs ``dblf`` and ``drop`` share their groups and anchors and
           differ only in the fusion. (The library's EVEN grouping puts all the longer runs first; spread
           runs keep the kept layers of ``drop`` evenly spaced.) ``dglg`` (below) measures the paper's own
           groups.
``drop``   the same runs, each represented by its anchor alone (R-ONE: weight 1 on the first layer of
           the run): L_s evenly spaced kept layers; transfer copies a kept layer's LoRA into every member
           of its run.
``pairs``  L - L_s pairs of adjacent layers in the middle of the stack fused by DBLF, every other
           layer a singleton (sizes >= L/2 only; other sizes are left out of the grid).
``dglg``   (not in the default grid) DGLG's spectral groups on the untrained model, fused by DBLF,
           exactly ``DevFTPlan.groups_for``.

Beside each size: the full model trained with the **same client FLOPs**, ``round(steps x F(L_s) / F(L))``
steps (F = :func:`devft_lab.experiments.compute_matched.stage_flops_per_token`, the federated ledger's
FLOPs per token; rounded half up, at least one step: :func:`~devft_lab.experiments.compute_matched.matched_rounds`).
A step trains on the same batch of tokens at every point, so a fractional budget cannot be spent
exactly: the rounded step count is trained and the FLOPs actually spent are recorded beside it. This is
the central analogue of FedIT given DevFT's compute. Two references: the full model trained the whole
``--steps`` (the gap-0 end of every curve) and the untrained model.

Resumable: one JSON per point under ``OUT/points/`` (``<kind>-<size>-s<seed>.json``,
``full-steps<k>-s<seed>.json``, ``untrained.json``), skipped when present (a file made with other
settings stops the run: use another ``--out``); ``--max-points K`` makes at most K new point files per
invocation (0: only the report). Every invocation rewrites the report ``OUT.json``, ``OUT.md`` and
``OUT.png`` from the point files present: per kind, the full model's held-out loss and accuracy (mean
+- sd over seeds) against the probe gap and against L_s, with the equal-FLOPs and untrained lines, the
rank correlation of the probe gap with the held-out loss, and a link to a person's reading,
``results/readings/<OUT name>.md``, when one is there (never written by the report).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from devft_lab.experiments.compute_matched import mean_sd  # seed mean and sample sd, one owner
from devft_lab.core.device import autocast_context
from devft_lab.core.evaluate import score_multiple_choice
from devft_lab.core.layers import num_layers
from devft_lab.core.lora import get_lora_state, to_layers
from devft_lab.core.models import load_model
from devft_lab.core.tables import markdown_table
from devft_lab.core.train import Compute, collate, encode_examples, mean_response_loss, train_local
from devft_lab.data.lab import load_pool, load_suite
from devft_lab.experiments.compute_matched import matched_rounds, model_shape, stage_flops_per_token
from devft_lab.plans.devft import DevFTPlan
from devft_lab.plans.hooks import default_hooks
from devft_lab.runner.config import DevFTConfig, load_config
from devft_lab.runner.run import item_row, lora_config_of, machine, probe_set, resolve_compute
from devft_lab.stats import summarise

KINDS = ("dblf", "drop", "pairs", "dglg")
DEFAULT_KINDS = ("dblf", "drop", "pairs")
DEFAULT_SIZES = (4, 8, 15, 22, 26, 29)
FUSION_OF = {"dblf": "dblf", "drop": "r-one", "pairs": "dblf", "dglg": "dblf"}
CONFIG = "lab"  # the lab config: LoRA, batch size, peak lr, clipping, sequence length, template
SPLIT_SEED = 0  # the held-out examples and the accuracy items are the same for every seed


# --------------------------------------------------------------------------- the stand-ins
def balanced_groups(num_layers: int, size: int) -> list[list[int]]:
    """``size`` contiguous runs of ``floor(L/size)`` or ``ceil(L/size)`` layers, the longer ones spread
    through the stack: run g starts at layer ``floor(g L / size + 1/2)``."""
    if not 1 <= size <= num_layers:
        raise ValueError(f"stand-in size {size} is outside 1..{num_layers} layers.")
    starts = [math.floor(g * num_layers / size + 0.5) for g in range(size)] + [num_layers]
    return [list(range(a, b)) for a, b in zip(starts, starts[1:])]


def pair_groups(num_layers: int, size: int) -> list[list[int]]:
    """``L - size`` adjacent pairs in the middle of the stack, every other layer a singleton.

    The pairs cover layers ``c .. c + 2k - 1`` with ``k = L - size`` and ``c = (L - 2k) // 2``;
    needs ``L / 2 <= size <= L``."""
    k = num_layers - size
    if not 0 <= k <= num_layers // 2:
        raise ValueError(f"pairs: size {size} needs {k} pairs of {num_layers} layers; give a size between "
                         f"{num_layers - num_layers // 2} and {num_layers} (L/2 or more).")
    c = (num_layers - 2 * k) // 2
    return ([[i] for i in range(c)] + [[c + 2 * j, c + 2 * j + 1] for j in range(k)]
            + [[i] for i in range(c + 2 * k, num_layers)])


def stand_in_groups(kind: str, num_layers: int, size: int) -> list[list[int]] | None:
    """The groups of a stand-in of ``size`` layers (None for ``dglg``: the plan's DGLG decides)."""
    if kind not in KINDS:
        raise ValueError(f"stand-in kind must be one of {', '.join(KINDS)}, got {kind!r}.")
    if not 1 <= size <= num_layers:
        raise ValueError(f"stand-in size {size} is outside 1..{num_layers} layers.")
    if kind == "pairs":
        return pair_groups(num_layers, size)
    if kind == "dglg":
        return None
    return balanced_groups(num_layers, size)


def matched_steps(counts, size: int, steps: int) -> int:
    """Full-model steps of the same client FLOPs as ``steps`` steps of a ``size``-layer stand-in:
    ``max(1, floor(steps x F(size) / F(L) + 0.5))`` (:func:`compute_matched.matched_rounds`)."""
    return matched_rounds(counts, [size], [steps])


def flops_per_token(counts, size: int) -> float:
    """F(size): client training FLOPs per token of a ``size``-layer stage (the ledger's count)."""
    return stage_flops_per_token(counts, size)


# --------------------------------------------------------------------------- the lab of one run
@dataclass
class Lab:
    """What every point of a run shares: the model, the data and the training settings."""

    model: torch.nn.Module
    tokenizer: Any
    lora_config: Any
    train: list[dict]  # encoded training examples (the pool minus the held-out ones)
    heldout: list[dict]  # collated batches of the held-out examples
    probe: list[dict]  # collated batches of the probe set
    items: dict[str, list[dict]]  # the accuracy items by suite (empty: accuracy not measured)
    batch_size: int = 8
    lr: float = 1e-3
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    beta: float = 0.1
    dtype: str = "float32"
    attention: str | None = None
    compile: bool = False
    template: str = "chat"
    pad_id: int = 0
    settings: dict[str, Any] = field(default_factory=dict)  # what a point file must match to be reused

    @property
    def num_layers(self) -> int:
        return num_layers(self.model)


def heldout_split(n: int, holdout: int, seed: int = SPLIT_SEED) -> tuple[list[int], list[int]]:
    """(held-out indices, training indices) of ``n`` pool examples, as the runner splits
    ``eval.holdout`` (:func:`devft_lab.runner.run.build`), both sorted."""
    if not 0 < holdout < n:
        raise ValueError(f"--holdout {holdout} must be between 1 and {n - 1} (the pool has {n} examples).")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[:holdout]), sorted(order[holdout:])


def make_lab(model_name: str, holdout: int = 48, max_per_task: int | None = 25, compile: bool | None = None,
             recorded: dict[str, Any] | None = None, examples: list[dict] | None = None,
             suites: Sequence[str] = ("indist",), overrides: Sequence[str] = ()) -> Lab:
    """Load ``model_name`` and the lab's data and settings (``examples``: another pool, e.g. tests';
    ``suites=()``: no accuracy). ``recorded``: the compute settings of existing points, reused."""
    cfg = load_config(CONFIG, [f"model.name={model_name}", "device=cpu", *overrides])
    t = cfg.train
    model, tok = load_model(model_name, device="cpu")
    pool = examples if examples is not None else load_pool()
    held_idx, train_idx = heldout_split(len(pool), holdout)
    enc = encode_examples(tok, pool, cfg.data.template, t.seq_len)
    pad = tok.pad_token_id or 0
    held = [enc[i] for i in held_idx]
    compute = resolve_compute(cfg, model, recorded)
    items = {s: load_suite(s, max_per_task=max_per_task, seed=SPLIT_SEED) for s in suites}
    lcfg = lora_config_of(cfg)
    compile = t.compile if compile is None else compile
    settings = {"model": model_name, "config": CONFIG, "lr": t.lr, "batch_size": t.batch_size,
                "grad_accum": t.grad_accum, "max_grad_norm": t.max_grad_norm, "seq_len": t.seq_len,
                "packing": True, "lora": {"r": lcfg.r, "alpha": lcfg.lora_alpha, "dropout": lcfg.lora_dropout,
                                          "target_modules": sorted(lcfg.target_modules)},
                "beta": cfg.devft.beta, "transfer": "copy", "holdout": holdout, "split_seed": SPLIT_SEED,
                "pool": "lab" if examples is None else f"{len(pool)} given examples",
                "probe_examples": cfg.devft.probe_examples, "suites": list(suites), "max_per_task": max_per_task,
                "items": sum(map(len, items.values())), "dtype": compute["dtype"],
                "attention": compute.get("attention"), "compile": bool(compile)}
    return Lab(model=model, tokenizer=tok, lora_config=lcfg, train=[enc[i] for i in train_idx],
               heldout=[collate(held[i:i + 8], pad) for i in range(0, len(held), 8)],
               probe=probe_set(cfg, held, [], pad), items=items, batch_size=t.batch_size, lr=t.lr,
               grad_accum=t.grad_accum, max_grad_norm=t.max_grad_norm, beta=cfg.devft.beta,
               dtype=compute["dtype"], attention=compute.get("attention"), compile=bool(compile),
               template=cfg.data.template, pad_id=pad, settings={**settings, "compute": compute})


# --------------------------------------------------------------------------- one point
def run_point(lab: Lab, groups: Sequence[Sequence[int]] | None, fusion: str, steps: int, seed: int,
              size: int | None = None, evaluate: bool = True, keep: dict | None = None) -> dict[str, Any]:
    """Build the stand-in (``groups``; None: DGLG of ``size`` groups), measure its probe gap, train it
    ``steps`` steps, copy back, measure the full model. Returns the point's record; ``keep`` (a dict)
    receives the stand-in's trained LoRA (``reps``) and the full model's after copy back (``global_lora``)."""
    t0 = time.perf_counter()
    k = len(groups) if groups is not None else int(size)
    d = DevFTConfig(beta=lab.beta, grouping="spectral", fusion=fusion, transfer="copy", probe_loss=True)
    plan = DevFTPlan(lab.model, lab.lora_config, [k], [1], d, seed=seed, probe_batches=lab.probe,
                     hooks=default_hooks(d, lab.probe, lab.dtype))
    stage = plan.begin(0, {"groups": [list(g) for g in groups]} if groups is not None else None)
    built = time.perf_counter()
    train: dict[str, Any] = {"steps": 0, "loss": None, "tokens": 0, "target_tokens": 0, "seconds": 0.0}
    if steps > 0:
        torch.manual_seed(seed)  # the LoRA dropout masks
        st = train_local(stage.model, lab.train, steps=steps, batch_size=lab.batch_size, lr=lab.lr,
                         grad_accum=lab.grad_accum, max_grad_norm=lab.max_grad_norm, seed=seed,
                         compute=Compute(packing=True, dtype=lab.dtype, attention=lab.attention, compile=lab.compile,
                                         pad_id=lab.pad_id))
        train = {"steps": st.steps, "loss": st.loss, "tokens": st.tokens, "target_tokens": st.target_tokens,
                 "seconds": round(st.seconds, 2)}
    state = get_lora_state(stage.model)
    plan.end(0, state)
    if keep is not None:
        keep.update(reps=to_layers(state)[0], global_lora=plan.global_lora)
    trained = time.perf_counter()
    full = plan.full_model()
    rec: dict[str, Any] = {"groups": stage.info["groups"], "capacity": k, "fusion": fusion, "seed": seed,
                           "anchors": stage.info["anchors"], "train": train, "probe": plan.stage_records()}
    rec["probe_gap"] = rec["probe"][0]["gap"]  # at the start: the untrained stand-in against the untrained model
    rec["heldout_loss"] = mean_response_loss(full, lab.heldout, lab.dtype)
    if evaluate and lab.items:  # as evaluate_suites scores them, on the fixed items
        rows = []
        with autocast_context("cpu", lab.dtype):
            for suite, items in lab.items.items():
                rows += [{**r, "suite": suite} for r in score_multiple_choice(full, lab.tokenizer, items, lab.template)]
        s = summarise(rows)
        rec.update(acc=s["avg"], answer_nll=s.get("answer_nll"),
                   acc_tasks={t: v["acc"] for su in s["suites"].values() for t, v in su["tasks"].items()},
                   items=[item_row(r) for r in rows])
    done = time.perf_counter()
    rec["seconds"] = {"build_probe": round(built - t0, 2), "train_transfer_probe": round(trained - built, 2),
                      "evaluate": round(done - trained, 2), "total": round(done - t0, 2)}
    del plan, stage, full
    gc.collect()
    return rec


# --------------------------------------------------------------------------- the grid
@dataclass(frozen=True)
class Point:
    """One point of the grid: its file name, what it trains and for how many steps."""

    name: str
    kind: str  # a stand-in kind, "full" (the full model, trained ``steps``) or "untrained"
    size: int  # layers of the model trained (L for full and untrained)
    seed: int
    steps: int
    same_as: str | None = None  # an earlier point of the same seed with the same groups and fusion


def grid(num_layers: int, counts, sizes: Sequence[int], kinds: Sequence[str], seeds: Sequence[int],
         steps: int) -> tuple[list[Point], list[str]]:
    """(the points, notes on what was left out), in the order they are made: per seed, per size the
    stand-ins and then the full model of the same FLOPs (once per step count), then the full model at
    the whole budget; the untrained model after the first seed. A stand-in with the same groups and
    fusion as an earlier one of the same seed (``pairs`` at L/2 is ``dblf`` at L/2: all adjacent pairs)
    is marked ``same_as`` it and copied, not trained again."""
    for s in sizes:
        if not 1 <= s < num_layers:
            raise ValueError(f"--sizes: {s} is outside 1..{num_layers - 1}; a stand-in has fewer layers than the "
                             f"model (the full model, {num_layers} layers, is always measured as the gap-0 point).")
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"--kinds: unknown {bad}; choose from {', '.join(KINDS)}.")
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}.")
    out: list[Point] = []
    notes = []
    if "pairs" in kinds:
        small = [s for s in sizes if num_layers - s > num_layers // 2]
        if small:
            notes.append(f"pairs: sizes {small} left out (pairs need L_s >= L/2 = {num_layers / 2:g}).")
    for seed in seeds:
        done: set[int] = set()
        made: dict[tuple, str] = {}

        def full(k: int) -> None:
            if k not in done:
                done.add(k)
                out.append(Point(f"full-steps{k}-s{seed}", "full", num_layers, seed, k))

        for s in sorted(sizes):
            for kind in kinds:
                if kind == "pairs" and num_layers - s > num_layers // 2:
                    continue
                g = stand_in_groups(kind, num_layers, s)
                key = (FUSION_OF[kind], tuple(map(tuple, g))) if g is not None else None
                name = f"{kind}-{s}-s{seed}"
                out.append(Point(name, kind, s, seed, steps, made.get(key)))
                if key is not None:
                    made.setdefault(key, name)
            full(matched_steps(counts, s, steps))
        full(steps)
        if seed == seeds[0]:
            out.append(Point("untrained", "untrained", num_layers, SPLIT_SEED, 0))
    return out, notes


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


CHECKED = ("model", "config", "steps", "lr", "batch_size", "grad_accum", "max_grad_norm", "seq_len", "packing",
           "lora", "beta", "transfer", "holdout", "split_seed", "pool", "probe_examples", "suites", "max_per_task",
           "items", "dtype")  # a point file is reused only when these match (compile: speed only)


def settings_clash(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The checked settings on which a point file differs from this run."""
    return [k for k in CHECKED if recorded.get(k) != current.get(k)]


def make_point(lab: Lab, p: Point) -> dict[str, Any]:
    """Train and measure one :class:`Point` (a full or untrained point is a stand-in of singletons)."""
    L = lab.num_layers
    if p.kind in ("full", "untrained"):
        groups, fusion = [[i] for i in range(L)], "dblf"
    else:
        groups, fusion = stand_in_groups(p.kind, L, p.size), FUSION_OF[p.kind]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rec = run_point(lab, groups, fusion, p.steps, p.seed, size=p.size)
    return {"name": p.name, "kind": p.kind, "size": p.size, "seed": p.seed, "steps": p.steps, **rec,
            "settings": lab.settings, "machine": machine(), "load_avg_1min_at_start": load}


def existing(points_dir: Path) -> dict[str, dict[str, Any]]:
    """The point files present, by name."""
    out = {}
    for f in sorted(points_dir.glob("*.json")):
        try:
            out[f.stem] = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise SystemExit(f"{f}: not valid JSON (an interrupted write?); delete it and rerun.") from None
    return out


# --------------------------------------------------------------------------- the report
def _ms(recs: Sequence[dict], key: str) -> dict[str, Any]:
    m, sd = mean_sd([r.get(key) for r in recs])
    return {"mean": m, "sd": sd}


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation (scipy; average ranks for ties); None under three pairs or for a constant side."""
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    from scipy.stats import spearmanr  # optional/heavy: scipy

    return float(spearmanr(xs, ys).statistic)


def summarise_points(recs: dict[str, dict[str, Any]], counts, steps: int) -> dict[str, Any]:
    """Seed means of every (kind, size), each beside the full model of the same FLOPs (paired by seed)."""
    L = counts.num_layers
    full: dict[int, dict[int, dict]] = {}
    stand: dict[str, dict[int, dict[int, dict]]] = {}
    for r in recs.values():
        if r["kind"] == "full":
            full.setdefault(r["steps"], {})[r["seed"]] = r
        elif r["kind"] != "untrained":
            stand.setdefault(r["kind"], {}).setdefault(r["size"], {})[r["seed"]] = r
    F_L = flops_per_token(counts, L)
    kinds: dict[str, list[dict[str, Any]]] = {}
    for kind in [k for k in KINDS if k in stand]:
        rows = []
        for size, by in sorted(stand[kind].items()):
            m = matched_steps(counts, size, steps)
            ref = full.get(m, {})
            seeds = sorted(by)
            paired = [s for s in seeds if s in ref]
            rows.append({
                "size": size, "seeds": seeds, "fusion": FUSION_OF[kind], "groups": by[seeds[0]]["groups"],
                "probe_gap": _ms(list(by.values()), "probe_gap"),
                "heldout_loss": _ms(list(by.values()), "heldout_loss"), "acc": _ms(list(by.values()), "acc"),
                "answer_nll": _ms(list(by.values()), "answer_nll"),
                "flop_ratio": flops_per_token(counts, size) / F_L, "matched_steps": m,
                "matched_flop_ratio": m / steps, "matched_seeds": sorted(ref),
                "matched_heldout_loss": _ms([ref[s] for s in paired], "heldout_loss"),
                "matched_acc": _ms([ref[s] for s in paired], "acc"),
                "loss_minus_matched": mean_sd([by[s]["heldout_loss"] - ref[s]["heldout_loss"] for s in paired]),
                "acc_minus_matched": mean_sd([by[s]["acc"] - ref[s]["acc"] for s in paired
                                               if by[s].get("acc") is not None and ref[s].get("acc") is not None]),
                "beats_matched_loss": f"{sum(by[s]['heldout_loss'] < ref[s]['heldout_loss'] for s in paired)} "
                                      f"of {len(paired)}",
            })
        kinds[kind] = rows
    fulls = {k: {"seeds": sorted(by), "heldout_loss": _ms(list(by.values()), "heldout_loss"),
                 "acc": _ms(list(by.values()), "acc"), "answer_nll": _ms(list(by.values()), "answer_nll")}
             for k, by in sorted(full.items())}
    u = recs.get("untrained")
    untrained = ({"heldout_loss": u["heldout_loss"], "acc": u.get("acc"), "answer_nll": u.get("answer_nll")}
                 if u else None)
    return {"num_layers": L, "steps": steps, "kinds": kinds, "full": fulls, "untrained": untrained}


def timing(recs: dict[str, dict[str, Any]], planned: Sequence[Point]) -> dict[str, Any]:
    """Seconds a trained point took and the projection over ``planned`` (its trained, not copied, points).

    With ``compile`` the first trained point of a process also compiles the decoder layer (once per
    process): ``per_point_s`` is the mean over the other points when there are any, ``first_point_s``
    the first points' mean (None when no other point was measured: then ``per_point_s`` includes the
    compilation), and the projection counts one first point and ``grid_points - 1`` others."""
    trained = [r for r in recs.values() if r["kind"] != "untrained" and not r.get("same_as")]
    if not trained:
        return {"points": 0}
    first = [r["seconds"]["total"] for r in trained if r.get("first_in_process") and r.get("compile")]
    steady = [r for r in trained if not (r.get("first_in_process") and r.get("compile"))]
    base = steady or trained
    per, sd = mean_sd([r["seconds"]["total"] for r in base])
    first_s = sum(first) / len(first) if first and steady else None
    parts = {k: mean_sd([r["seconds"][k] for r in base])[0] for k in ("build_probe", "train_transfer_probe",
                                                                        "evaluate")}
    n = sum(p.kind != "untrained" and not p.same_as for p in planned)
    loads = [r["load_avg_1min_at_start"] for r in trained if r.get("load_avg_1min_at_start") is not None]
    return {"points": len(trained), "steady_points": len(steady), "per_point_s": per, "per_point_sd_s": sd,
            "parts_s": parts, "first_point_s": first_s, "includes_compile": bool(first) and not steady,
            "sizes_measured": sorted({r["size"] for r in base}), "machine": trained[0].get("machine"),
            "load_avg": mean_sd(loads)[0], "grid_points": n,
            "projected_total_s": per * max(n - 1, 0) + (first_s if first_s is not None else per) * min(n, 1),
            "cpus": os.cpu_count()}


def _f(ms: dict[str, Any] | tuple, d: int = 3) -> str:
    m, sd = (ms["mean"], ms["sd"]) if isinstance(ms, dict) else ms
    return "-" if m is None else f"{m:.{d}f}" if sd is None else f"{m:.{d}f} ± {sd:.{d}f}"


def probe_loss_correlation(summary: dict[str, Any]) -> dict[str, Any]:
    """Spearman's rho between the probe gap and the held-out loss after copy back over the (kind, size)
    means (``rho`` None under three means)."""
    pts = [(r["probe_gap"]["mean"], r["heldout_loss"]["mean"]) for rows in summary["kinds"].values() for r in rows]
    return {"rho": spearman([p[0] for p in pts], [p[1] for p in pts]), "n": len(pts)}


def markdown(data: dict[str, Any]) -> str:
    s, st, t = data["summary"], data["settings"], data["timing"]
    L = s["num_layers"]
    lines = [f"# How close must a stand-in be? {st['model']} ({L} layers), central, {s['steps']} steps", "",
             f"Command (the grid; add `--max-points K` to make at most K new points an invocation): "
             f"`{data['command']}`", ""]
    if t.get("points"):
        hrs = t["projected_total_s"] / 3600
        first = ("" if not t.get("first_point_s") else
                 f" The first trained point of an invocation also compiles the decoder layer; it took "
                 f"{t['first_point_s']:.0f} s.")
        first = (" This includes compiling the decoder layer, which the first trained point of a process pays "
                 "once." if t.get("includes_compile") else first)
        lines += [f"Time: {t['per_point_s']:.0f} s per trained point (mean of {t['steady_points'] or t['points']}, L_s "
                  f"{', '.join(map(str, t['sizes_measured']))}; build and probe {t['parts_s']['build_probe']:.0f} s, "
                  f"train, copy back and probe {t['parts_s']['train_transfer_probe']:.0f} s, evaluation "
                  f"{t['parts_s']['evaluate']:.0f} s), measured on {t['machine']} (busy machine: "
                  f"{t['cpus']} CPU threads shared with other jobs"
                  + (f", 1-minute load average {t['load_avg']:.1f} at the start of a point"
                     if t.get("load_avg") else "")
                  + f").{first} The grid of the command ({t['grid_points']} "
                  f"trained points, in one invocation) projects to {hrs:.1f} h; smaller stand-ins train faster, so a "
                  "projection from large ones overestimates.", ""]
    lines += [f"Points present: {data['points_present']} of {data['points_planned']} planned "
              f"({', '.join(data['missing'][:6])}{' ...' if len(data['missing']) > 6 else ''} missing)."
              if data["missing"] else f"Points present: all {data['points_planned']} planned.", ""]
    lines += ["What each point is: the untrained model (lab LoRA r "
              f"{st['lora']['r']} on {', '.join(st['lora']['target_modules'])}) with a stand-in of L_s layers built "
              f"as a DevFT stage (DBLF beta {st['beta']}), its probe gap measured (stand-in minus full model, mean "
              f"response loss on {st['probe_examples']} held-out examples), its LoRA trained {s['steps']} steps "
              f"(batch {st['batch_size']}, lr {st['lr']}, the same batches at every point of a seed), copied "
              f"back into every member layer; then the full model's mean response loss on {st['holdout']} held-out "
              f"pool examples and its accuracy on {st['items']} in-distribution items ({st['max_per_task']} per task). "
              "No federation. Equal FLOPs: the full model trained round(steps × F(L_s)/F(L)) steps (F: the ledger's "
              f"client FLOPs per token; compute dtype {st['dtype']}).", ""]
    w = data.get("written_reading")
    lines += ["## Reading", "", f"Written by hand in [{w['path']}]({w['link']}); regenerating the report leaves it "
              "as it is." if w else "No written reading yet.", ""]
    for note in data["notes"]:
        lines += [f"Note: {note}", ""]
    u = s["untrained"]
    rows = []
    if u:
        rows.append(["untrained", L, "-", f"{u['heldout_loss']:.3f}",
                     "-" if u.get("acc") is None else f"{u['acc']:.1f}", "-", "-", "-", "-", "-"])
    for k, f in s["full"].items():
        rows.append([f"full, {k} step{'s' if k != 1 else ''}", L, "0", _f(f["heldout_loss"]), _f(f["acc"], 1),
                     len(f["seeds"]), "-", "-", "-", "-"])
    for kind, krows in s["kinds"].items():
        for r in krows:
            rows.append([kind, r["size"], _f(r["probe_gap"]), _f(r["heldout_loss"]), _f(r["acc"], 1), len(r["seeds"]),
                         f"{r['matched_steps']} ({r['flop_ratio'] * s['steps']:.2f})", _f(r["matched_heldout_loss"]),
                         _f(r["loss_minus_matched"]), r["beats_matched_loss"]])
    lines += ["## Points (mean ± sd over seeds)", ""]
    lines += markdown_table(["stand-in", "L_s", "probe gap (nats)", "held-out loss after copy back", "accuracy %",
                             "seeds", "equal-FLOPs full steps (exact)", "its held-out loss",
                             "stand-in − equal-FLOPs (paired)", "stand-in lower in"], rows)
    c = data.get("probe_loss_correlation") or {}
    if c.get("rho") is not None:
        lines += ["", f"Spearman's rho, probe gap against held-out loss after copy back, over {c['n']} (kind, size) "
                  f"means: {c['rho']:+.2f}."]
    n_items = st.get("items")
    if n_items:
        lines += ["", f"Accuracy on {n_items} items: one item is {100 / n_items:.1f} points; its standard error near "
                  f"50% is about {100 * math.sqrt(0.25 / n_items):.0f} points."]
    lines += ["", "Groups of each stand-in (first seed):", ""]
    for kind, krows in s["kinds"].items():
        for r in krows:
            g = " ".join(f"{x[0]}-{x[-1]}" if len(x) > 1 else str(x[0]) for x in r["groups"])
            lines.append(f"- {kind} {r['size']} ({r['fusion']}): {g}")
    lines += ["", "Point files made by: " + "; ".join(f"`{c}`" for c in data["points_from"] if c), "",
              f"![stand-in curves]({Path(data['out']).name}.png)", ""]
    return "\n".join(lines)


def plot(data: dict[str, Any], out: str | Path | None = None):
    """Held-out loss and accuracy of the full model after copy back, against the probe gap and against L_s."""
    import matplotlib  # optional/heavy: matplotlib

    if out is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional/heavy: matplotlib

    s, st = data["summary"], data["settings"]
    L, steps = s["num_layers"], s["steps"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    metrics = (("heldout_loss", f"held-out loss after copy back\n(nats per response token, {st['holdout']} examples)"),
               ("acc", f"accuracy after copy back (%, {st['items']} indist items)"))
    whole = s["full"].get(steps)
    for row, (key, label) in enumerate(metrics):
        for col, xkey in enumerate(("probe_gap", "size")):
            ax = axes[row][col]
            for i, (kind, rows) in enumerate(s["kinds"].items()):
                rows = [r for r in rows if r[key]["mean"] is not None]
                if not rows:
                    continue
                x = [r["probe_gap"]["mean"] if xkey == "probe_gap" else r["size"] for r in rows]
                xerr = [r["probe_gap"]["sd"] or 0 for r in rows] if xkey == "probe_gap" else None
                ax.errorbar(x, [r[key]["mean"] for r in rows], yerr=[r[key]["sd"] or 0 for r in rows], xerr=xerr,
                            marker="o", ms=4, capsize=3, color=f"C{i}",
                            label=f"{kind} stand-in ({FUSION_OF[kind]}), seeds {len(rows[0]['seeds'])}")
                if xkey == "probe_gap":
                    for xx, r in zip(x, rows):
                        ax.annotate(str(r["size"]), (xx, r[key]["mean"]), fontsize=7, xytext=(3, 3),
                                    textcoords="offset points", color=f"C{i}")
            if xkey == "size":  # the full model given each size's FLOPs
                pts = sorted({(r["size"], r["matched_steps"]) for rows in s["kinds"].values() for r in rows})
                pts = [(x, s["full"][str(m)] if str(m) in s["full"] else s["full"].get(m)) for x, m in pts]
                pts = [(x, f) for x, f in pts if f and f[key]["mean"] is not None]
                if pts:
                    ax.errorbar([x for x, _ in pts], [f[key]["mean"] for _, f in pts],
                                yerr=[f[key]["sd"] or 0 for _, f in pts], color="k", ls="--", marker="s", ms=4,
                                capsize=3,
                                label="full model, same FLOPs (central FedIT)")
            if whole and whole[key]["mean"] is not None:
                ax.errorbar([0.0 if xkey == "probe_gap" else L], [whole[key]["mean"]], yerr=[whole[key]["sd"] or 0],
                            color="k", marker="*", ms=11, capsize=3, ls="none",
                            label=f"full model, all {steps} steps (gap 0)")
            u = s["untrained"]
            if u and u.get(key) is not None:
                ax.axhline(u[key], color="grey", ls=":", lw=1.2, label="untrained model")
            if xkey == "probe_gap":
                gaps = [r["probe_gap"]["mean"] for rows in s["kinds"].values() for r in rows
                        if (r["probe_gap"]["mean"] or 0) > 0]
                ax.set_xscale("symlog", linthresh=min([0.01, *gaps]))
                ax.set_xlabel("probe gap before training: stand-in − full model (nats, symlog)")
            else:
                ax.set_xlabel("stand-in layers L_s")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
    axes[0][1].legend(fontsize=7)
    seeds = sorted({len(r["seeds"]) for rows in s["kinds"].values() for r in rows})
    part = (f"; {data['points_present']} of {data['points_planned']} planned points present"
            if data.get("missing") else "")
    fig.suptitle(f"{st['model']}: the full model after copying back a stand-in trained {steps} steps\n(central, "
                 f"no federation; mean ± sd over {'/'.join(map(str, seeds)) or 'no'} seed(s){part})", fontsize=10)
    fig.tight_layout()
    if out is not None:
        fig.savefig(out, dpi=110)
        plt.close(fig)
    return fig


def report(out: Path, recs: dict[str, dict[str, Any]], planned: Sequence[Point], counts, steps: int,
           command: str, notes: Sequence[str], settings: dict[str, Any], invocation: str = "") -> dict[str, Any]:
    """Write ``OUT.json``, ``OUT.md`` and ``OUT.png`` from the point files ``recs``."""
    summary = summarise_points(recs, counts, steps)
    summary["full"] = {int(k): v for k, v in summary["full"].items()}
    data = {"command": command, "invocation": invocation or command, "out": str(out), "settings": settings,
            "summary": summary,
            "timing": timing(recs, planned), "notes": list(notes), "points_planned": len(planned),
            "points_present": sum(p.name in recs for p in planned),
            "missing": [p.name for p in planned if p.name not in recs],
            "points_from": sorted({r.get("command", "") for r in recs.values()})}
    data["probe_loss_correlation"] = probe_loss_correlation(summary)
    written = out.parent / "readings" / f"{out.name}.md"  # a person's reading: linked, never written here
    if written.exists():
        data["written_reading"] = {"path": str(written), "link": written.relative_to(out.parent).as_posix()}
    _write_json(out.with_suffix(".json"), data)
    out.with_suffix(".md").write_text(markdown(data), encoding="utf-8")
    plot(data, out.with_suffix(".png"))
    return data


# --------------------------------------------------------------------------- the command
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m devft_lab.experiments.standin", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    p.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    p.add_argument("--kinds", nargs="+", default=list(DEFAULT_KINDS), choices=list(KINDS))
    p.add_argument("--steps", type=int, default=6, help="training steps of every stand-in (the budget)")
    p.add_argument("--holdout", type=int, default=48, help="held-out pool examples for the loss")
    p.add_argument("--max-per-task", type=int, default=25, help="indist items per task for the accuracy")
    p.add_argument("--max-points", type=int, default=None, help="make at most K new point files (0: report only)")
    p.add_argument("--no-compile", action="store_true", help="eager training (the lab compiles: speed only)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--dry-run", action="store_true", help="list the points and their budgets; train nothing")
    p.add_argument("--out", required=True, help="folder stem: OUT/points/*.json and OUT.json, OUT.md, OUT.png")
    args = p.parse_args(argv)
    lcfg = lora_config_of(load_config(CONFIG))
    counts = model_shape(args.model, lcfg.r, sorted(lcfg.target_modules))
    L = counts.num_layers
    try:
        planned, notes = grid(L, counts, args.sizes, args.kinds, args.seeds, args.steps)
    except ValueError as e:
        p.error(str(e))
    out = Path(args.out)
    points_dir = out / "points"
    recs = existing(points_dir) if points_dir.exists() else {}
    command = "python -m devft_lab.experiments.standin " + shlex.join(argv)
    rest = [a for i, a in enumerate(argv) if a != "--max-points" and (i == 0 or argv[i - 1] != "--max-points")]
    grid_command = "python -m devft_lab.experiments.standin " + shlex.join(rest)  # what the report describes
    todo = [q for q in planned if q.name not in recs]
    if args.dry_run:
        print(f"{args.model}: {L} layers, F(L) = {flops_per_token(counts, L):.4g} FLOPs/token; {len(planned)} points "
              f"planned, {len(planned) - len(todo)} present under {points_dir}")
        for q in planned:
            extra = ""
            if q.kind in KINDS:
                g = stand_in_groups(q.kind, L, q.size)
                extra = (f"F(L_s)/F(L) {flops_per_token(counts, q.size) / flops_per_token(counts, L):.3f}, "
                         f"equal-FLOPs full steps {matched_steps(counts, q.size, args.steps)}; groups "
                         + ("DGLG" if g is None
                            else " ".join(f"{x[0]}-{x[-1]}" if len(x) > 1 else str(x[0]) for x in g)))
            same = f" (same stand-in as {q.same_as}: copied)" if q.same_as else ""
            print(f"  {'present' if q.name in recs else 'to make':8s} {q.name:22s} {q.steps} steps{same}  {extra}")
        for n in notes:
            print(f"note: {n}")
        return 0
    ref = next(iter(recs.values()), {}).get("settings", {})
    for name, r in recs.items():  # the points present must agree with each other and with --steps
        clash = settings_clash(r.get("settings", {}), {**ref, "steps": args.steps})
        if clash:
            raise SystemExit(f"{points_dir / name}.json was made with other settings ({', '.join(clash)}: "
                             f"{[r.get('settings', {}).get(k) for k in clash]}, here "
                             f"{[args.steps if k == 'steps' else ref.get(k) for k in clash]}); give another --out "
                             "(or delete the folder's points).")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = None
    budget = len(todo) if args.max_points is None else min(args.max_points, len(todo))
    if budget:
        first = next(iter(recs.values()), None)
        lab = make_lab(args.model, args.holdout, args.max_per_task, compile=False if args.no_compile else None,
                       recorded=(first or {}).get("settings", {}).get("compute"))
        lab.settings["steps"] = args.steps
        settings = lab.settings
        for name, r in recs.items():
            clash = settings_clash(r.get("settings", {}), settings)
            if clash:
                raise SystemExit(f"{points_dir / name}.json was made with other settings ({', '.join(clash)}: "
                                 f"{[r['settings'].get(k) for k in clash]} here {[settings.get(k) for k in clash]}); "
                                 "give another --out (or delete the folder's points).")
        compiled = False  # whether a trained point of this process has compiled the decoder layer yet
        for i, q in enumerate(todo[:budget]):
            t0 = time.perf_counter()
            print(f"[standin] {i + 1}/{budget}: {q.name} ({q.steps} steps) ...", flush=True)
            if q.same_as in recs:  # the same stand-in: its measurements, not a second training
                rec = {**recs[q.same_as], "name": q.name, "kind": q.kind, "size": q.size, "same_as": q.same_as}
            else:
                rec = make_point(lab, q)
                rec.update(command=command, compile=lab.compile, first_in_process=lab.compile and q.steps > 0
                           and not compiled)
                compiled = compiled or (lab.compile and q.steps > 0)
            _write_json(points_dir / f"{q.name}.json", rec)
            recs[q.name] = rec
            print(f"[standin] {q.name}: probe gap {rec['probe_gap']:+.4f}, held-out loss {rec['heldout_loss']:.4f}"
                  + (f", accuracy {rec['acc']:.1f}%" if rec.get("acc") is not None else "")
                  + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    if not recs:
        print("[standin] no point files yet; nothing to report.")
        return 0
    settings = settings or next(iter(recs.values()))["settings"]
    report(out, recs, planned, counts, args.steps, grid_command, notes, settings, invocation=command)
    print(f"[standin] wrote {out}.json, {out}.md, {out}.png ({sum(q.name in recs for q in planned)} of "
          f"{len(planned)} points)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
