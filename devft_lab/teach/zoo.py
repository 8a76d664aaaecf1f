"""The aggregation zoo (notebook 05): why FedAvg of LoRA's A and B is inexact, and what each
federated LoRA strategy trains, sends and reproduces.

A client k holds an adapter ``(A_k, B_k)``; the update it means is ``B_k A_k``. The server
wants the weighted mean of the *updates*, ``sum_k p_k B_k A_k``. FedIT averages the
factors instead, ``(sum_k p_k B_k)(sum_k p_k A_k)``, and the difference is exactly the
weighted covariance of the factors across clients::

    sum_k p_k B_k A_k - B_bar A_bar = sum_k p_k (B_k - B_bar)(A_k - A_bar)      (1)

It vanishes when all clients agree on A (FFA-LoRA freezes A: exact) or on B, and it grows
with the square of the client spread. FLoRA stacks the factors instead of averaging them
and is exact for any spread.

Everything here works on plain LoRA *states* (``{PEFT key: tensor}``, see
:mod:`devft_lab.fl.strategies`) and returns numbers or matplotlib figures; the widget
callback :func:`gap_view` is a plain function (tested in ``tests/test_zoo.py``).
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from devft_lab.core.lora import delta
from devft_lab.fl.client import client_update
from devft_lab.fl.accounting import tensor_bytes
from devft_lab.fl.strategies import (FedSALoRA, FLoRA, State, Strategy, get_strategy, is_lora_a,
                                     is_lora_b, lora_pairs, normalise_weights, stacked_delta)
from devft_lab.teach.viz import reference_lines

DPI = 80
ZOO = ("fedit", "ffa-lora", "fedsa-lora", "flora")
SYNTH_MODULE = "base_model.model.model.layers.0.self_attn.q_proj"


# --------------------------------------------------------------------------- the gap, eq. (1)
def _weights(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float] | None) -> list[float]:
    return normalise_weights([1.0] * len(states) if weights is None else weights, len(states))


def ideal_delta(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float] | None = None
                ) -> dict[str, torch.Tensor]:
    """``sum_k p_k B_k A_k`` per module (float64): the update the server should apply."""
    p = _weights(states, weights)
    out = {}
    for mod, (ka, kb) in lora_pairs(states[0]).items():
        out[mod] = sum(pk * delta(s[ka].double(), s[kb].double()) for pk, s in zip(p, states))
    return out


def fedavg_delta(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float] | None = None
                 ) -> dict[str, torch.Tensor]:
    """``(sum_k p_k B_k)(sum_k p_k A_k)`` per module (float64): what FedIT's averaged adapter applies."""
    p = _weights(states, weights)
    out = {}
    for mod, (ka, kb) in lora_pairs(states[0]).items():
        b = sum(pk * s[kb].double() for pk, s in zip(p, states))
        a = sum(pk * s[ka].double() for pk, s in zip(p, states))
        out[mod] = delta(a, b)
    return out


def covariance_delta(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float] | None = None
                     ) -> dict[str, torch.Tensor]:
    """``sum_k p_k (B_k - B_bar)(A_k - A_bar)`` per module: the right side of eq. (1)."""
    p = _weights(states, weights)
    out = {}
    for mod, (ka, kb) in lora_pairs(states[0]).items():
        b = sum(pk * s[kb].double() for pk, s in zip(p, states))
        a = sum(pk * s[ka].double() for pk, s in zip(p, states))
        out[mod] = sum(pk * delta(s[ka].double() - a, s[kb].double() - b) for pk, s in zip(p, states))
    return out


def _norm(deltas: Mapping[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(d.double().pow(2).sum()) for d in deltas.values()))


def delta_error(got: Mapping[str, torch.Tensor], want: Mapping[str, torch.Tensor], relative: bool = False) -> float:
    """Frobenius norm of ``got - want`` over all modules (divided by ``||want||`` when ``relative``)."""
    if set(got) != set(want):
        raise ValueError(f"modules differ: {sorted(set(got) ^ set(want))[:3]}")
    err = _norm({m: got[m].double() - want[m].double() for m in want})
    if not relative:
        return err
    ref = _norm(want)
    return err / ref if ref > 0 else (0.0 if err == 0 else math.inf)


