"""Views of the sweep (``devft-lab sweep``, ``results/sweep_<scale>.json``) for notebook 07.

Every function takes the sweep's JSON as a dict and returns plain data plus, where it draws, a
``"figure"`` (a pyplot-free :class:`matplotlib.figure.Figure`, see :mod:`devft_lab.teach.viz`):
pytest checks the data, the notebook shows the figures. Nothing names a factor or a level:
every view iterates over the rows the report holds, so a new factor or level appears by itself.

- :func:`headline`: the answer in one paragraph (how many levels are below, level with or above
  FLOP-matched FedIT; the center's numbers);
- :func:`design`: what the sweep varies (factors, levels, matched FedIT);
- :func:`gap_figure`: every DevFT setting once, its gap to matched FedIT with the 95% interval;
- :func:`probe_view`: inside one setting, the fused submodel's loss at each stage (the widget's callback);
- :func:`probe_vs_gap`: does a better stand-in predict a smaller gap?
- :func:`controls_view`: what the fused stages add over training DevFT's last stage alone.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from devft_lab.teach.viz import _fig
from devft_lab.experiments.sweep import probe_correlation


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


CENTER = "center (the paper's choices)"


def center_key(d: dict[str, Any]) -> str:
    """The sweep center's cell key: the first level of every factor (the report's first row)."""
    return d["rows"][0]["key"]


def _fedit(d: dict[str, Any], key: str) -> dict[str, Any]:
    return next((f for f in d.get("fedit", []) if f["key"] == key), {"key": key, "label": key})


def fedit_rounds(d: dict[str, Any], fedit_key: str) -> int | None:
    """The number of rounds of a matched FedIT entry, read from its label ("FedIT, 6 rounds (...)")."""
    m = re.search(r"(\d+) rounds?", _fedit(d, fedit_key).get("label", ""))
    return int(m.group(1)) if m else None


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


def settings(d: dict[str, Any]) -> list[dict[str, Any]]:
    """Every DevFT setting once, the center first, then each factor's other levels in the report's
    order: ``key``, ``name`` (:data:`CENTER` or "factor = level"), ``acc`` (mean, sd over seeds), ``seeds``,
    ``gap`` (DevFT − matched FedIT, item-paired: mean, ci95), ``fedit`` (key, acc, rounds)."""
    center = center_key(d)
    out, seen = [], set()
    for r in d["rows"]:
        if r["key"] in seen:
            continue
        seen.add(r["key"])
        f = _fedit(d, r["fedit"])
        m = r.get("metric") or {}
        out.append({"key": r["key"], "name": CENTER if r["key"] == center else f"{r['factor']} = {r['level']}",
                    "factor": None if r["key"] == center else r["factor"], "label": r.get("label", r["key"]),
                    "acc": m.get("mean"), "acc_sd": m.get("std"), "seeds": r.get("seeds", []),
                    "gap": r["gap_vs_fedit"], "fedit": {"key": r["fedit"], "acc": (f.get("metric") or {}).get("mean"),
                                                        "rounds": fedit_rounds(d, r["fedit"])}})
    return out


def _side(gap: dict[str, Any]) -> str | None:
    if gap.get("mean") is None:
        return None
    lo, hi = gap["ci95"]
    return "below" if hi < 0 else ("above" if lo > 0 else "level with")


def _ci(g: dict[str, Any]) -> str:
    lo, hi = g["ci95"]
    return f"{g['mean']:+.1f} [{lo:+.1f}, {hi:+.1f}]".replace("-", "−")


def headline(d: dict[str, Any]) -> dict[str, Any]:
    """The sweep's answer, from its rows: every factor level with a result sorted into ``below``,
    ``level with`` or ``above`` FLOP-matched FedIT (its 95% interval below, around or above zero),
    the ``center`` setting's numbers, the ``best`` setting, and ``text`` saying it in markdown."""
    levels = [(f"{r['factor']} = {r['level']}", _side(r["gap_vs_fedit"])) for r in d["rows"]]
    done = [(n, s) for n, s in levels if s is not None]
    sides = {k: [n for n, s in done if s == k] for k in ("below", "level with", "above")}
    st = [s for s in settings(d) if s["gap"].get("mean") is not None]
    c = next((s for s in st if s["key"] == center_key(d)), None)
    best = max(st, key=lambda s: s["gap"]["mean"]) if st else None
    nf = len(factors(d))
    if not done:
        text = "No level of the sweep has a result yet."
    elif len(sides["below"]) == len(done):
        text = (f"**At equal client FLOPs, DevFT is below FedIT at every level of every factor** "
                f"({len(done)} levels of {nf} factors, {len(st)} DevFT settings).")
    else:
        parts = [f"{k} FedIT at {len(v)} ({', '.join(v)})" for k, v in sides.items() if v]
        text = f"**At equal client FLOPs, of {len(done)} levels of {nf} factors DevFT is** " + "; ".join(parts) + "."
    if c and c["fedit"]["acc"] is not None:
        choices = ", ".join(f"{r['factor']} {r['level']}" for r in d["rows"] if r["key"] == c["key"])
        text += (f" The paper's own choices (the center: {choices}) score {c['acc']:.1f} % against "
                 f"{c['fedit']['acc']:.1f} % for FedIT run for {c['fedit']['rounds'] or 'as many'} rounds, the same client FLOPs: "
                 f"**{_ci(c['gap'])} points** (item-paired, 95% interval).")
    if best and c and best["key"] != c["key"]:
        text += f" The best other setting, {best['name']}, is at {_ci(best['gap'])}."
    elif best and c:
        text += " No other setting does better."
    return {"levels": len(done), "factors": nf, "settings": len(st), **sides, "center": c, "best": best, "text": text}


