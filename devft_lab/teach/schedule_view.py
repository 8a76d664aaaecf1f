"""The federated stage schedule made visible (notebook 04): client partitions, DevFT against
FedIT from run folders, and knowledge transfer stage by stage.

Plain functions returning data and matplotlib figures; the widget callbacks
(:func:`partition_view`, :func:`transfer_view`) are tested in ``tests/test_schedule_view.py``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure

from devft_lab.data.partition import category_skew, partition, partition_counts
from devft_lab.core.lora import to_layers
from devft_lab.fl.client import client_update
from devft_lab.method.grouping import validate_groups
from devft_lab.teach import viz
from devft_lab.teach.lab_view import loss_references

DPI = 80

# The three partitions notebook 04 compares: label -> (partitioner, params)
PARTITIONS: dict[str, tuple[str, dict]] = {
    "IID": ("iid", {}),
    "Dirichlet α = 0.5": ("dirichlet", {"alpha": 0.5}),
    "pathological, 2 tasks per client": ("pathological", {"k": 2}),
}


# --------------------------------------------------------------------------- partitions
def _stacked_bars(ax, parts: Sequence[Sequence[int]], categories: Sequence, names_all: Sequence[str], title: str):
    counts, names = partition_counts(parts, categories)
    cmap = matplotlib.colormaps["tab10" if len(names_all) <= 10 else "tab20"]
    bottom = np.zeros(len(parts))
    x = np.arange(len(parts))
    for name in names_all:
        col = counts[:, names.index(name)] if name in names else np.zeros(len(parts))
        ax.bar(x, col, bottom=bottom, width=0.85, color=cmap(list(names_all).index(name) % cmap.N), label=name)
        bottom += col
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("client")
    ax.set_xticks(x[:: max(1, len(x) // 10)])


def partitions_figure(categories: Sequence, specs: Mapping[str, tuple[str, dict]] | None = None,
                      num_clients: int = 20, seed: int = 0, min_samples: int = 1) -> dict:
    """Partition ``categories`` with every spec (label -> (partitioner, params)) and plot them side by side.

    Returns ``parts`` ({label: client index lists}), ``skew`` ({label: category skew, 0 = the
    pool's mix on every client}) and ``figure`` (stacked bars of client x category counts).
    """
    specs = dict(specs or PARTITIONS)
    names = sorted({str(c) for c in categories})
    fig = Figure(figsize=(4.2 * len(specs) + 2.2, 3.3), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(specs), sharey=True, squeeze=False)[0]
    parts, skew = {}, {}
    for ax, (label, (name, params)) in zip(axes, specs.items()):
        p = partition([str(c) for c in categories], name, num_clients, seed=seed, min_samples=min_samples, **params)
        parts[label], skew[label] = p, category_skew(p, [str(c) for c in categories])
        _stacked_bars(ax, p, [str(c) for c in categories], names, f"{label}\n(skew {skew[label]:.2f})")
    axes[0].set_ylabel("examples")
    axes[-1].legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    return {"parts": parts, "skew": skew, "figure": fig}


def partition_view(categories: Sequence, alpha: float = 0.5, num_clients: int = 20, seed: int = 0,
                   min_samples: int = 0) -> dict:
    """Widget callback: a Dirichlet(alpha) split of ``categories`` over ``num_clients``.

    Small alpha: each client is dominated by a few categories (some may get none: the
    default ``min_samples = 0`` allows it); large alpha: close to IID.
    Returns ``parts``, ``counts`` (client x category), ``names``, ``skew`` and ``figure``.
    """
    cats = [str(c) for c in categories]
    parts = partition(cats, "dirichlet", num_clients, seed=seed, min_samples=min_samples, alpha=float(alpha))
    counts, names = partition_counts(parts, cats)
    skew = category_skew(parts, cats)
    fig = Figure(figsize=(8.5, 3.1), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    _stacked_bars(ax, parts, cats, names, f"Dirichlet α = {alpha:g}: {num_clients} clients, skew {skew:.2f}")
    ax.set_ylabel("examples")
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    return {"parts": parts, "counts": counts, "names": names, "skew": skew, "figure": fig}


# --------------------------------------------------------------------------- runs
def runs_available(paths: Sequence[str | Path]) -> list[str]:
    """Which of ``paths`` are finished run folders (``summary.json`` present)."""
    return [str(p) for p in paths if (Path(p) / "summary.json").exists()]


# --------------------------------------------------------------------------- knowledge transfer
def layer_lora_vectors(global_lora: Mapping[int, Mapping[str, torch.Tensor]]) -> torch.Tensor:
    """One row per layer: every LoRA tensor of the layer flattened and concatenated (names sorted)."""
    return torch.stack([torch.cat([global_lora[i][n].detach().double().flatten() for n in sorted(global_lora[i])])
                        for i in sorted(global_lora)])


def lora_cosine(global_lora: Mapping[int, Mapping[str, torch.Tensor]], only: str | None = "lora_B") -> torch.Tensor:
    """Cosine similarity (L x L) of the layers' LoRA (``only``: tensors whose name contains it)."""
    sel = {i: {n: t for n, t in d.items() if only is None or only in n} for i, d in global_lora.items()}
    v = layer_lora_vectors(sel)
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return v @ v.T


def holds_representative(global_lora: Mapping[int, Mapping[str, torch.Tensor]], groups: Sequence[Sequence[int]],
                         reps: Mapping[int, Mapping[str, torch.Tensor]]) -> bool:
    """True when every member of group g holds exactly representative g's LoRA tensors (A and B)."""
    return all(set(global_lora[i]) == set(reps[g]) and all(torch.equal(global_lora[i][n], reps[g][n]) for n in reps[g])
               for g, members in enumerate(groups) for i in members)


def _snapshot(global_lora: Mapping[int, Mapping[str, torch.Tensor]]) -> dict[int, dict[str, torch.Tensor]]:
    return {i: {n: v.detach().clone() for n, v in d.items()} for i, d in global_lora.items()}


def run_stages(parts, rounds_per_stage: int = 1, clients: Sequence[int] = (0, 1)) -> list[dict]:
    """Drive a run's DevFT plan stage by stage with a minimal federation and record each transfer.

    ``parts`` is :func:`devft_lab.runner.run.build`'s result for a DevFT config. Every stage: build the
    submodel (``plan.begin``), train ``clients`` for ``rounds_per_stage`` rounds with the run's
    strategy (``client_update`` + ``strategy.aggregate``), then transfer (``plan.end``).
    Returns one record per stage: ``capacity``, ``groups``, ``reps`` (the trained
    representatives' LoRA), ``before`` and ``global_lora`` (snapshots of the full model's LoRA
    before and after the transfer), ``cosine`` (:func:`lora_cosine` of the B tensors after it)
    and ``holds_representative``.
    """
    plan, strategy, s = parts.plan, parts.strategy, parts.settings
    if not hasattr(plan, "global_lora"):
        raise ValueError("run_stages needs a DevFT plan (devft.enabled = true, devft.plan = devft).")
    history, t = [], 0
    for stage in range(len(plan.stage_rounds())):
        sm = plan.begin(stage)
        groups = [list(g) for g in sm.info["groups"]]
        validate_groups(groups, plan.L, len(groups))
        state = dict(sm.start)
        if stage == 0:
            state = strategy.init_global(state)
        for _ in range(rounds_per_stage):
            ups, w = [], []
            for c in clients:
                res = client_update(sm.model, strategy.client_init(state), parts.client_data[c], strategy, s.training,
                                    client=c, round_idx=t, seed=s.seed, global_state=state)
                ups.append(res.upload)
                w.append(res.num_samples)
            state = strategy.aggregate(state, ups, w)
            t += 1
        reps, _ = to_layers(state)
        before = _snapshot(plan.global_lora)
        plan.end(stage, state)
        snap = _snapshot(plan.global_lora)
        history.append({"stage": stage, "capacity": len(groups), "groups": groups, "reps": reps,
                        "before": before, "global_lora": snap, "cosine": lora_cosine(snap),
                        "holds_representative": holds_representative(snap, groups, reps)})
    return history


def transfer_view(history: Sequence[Mapping], stage: int) -> dict:
    """Widget callback: after stage ``stage`` (0-based), the cosine similarity of the layers' LoRA B,
    with the stage's groups marked. Inside a group it is exactly 1: every member holds the
    representative's copy. Returns the record's ``groups``, ``cosine`` and ``figure``."""
    if not 0 <= stage < len(history):
        raise ValueError(f"stage must be in 0..{len(history) - 1}, got {stage}")
    rec = history[stage]
    fig = viz.heatmap(rec["cosine"], title=f"after stage {stage + 1} (L_s = {rec['capacity']}): "
                                           "cos of layers' LoRA B", groups=rec["groups"], cmap="RdBu_r",
                      vmin=-1, vmax=1, label="cosine")
    return {"groups": rec["groups"], "cosine": rec["cosine"], "figure": fig}


def transfer_figure(history: Sequence[Mapping]) -> Figure:
    """Every stage's :func:`transfer_view` heatmap side by side."""
    fig = Figure(figsize=(3.9 * len(history), 3.6), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(history), squeeze=False)[0]
    for ax, rec in zip(axes, history):
        viz.heatmap(rec["cosine"], title=f"after stage {rec['stage'] + 1}, L_s = {rec['capacity']}",
                    groups=rec["groups"], cmap="RdBu_r", vmin=-1, vmax=1, ax=ax)
    fig.suptitle("cosine similarity of the layers' LoRA B after each stage's transfer (strips: the stage's groups)",
                 fontsize=10)
    return fig


def bytes_per_round(run) -> list[int]:
    """LoRA uplink bytes of each round of a :class:`devft_lab.runner.report.RunLog` (the paper's count)."""
    return [int(r["uplink_bytes"]) for r in run.rows]


def bytes_per_round_figure(runs: Sequence) -> Figure:
    """Uplink MB per round for each run, DevFT's stages shaded by capacity."""
    fig = Figure(figsize=(9, 3.0), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(runs))
    for j, run in enumerate(runs):
        b = np.array(bytes_per_round(run), dtype=float) / 1e6
        x = np.arange(1, len(b) + 1) + (j - (len(runs) - 1) / 2) * width
        ax.bar(x, b, width=width, label=run.name)
        caps = [r["extra"].get("capacity") for r in run.rows]
        if len(set(caps)) > 1:
            for xi, bi, c, prev in zip(x, b, caps, [None] + caps[:-1]):
                if c != prev:
                    ax.annotate(f"L_s={c}", (xi, bi), textcoords="offset points", xytext=(0, 3), fontsize=7,
                                ha="center")
    ax.set_xlabel("round")
    ax.set_ylabel("MB sent up (LoRA)")
    ax.set_title("communication per round, the paper's count (clients' LoRA uplink)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return fig


def train_loss_figure(runs: Sequence, untrained: float | None = None, vocab: int | None = None) -> Figure:
    """Mean client training loss per round (log scale): for DevFT, the loss of each stage's submodel.
    ``untrained``: the untrained model's loss on training examples (dashed); ``vocab``: the
    vocabulary size, for the uniform guess ln V (dotted): a loss above it is worse than guessing."""
    fig = Figure(figsize=(9, 3.2), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    for run in runs:
        x = [int(r["round"]) + 1 for r in run.rows]
        ax.plot(x, [float(r["extra"]["loss"]) for r in run.rows], marker="o", ms=3, label=run.name)
    loss_references(ax, untrained, vocab)
    ax.set_yscale("log")
    ax.set_xlabel("round")
    ax.set_ylabel("mean client training loss\n(nats per token, log scale)")
    ax.set_title("training loss of the model the clients train (DevFT: the stage's submodel)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def stage_layers(run) -> list[int]:
    """The capacities a run trained, in order (one per stage; FedIT: the full model only), from its rounds."""
    out: list[int] = []
    for r in run.rows:
        c = int(r["extra"]["capacity"])
        if not out or out[-1] != c:
            out.append(c)
    return out


def runs_table(runs: Sequence) -> str:
    """One markdown row per run (:class:`devft_lab.runner.report.RunLog`): its stages, rounds, total
    client compute (TFLOPs, the ledger's estimate), LoRA uplink (MB, the paper's count) and
    accuracy before and after training (%)."""
    lines = ["| run | stage layers | rounds | client TFLOPs | LoRA uplink MB | accuracy before → after (%) |",
             "|---|---|---|---|---|---|"]
    for run in runs:
        s = run.summary
        lines.append(f"| {run.name} | {' → '.join(map(str, stage_layers(run)))} | {len(run.rows)} | "
                     f"{s['flops_estimate'] / 1e12:.1f} | {s['paper_bytes'] / 1e6:.0f} | "
                     f"{s['initial']['acc']:.1f} → {s['final']['acc']:.1f} |")
    return "\n".join(lines)