def aggregation_gap(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float] | None = None,
                    relative: bool = False) -> float:
    """``||sum_k p_k B_k A_k - (sum_k p_k B_k)(sum_k p_k A_k)||_F`` over all modules of the states.

    0 when the clients agree on A or on B; with ``relative`` divided by ``||sum_k p_k B_k A_k||``.
    """
    return delta_error(fedavg_delta(states, weights), ideal_delta(states, weights), relative)


# --------------------------------------------------------------------------- synthetic clients
def synthetic_clients(num_clients: int = 4, heterogeneity: float = 0.5, rank: int = 4, out_dim: int = 32,
                      in_dim: int = 32, shared_a: bool = False, shared_b: bool = False, seed: int = 0,
                      module: str = SYNTH_MODULE) -> list[State]:
    """Client adapters ``A_k = A_0 + h dA_k``, ``B_k = B_0 + h dB_k`` around a common ``(A_0, B_0)``.

    ``h = heterogeneity``; the directions ``dA_k, dB_k`` depend only on ``seed`` (not on h),
    so the gap of eq. (1) is exactly ``h**2`` times a constant. ``shared_a`` (FFA-LoRA's
    situation) keeps every ``A_k = A_0``; ``shared_b`` every ``B_k = B_0``.
    """
    if num_clients < 1 or rank < 1 or heterogeneity < 0:
        raise ValueError("need num_clients >= 1, rank >= 1 and heterogeneity >= 0, got "
                         f"{num_clients}, {rank}, {heterogeneity}")
    g = torch.Generator().manual_seed(int(seed))
    a0 = torch.randn(rank, in_dim, generator=g, dtype=torch.float64) / math.sqrt(in_dim)
    b0 = torch.randn(out_dim, rank, generator=g, dtype=torch.float64) / math.sqrt(rank)
    out = []
    for _ in range(num_clients):
        da = torch.randn(rank, in_dim, generator=g, dtype=torch.float64) / math.sqrt(in_dim)
        db = torch.randn(out_dim, rank, generator=g, dtype=torch.float64) / math.sqrt(rank)
        out.append({f"{module}.lora_A.weight": a0 if shared_a else a0 + heterogeneity * da,
                    f"{module}.lora_B.weight": b0 if shared_b else b0 + heterogeneity * db})
    return out


def gap_curve(heterogeneities: Sequence[float], num_clients: int = 4, rank: int = 4, seed: int = 0,
              weights: Sequence[float] | None = None, **kw) -> dict[str, list[float]]:
    """The gap of eq. (1) for each heterogeneity (same seed: the same client directions, scaled)."""
    gap, rel = [], []
    for h in heterogeneities:
        states = synthetic_clients(num_clients, float(h), rank, seed=seed, **kw)
        gap.append(aggregation_gap(states, weights))
        rel.append(aggregation_gap(states, weights, relative=True))
    return {"heterogeneity": [float(h) for h in heterogeneities], "gap": gap, "relative": rel}


