"""Views of the sweep (``devft-lab sweep``, ``results/sweep_<scale>.json``) for notebook 07.

Every function takes the sweep's JSON as a dict and returns plain data plus, where it draws, a
``"figure"`` (a pyplot-free :class:`matplotlib.figure.Figure`, see :mod:`devft_lab.teach.viz`):
pytest checks the data, the notebook shows the figures. :func:`factor_view` is the
widget's callback (one factor at a time); :func:`small_multiples` draws what the widget would
show for every factor at once, for readers without a kernel.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from devft_lab.teach.viz import _fig


def load_sweep(root: str | Path = ".", scale: str = "lab", tag: str = "") -> dict[str, Any] | None:
    """The committed sweep report ``results/sweep_<scale>[-tag].json`` under ``root``, or None."""
    p = Path(root) / "results" / f"sweep_{scale}{'-' + tag if tag else ''}.json"
    return json.loads(p.read_text()) if p.exists() else None


def factors(d: dict[str, Any]) -> list[str]:
    """The sweep's factors, in the report's order."""
    out: list[str] = []
    for r in d["rows"]:
        if r["factor"] not in out:
            out.append(r["factor"])
    return out


def _probe_at(r: dict[str, Any], at: str = "start") -> list[tuple[int, float]]:
    """(stage capacity, mean sub - full loss gap) at each stage's ``at`` (start | end), stages with data."""
    return [(p["capacity"], p["gap"]["mean"]) for p in r.get("probe", [])
            if p.get("at") == at and p.get("gap", {}).get("mean") is not None]


def factor_rows(d: dict[str, Any], factor: str) -> list[dict[str, Any]]:
    """One factor's levels: level, cell, seeds, mean accuracy, gain over the untrained model and
    DevFT − matched FedIT (item-paired, 95% CI), and the probe's loss gaps per stage."""
    rows = [r for r in d["rows"] if r["factor"] == factor]
    if not rows:
        raise ValueError(f"factor {factor!r} is not in this sweep; it has {', '.join(factors(d))}.")
    return [{"level": r["level"], "key": r["key"], "seeds": r["seeds"], "acc": (r["metric"] or {}).get("mean"),
             "gain": r["gain_over_untrained"], "gap": r["gap_vs_fedit"], "fedit": r["fedit"],
             "probe_start": _probe_at(r, "start"), "probe_end": _probe_at(r, "end")} for r in rows]


def _gap_panel(ax, rows: Sequence[dict[str, Any]], title: str) -> None:
    """DevFT − matched FedIT per level with its 95% interval; the zero line is 'equal compute, equal accuracy'."""
    for j, r in enumerate(rows):
        g = r["gap"]
        if g.get("mean") is None:
            continue
        lo, hi = g["ci95"]
        ax.errorbar(j, g["mean"], yerr=[[g["mean"] - lo], [hi - g["mean"]]], fmt="o", capsize=4,
                    color="tab:red" if hi < 0 else ("tab:green" if lo > 0 else "tab:grey"))
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(rows)), [str(r["level"]) for r in rows], fontsize=8, rotation=20, ha="right")
    ax.set_xlim(-0.5, len(rows) - 0.5)
    ax.set_title(title, fontsize=9)


def _probe_panel(ax, rows: Sequence[dict[str, Any]]) -> None:
    """The fused submodel's loss gap to the full model at each stage start, one line per level."""
    for r in rows:
        pts = [(c, g) for c, g in r["probe_start"]]
        if pts:
            ax.plot([c for c, _ in pts], [g for _, g in pts], "o-", ms=3, label=str(r["level"]))
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("stage capacity (layers)", fontsize=8)
    ax.set_yscale("symlog", linthresh=0.1)
    if any(r["probe_start"] for r in rows):
        ax.legend(fontsize=7)


def factor_view(d: dict[str, Any], factor: str) -> dict[str, Any]:
    """The widget's callback: one factor's levels (data) and a two-panel figure (gap to matched
    FedIT with CIs; the submodel's probe loss gap per stage)."""
    rows = factor_rows(d, factor)
    fig, axes = _fig(10, 3.4, ncols=2)
    axes = axes[0]
    _gap_panel(axes[0], rows, f"{factor}: DevFT − FedIT at equal client FLOPs")
    axes[0].set_ylabel(f"gap ({d['metric']}, points), 95% CI")
    _probe_panel(axes[1], rows)
    axes[1].set_ylabel("sub − full loss at stage start")
    axes[1].set_title("does the submodel stand in for the model?", fontsize=9)
    return {"factor": factor, "rows": rows, "figure": fig}


def small_multiples(d: dict[str, Any]) -> dict[str, Any]:
    """Every factor at once: top row the gap to matched FedIT per level, bottom row the probe
    loss gaps per stage (what :func:`factor_view` shows one factor at a time), shared y axes."""
    fs = factors(d)
    fig, axes = _fig(3.3 * len(fs), 6, ncols=len(fs), nrows=2, sharey="row")
    for k, f in enumerate(fs):
        rows = factor_rows(d, f)
        _gap_panel(axes[0, k], rows, f)
        _probe_panel(axes[1, k], rows)
    axes[0, 0].set_ylabel(f"DevFT − matched FedIT\n({d['metric']}, points, 95% CI)")
    axes[1, 0].set_ylabel("sub − full loss\nat stage start")
    return {"factors": fs, "figure": fig}


def probe_vs_gap(d: dict[str, Any]) -> dict[str, Any]:
    """Does 'the submodel stands in for the model' predict the benefit? For every level with probe
    data: the first stage's sub − full loss gap at its start against DevFT − matched FedIT, and the
    Spearman rank correlation over settings (None with fewer than 5)."""
    from devft_lab.experiments.sweep import probe_correlation

    c = probe_correlation(d["rows"])  # one point per DevFT setting (the center is a level of every factor)
    names = {}
    for r in d["rows"]:
        names.setdefault(r["key"], []).append(f"{r['factor']}={r['level']}")
    pts = [{"key": p["key"], "levels": names[p["key"]], "probe_gap": p["probe_gap"], "gap": p["gap"]}
           for p in c["points"]]
    rho = c["rho"]
    fig, axes = _fig(5, 3.6)
    ax = axes[0, 0]
    for p in pts:
        ax.plot(p["probe_gap"], p["gap"], "o", color="tab:blue")
        ax.annotate(p["levels"][0] if len(p["levels"]) == 1 else "center", (p["probe_gap"], p["gap"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlabel("stage-1 submodel loss − full-model loss (at its start)")
    ax.set_ylabel(f"DevFT − matched FedIT ({d['metric']}, points)")
    ax.set_title("Spearman ρ = " + ("n/a (< 5 settings with data)" if rho is None else f"{rho:+.2f}"), fontsize=9)
    return {"points": pts, "spearman": rho, "figure": fig}