def design(d: dict[str, Any]) -> str:
    """What the sweep varies, as a markdown table: each factor's levels (the first is the center)
    and the FLOP-matched FedIT each level is compared with."""
    lines = ["| factor | levels (the first is the center) | compared with |", "|---|---|---|"]
    for f in factors(d):
        rows = [r for r in d["rows"] if r["factor"] == f]
        feds = []
        for r in rows:
            n = fedit_rounds(d, r["fedit"])
            t = f"FedIT {n} rounds" if n else r["fedit"]
            if t not in feds:
                feds.append(t)
        lines.append(f"| {f} | {', '.join(str(r['level']) for r in rows)} | {', '.join(feds)} |")
    return "\n".join(lines)


def gap_figure(d: dict[str, Any]) -> dict[str, Any]:
    """Every DevFT setting once (:func:`settings`: the center on top, then each factor's other
    levels): DevFT − its FLOP-matched FedIT with the item-paired 95% interval (red: below zero,
    grey: includes zero, green: above), and beside it the two accuracies it is the difference of."""
    st = settings(d)
    fig, axes = _fig(10, 0.42 * len(st) + 1.4, ncols=2, sharey=True, gridspec_kw={"width_ratios": [3, 2]})
    ax, tx = axes[0]
    tx.axis("off")
    prev = "center"
    for j, s in enumerate(st):
        g = s["gap"]
        group = s["factor"] or "center"
        if group != prev:
            ax.axhline(j - 0.5, color="lightgrey", lw=0.8)
            prev = group
        if g.get("mean") is None:
            ax.annotate("not trained yet", (0, j), fontsize=7, color="grey", va="center")
            continue
        lo, hi = g["ci95"]
        side = _side(g)
        ax.errorbar(g["mean"], j, xerr=[[g["mean"] - lo], [hi - g["mean"]]], fmt="o", capsize=4,
                    color={"below": "tab:red", "above": "tab:green"}.get(side, "tab:grey"))
        f = s["fedit"]
        accs = ""
        if s["acc"] is not None and f["acc"] is not None:
            accs = f"   DevFT {s['acc']:.1f} %, FedIT {f['acc']:.1f} %" + (f" ({f['rounds']} rounds)" if f["rounds"] else "")
        tx.text(0, j, _ci(g) + accs, fontsize=8, va="center")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(st)), [s["name"] for s in st], fontsize=8)
    ax.set_ylim(len(st) - 0.5, -0.5)
    ax.set_xlabel(f"DevFT − FedIT at equal client FLOPs ({d['metric']}, points; item-paired 95% CI)")
    ax.set_title("every DevFT setting against FedIT run for the same client FLOPs", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    tx.set_xlim(0, 1)
    tx.set_title("gap [95% CI]   the two accuracies (mean over seeds)", fontsize=9, loc="left")
    return {"settings": st, "figure": fig}


def untrained_loss(d: dict[str, Any]) -> float | None:
    """The untrained full model's loss on the probe examples (nats per token): the full model's
    probe loss at the start of the first stage, before any LoRA is trained (first setting with a probe)."""
    for r in d["rows"]:
        for p in r.get("probe", []):
            if p.get("stage") == 0 and p.get("at") == "start" and (p.get("full_loss") or {}).get("mean") is not None:
                return p["full_loss"]["mean"]
    return None


def probe_settings(d: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, key) of every setting with probe data, for a dropdown (the center first)."""
    have = {r["key"] for r in d["rows"] if any((p.get("sub_loss") or {}).get("mean") is not None
                                              for p in r.get("probe", []))}
    return [(s["name"], s["key"]) for s in settings(d) if s["key"] in have]


def probe_view(d: dict[str, Any], key: str, uniform: float | None = None, vocab: int | None = None) -> dict[str, Any]:
    """Inside one DevFT setting (the widget's callback): the probe's losses at the start and the end
    of every stage, the fused submodel's (what the clients train) and the full model's with the
    LoRA transferred so far, on a log scale with the untrained model and the uniform guess ln V
    (``uniform``, or ``vocab``) marked. Returns ``stages`` (capacity, at, sub, full) and ``figure``."""
    rows = [r for r in d["rows"] if r["key"] == key]
    if not rows:
        raise ValueError(f"no setting {key!r} in this sweep; it has {', '.join(k for _, k in probe_settings(d))}.")
    if uniform is None and vocab is not None:
        uniform = math.log(vocab)
    pts = [{"stage": p["stage"], "capacity": p["capacity"], "at": p["at"], "sub": p["sub_loss"]["mean"],
            "full": p["full_loss"]["mean"]} for p in rows[0].get("probe", [])
           if (p.get("sub_loss") or {}).get("mean") is not None]
    fig, axes = _fig(7.5, 3.6)
    ax = axes[0, 0]
    x = list(range(len(pts)))
    ax.plot(x, [p["sub"] for p in pts], "o-", color="tab:orange", label="fused submodel (what the clients train)")
    ax.plot(x, [p["full"] for p in pts], "s-", color="tab:blue", ms=4, label="full model, LoRA transferred so far")
    base = untrained_loss(d)
    if base is not None:
        ax.axhline(base, ls="--", color="grey", lw=1, label=f"untrained model ({base:.2f})")
    if uniform is not None:
        ax.axhline(uniform, ls=":", color="tab:red", lw=1.3, label=f"uniform guess: ln V = {uniform:.2f}")
    ax.set_xticks(x, [f"{p['capacity']} layers\n{p['at']}" for p in pts], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("response loss on the probe examples\n(nats per token, log scale)", fontsize=8)
    name = next((n for n, k in probe_settings(d) if k == key), key)
    ax.set_title(f"{name}: the probe at the start and end of each stage", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper right")
    return {"key": key, "stages": pts, "figure": fig}


def probe_vs_gap(d: dict[str, Any], uniform: float | None = None) -> dict[str, Any]:
    """Does 'the submodel stands in for the model' predict the benefit? For every setting with probe
    data: the first stage's sub − full loss gap at its start against DevFT − matched FedIT, and the
    Spearman rank correlation over settings (None with fewer than 5). With ``uniform`` (ln V), a
    vertical line marks the gap a uniform guess would have against the untrained model."""
    c = probe_correlation(d["rows"])  # one point per DevFT setting (the center is a level of every factor)
    names = {s["key"]: s["name"] for s in settings(d)}
    pts = [{"key": p["key"], "name": names.get(p["key"], p["key"]), "probe_gap": p["probe_gap"], "gap": p["gap"]}
           for p in c["points"]]
    rho = c["rho"]
    fig, axes = _fig(6, 3.8)
    ax = axes[0, 0]
    for p in pts:
        ax.plot(p["probe_gap"], p["gap"], "o", color="tab:blue")
        ax.annotate(p["name"], (p["probe_gap"], p["gap"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    base = untrained_loss(d)
    if uniform is not None and base is not None:
        ax.axvline(uniform - base, ls=":", color="tab:red", lw=1.3,
                   label=f"a uniform guess: ln V − untrained = {uniform - base:.1f}")
        ax.legend(fontsize=7, loc="upper center")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("stage-1 submodel loss − full-model loss at its start (nats per token)", fontsize=8)
    ax.set_ylabel(f"DevFT − matched FedIT ({d['metric']}, points)", fontsize=8)
    ax.set_title("Spearman ρ = " + ("n/a (< 5 settings with data)" if rho is None else f"{rho:+.2f}")
                 + f" over {len(pts)} settings", fontsize=9)
    ax.grid(alpha=0.3)
    return {"points": pts, "spearman": rho, "figure": fig}


def sweep_model(d: dict[str, Any], root: str | Path = ".") -> str | None:
    """The model the sweep trained, from the center's first run folder (``config.yaml``), or None."""
    from devft_lab.runner.config import load_config  # optional/heavy: torch (devft_lab.runner.config)

    for cfg in sorted((Path(root) / d.get("runs", "results/repro/lab")).glob(f"*/{center_key(d)}-s*/config.yaml")):
        return load_config(cfg).model.name
    return None


def controls_view(d: dict[str, Any]) -> dict[str, Any]:
    """What the fused stages add: each level that has a "final stage only" control (FedIT for DevFT's
    last-stage rounds at DevFT's last-stage learning rates), beside its FLOP-matched FedIT.

    Returns ``rows`` (level, seeds, DevFT, control and matched FedIT accuracies, DevFT − control and
    DevFT − matched FedIT with their 95% intervals), ``table`` (markdown) and ``figure``: accuracy of
    the three per level, mean ± sd over the seeds each has, with the untrained model as a line."""
    ctl = {c["key"]: c for c in d.get("controls", [])}
    fed = {f["key"]: f for f in d["fedit"]}
    rows = []
    for r in d["rows"]:
        if not r.get("control"):
            continue
        c, f = ctl.get(r["control"], {}), fed.get(r["fedit"], {})
        rows.append({"level": f"{r['factor']} = {r['level']}", "key": r["key"], "seeds": r["seeds"],
                     "control_seeds": c.get("seeds", []), "devft": r["metric"], "control": c.get("metric"),
                     "fedit": f.get("metric"), "vs_control": r.get("gap_vs_control") or {},
                     "vs_fedit": r["gap_vs_fedit"], "control_label": c.get("label", r["control"])})

    def acc(m):
        return "–" if not m else f"{m['mean']:.1f}" + (f" ± {m['std']:.1f}" if m.get("std") is not None else "")

    def gap(g):
        return "–" if g.get("mean") is None else _ci(g) + f" ({len(g.get('seeds', []))} seed{'s' * (len(g.get('seeds', [])) != 1)})"

    table = "\n".join(["| level | DevFT | final stage only | FedIT, equal FLOPs | DevFT − final stage only | DevFT − FedIT |",
                       "|---|---|---|---|---|---|"] +
                      [f"| {x['level']} | {acc(x['devft'])} | {acc(x['control'])} | {acc(x['fedit'])} | "
                       f"{gap(x['vs_control'])} | {gap(x['vs_fedit'])} |" for x in rows])
    fig, axes = _fig(7.5, 3.4)
    ax = axes[0][0]
    width, colors = 0.26, {"devft": "tab:orange", "control": "tab:gray", "fedit": "tab:blue"}
    names = {"devft": "DevFT", "control": "FedIT, DevFT's last stage only", "fedit": "FedIT, equal client FLOPs"}
    for j, k in enumerate(("devft", "control", "fedit")):
        xs = [i + (j - 1) * width for i, x in enumerate(rows) if x[k]]
        ms = [x[k] for x in rows if x[k]]
        ax.bar(xs, [m["mean"] for m in ms], width, color=colors[k], label=names[k],
               yerr=[m.get("std") or 0 for m in ms], capsize=3)
    base = untrained_acc(d)
    if base is not None:
        ax.axhline(base, color="k", ls="--", lw=1, label=f"untrained model ({base:.1f} %)")
    ax.set_xticks(range(len(rows)), [f"{x['level']}\n(seeds: DevFT {len(x['seeds'])}, last stage {len(x['control_seeds'])})"
                                     for x in rows], fontsize=8)
    ax.set_ylim(30, 52)
    ax.set_ylabel("accuracy on the held-out items (%)")
    ax.set_title("Does DevFT's staging beat training its last stage alone? (mean ± sd over the seeds each has)",
                 fontsize=9)
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    ax.grid(axis="y", alpha=0.3)
    return {"rows": rows, "table": table, "figure": fig}


def untrained_acc(d: dict[str, Any]) -> float | None:
    """The untrained model's accuracy on the sweep's items: the center's final accuracy minus its paired gain."""
    for r in d["rows"]:
        g = r.get("gain_over_untrained") or {}
        if r["metric"] and g.get("mean") is not None:
            return r["metric"]["mean"] - g["mean"]
    return None