def gap_view(heterogeneity: float = 0.5, num_clients: int = 4, rank: int = 4, seed: int = 0,
             h_max: float = 1.0, points: int = 21) -> dict:
    """Widget callback: the FedAvg gap at one heterogeneity, on the curve over ``[0, h_max]``.

    Returns ``gap`` and ``relative`` (eq. 1 at ``heterogeneity``), ``ffa_gap`` (the same
    clients with a shared A: 0), ``curve`` (:func:`gap_curve`) and ``figure``: the curve
    with the current point, and the error matrix ``|ideal - FedAvg|`` of the current point.
    """
    states = synthetic_clients(num_clients, heterogeneity, rank, seed=seed)
    gap = aggregation_gap(states)
    rel = aggregation_gap(states, relative=True)
    ffa = aggregation_gap(synthetic_clients(num_clients, heterogeneity, rank, seed=seed, shared_a=True))
    hs = np.linspace(0.0, max(h_max, heterogeneity), points)
    curve = gap_curve(hs, num_clients, rank, seed)
    ffa_curve = gap_curve(hs, num_clients, rank, seed, shared_a=True)
    err = next(iter(ideal_delta(states).values())) - next(iter(fedavg_delta(states).values()))

    fig = Figure(figsize=(10.5, 3.4), dpi=DPI, layout="constrained")
    ax, ax2 = fig.subplots(1, 2, width_ratios=[1.6, 1])
    ax.plot(hs, curve["relative"], marker="o", ms=3, label="FedIT: average A and B")
    ax.plot(hs, ffa_curve["relative"], marker="s", ms=3, label="FFA-LoRA: shared A (exact)")
    ax.plot([heterogeneity], [rel], "o", ms=10, mfc="none", mec="crimson", mew=2)
    ax.set_xlabel("client heterogeneity h  (A_k = A_0 + h dA_k, B_k = B_0 + h dB_k)")
    ax.set_ylabel("‖ΣpBA − (ΣpB)(ΣpA)‖ / ‖ΣpBA‖")
    ax.set_title(f"{num_clients} clients, rank {rank}: relative gap {rel:.3g} at h = {heterogeneity:g}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    vmax = float(err.abs().max()) or 1.0
    im = ax2.imshow(err.numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax)
    ax2.set_title("ΣpBA − (ΣpB)(ΣpA), one module")
    ax2.set_xlabel("in")
    ax2.set_ylabel("out")
    fig.colorbar(im, ax=ax2, shrink=0.85)
    return {"gap": gap, "relative": rel, "ffa_gap": ffa, "curve": curve, "figure": fig}


# --------------------------------------------------------------------------- strategies side by side
def strategy_delta(strategy: Strategy, global_state: Mapping[str, torch.Tensor],
                   client_states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]
                   ) -> dict[str, torch.Tensor]:
    """The update ``B @ A`` per module that a strategy's aggregate applies (float64).

    ``client_states`` are the clients' *full* trained adapters. FLoRA: the stacked adapter
    (:func:`devft_lab.fl.strategies.stacked_delta`); FedSA-LoRA: its global evaluation
    adapter (A averaged, the mean of the local Bs); others: the aggregated global state.
    """
    new = strategy.aggregate(global_state, client_states, weights)
    if isinstance(strategy, FedSALoRA):
        new = strategy.eval_state(new, [strategy.persist(s) for s in client_states], weights)
    if isinstance(strategy, FLoRA):
        return {m: d.double() for m, d in stacked_delta(new).items()}
    return {m: delta(new[ka].double(), new[kb].double()) for m, (ka, kb) in lora_pairs(new).items()}


def local_update(strategy: Strategy, start: Mapping[str, torch.Tensor], step: float, seed: int) -> State:
    """A stand-in for local training: a seeded random step on exactly the tensors ``strategy`` trains."""
    g = torch.Generator().manual_seed(int(seed))
    out = {}
    for k, v in start.items():
        if strategy.trainable(k):
            out[k] = v + step / math.sqrt(v.shape[1]) * torch.randn(v.shape, generator=g, dtype=v.dtype)
        else:
            out[k] = v.clone()
    return out


def start_state(strategy: Strategy, template: Mapping[str, torch.Tensor], round_idx: int = 0) -> State:
    """The adapter a strategy's clients start round ``round_idx`` from, given the run's template."""
    if isinstance(strategy, FLoRA):  # a fresh adapter every round (merged into the base after it)
        return strategy.fresh_adapter(template, round_idx)
    return strategy.init_global(template)


def zoo_row(strategy: Strategy, start: Mapping[str, torch.Tensor], client_states: Sequence[Mapping[str, torch.Tensor]],
            weights: Sequence[float]) -> dict:
    """One strategy's round in numbers: what is trained and sent, and how exact the aggregate is."""
    k = len(client_states)
    trains = [n for n, f in (("A", is_lora_a), ("B", is_lora_b)) if any(strategy.trainable(x) for x in start if f(x))]
    up = strategy.uplink(client_states[0])
    new = strategy.aggregate(start, client_states, weights)
    down = tensor_bytes(strategy.downlink(new)) if not isinstance(strategy, FLoRA) else tensor_bytes(new)
    err = delta_error(strategy_delta(strategy, start, client_states, weights),
                      ideal_delta(client_states, weights), relative=True)
    return {"strategy": strategy.name, "trains": "+".join(trains),
            "sends up": "+".join(n for n, f in (("A", is_lora_a), ("B", is_lora_b)) if any(f(x) for x in up)),
            "uplink / client (KB)": tensor_bytes(up) / 1e3, "downlink / client (KB)": down / 1e3,
            "rank after aggregation": _rank_of(new), "relative error of ΣpBA": err,
            "claims exact": bool(strategy.exact), "clients": k}


def _rank_of(state: Mapping[str, torch.Tensor]) -> int:
    ka = next(k for k in state if is_lora_a(k))
    return int(state[ka].shape[0])


def synthetic_zoo(template: Mapping[str, torch.Tensor] | None = None, num_clients: int = 4, step: float = 0.5,
                  names: Sequence[str] = ZOO, seed: int = 0, weights: Sequence[float] | None = None) -> list[dict]:
    """Every strategy of ``names`` on the same synthetic round: clients take a seeded random
    step (:func:`local_update`) on what the strategy trains, then the server aggregates."""
    if template is None:
        template = synthetic_clients(1, 0.0, seed=seed)[0]
        template = {k: (torch.zeros_like(v) if is_lora_b(k) else v) for k, v in template.items()}
    weights = list(weights) if weights is not None else [float(10 + 5 * i) for i in range(num_clients)]
    rows = []
    for name in names:
        s = get_strategy(name)
        start = start_state(s, template)
        clients = [local_update(s, start, step, seed * 1000 + c) for c in range(num_clients)]
        rows.append(zoo_row(s, start, clients, weights))
    return rows


def real_round(parts, strategy: Strategy, clients: Sequence[int] | None = None, round_idx: int = 0,
               stage: int = 0, start: Mapping[str, torch.Tensor] | None = None
               ) -> tuple[State, list[State], list[float]]:
    """One real round of local training with ``strategy`` on a run's stage model.

    ``parts`` is :func:`devft_lab.runner.run.build`'s result; ``start`` the global adapter of the
    round (default: the strategy's starting adapter, :func:`start_state`). Returns
    ``(start, trained, weights)``: the adapter every client started from, each client's full
    trained adapter (its upload together with what it keeps and what it did not train) and
    the sample counts.
    """
    sm = parts.plan.begin(stage)
    start = start_state(strategy, sm.start, round_idx) if start is None else dict(start)
    clients = list(range(min(4, len(parts.client_data)))) if clients is None else list(clients)
    trained, weights = [], []
    for c in clients:
        begin = strategy.client_init(start, client=c)  # DoFIT: the client's domain adapter; most: ``start``
        res = client_update(sm.model, begin, parts.client_data[c], strategy,
                            parts.settings.training, client=c, round_idx=round_idx, seed=parts.settings.seed,
                            global_state=start)
        trained.append({**begin, **res.upload, **res.keep})
        weights.append(float(res.num_samples))
    return start, trained, weights


def table_text(rows: Sequence[Mapping[str, object]], floatfmt: str = "{:.3g}") -> str:
    """Rows as a fixed-width text table (for printing in a notebook)."""
    cols = list(rows[0])
    cells = [[floatfmt.format(r[c]) if isinstance(r[c], float) else str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda xs: "  ".join(x.rjust(w) for x, w in zip(xs, widths))  # noqa: E731
    return "\n".join([line(cols)] + [line(r) for r in cells])


def gap_per_module(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float] | None = None
                   ) -> dict[str, float]:
    """Relative gap of eq. (1) for each adapted module on its own."""
    ideal, avg = ideal_delta(states, weights), fedavg_delta(states, weights)
    return {m: delta_error({m: avg[m]}, {m: ideal[m]}, relative=True) for m in ideal}


def gap_by_layer_figure(gaps: Mapping[str, float], title: str = "") -> Figure:
    """Bars of :func:`gap_per_module` by decoder layer, one series per module type (q_proj, v_proj ...)."""
    series: dict[str, dict[int, float]] = {}
    for m, v in gaps.items():
        hit = re.search(r"layers\.(\d+)\.(?:.*\.)?([^.]+)$", m)
        layer, kind = (int(hit[1]), hit[2]) if hit else (len(series.get(m, {})), m)
        series.setdefault(kind, {})[layer] = v
    fig = Figure(figsize=(9, 2.8), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(series))
    for j, (kind, vals) in enumerate(sorted(series.items())):
        xs = np.array(sorted(vals))
        ax.bar(xs + (j - (len(series) - 1) / 2) * width, [vals[x] for x in xs], width=width, label=kind)
    ax.set_xlabel("layer")
    ax.set_ylabel("relative gap of eq. (1)")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return fig


# --------------------------------------------------------------------------- what each factor weighs
def factor_bytes(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Bytes of all LoRA ``A`` factors and of all ``B`` factors of a state.

    ``A`` is ``r x d_in`` and ``B`` is ``d_out x r``, so which one is heavier depends on whether
    the adapted modules widen or narrow their input: this decides whether sending ``B`` only
    (FFA-LoRA) or ``A`` only (FedSA-LoRA) is cheaper.
    """
    return {"A": tensor_bytes({k: v for k, v in state.items() if is_lora_a(k)}),
            "B": tensor_bytes({k: v for k, v in state.items() if is_lora_b(k)})}


# --------------------------------------------------------------------------- short runs, side by side
def runs_rows(runs: Mapping[str, object], metric: str = "eval_loss") -> list[dict]:
    """One row per run (:class:`devft_lab.runner.report.RunLog`): ``metric`` before and after,
    its change, and the bytes sent (LoRA uplink; in full: both directions and the fused layers)."""
    rows = []
    for name, r in runs.items():
        _, _, _, v = r.curve(metric)
        last = r.rows[-1] if r.rows else {}
        rows.append({"strategy": name, "rounds": len(r.rows), f"{metric} before": v[0] if v else math.nan,
                     f"{metric} after": v[-1] if v else math.nan,
                     "change": (v[-1] - v[0]) if v else math.nan,
                     "LoRA uplink (MB)": last.get("cum_paper_bytes", 0) / 1e6,
                     "all bytes (MB)": last.get("cum_full_bytes", 0) / 1e6})
    return rows


def short_runs_figure(runs: Mapping[str, object], uniform_nats: float, metric: str = "eval_loss",
                      title: str = "") -> Figure:
    """Held-out loss of short runs (:class:`devft_lab.runner.report.RunLog`, one per strategy).

    Left: every evaluation against the round, on the full scale from 0 to the loss of uniform
    guessing (``uniform_nats`` = ln V) with the untrained model's loss (the runs' shared
    starting point, round 0) as a reference. Middle: the same, zoomed on the runs. Right: the
    loss against the cumulative LoRA uplink (MB), zoomed.
    """
    fig = Figure(figsize=(12.5, 3.5), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 3)
    untrained, values = None, []
    for name, r in runs.items():
        _, pb, _, v = r.curve(metric)
        values += list(v)
        rounds = ([0] if metric in r.initial else []) + [row["round"] + 1 for row in r.rows if metric in row["extra"]]
        for ax in axes[:2]:
            ax.plot(rounds, v, marker="o", ms=4, label=name)
        axes[2].plot([b / 1e6 for b in pb], v, marker="o", ms=4, label=name)
        if untrained is None and metric in r.initial:
            untrained = float(r.initial[metric])
    uniform = f"uniform guess, ln V = {uniform_nats:.2f}"
    refs = {"untrained model": untrained, uniform: uniform_nats} if untrained is not None else {uniform: uniform_nats}
    reference_lines(axes[0], refs)
    axes[0].set_ylim(0, uniform_nats * 1.08)
    axes[0].set_title("full scale: 0 to uniform guessing", fontsize=10)
    lo, hi = (min(values), max(values)) if values else (0.0, uniform_nats)
    near = uniform_nats <= hi + 0.5 * (hi - lo)  # close enough to the runs to show on the zoomed scale
    for ax, what in zip(axes[1:], ("zoomed", "zoomed, against the bytes sent")):
        reference_lines(ax, refs if near else {n: v for n, v in refs.items() if n != uniform})
        ax.set_title(what if near else f"{what}\n(uniform guessing, {uniform_nats:.2f}, is far above)", fontsize=10)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_ylabel(f"{metric} (nats per token)")
    for ax in axes[:2]:
        ax.set_xlabel("round (one per stage here; 0 = before training)")
    axes[2].set_xlabel("cumulative LoRA uplink (MB)")
    axes[0].legend(fontsize=8, loc="center right")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig
