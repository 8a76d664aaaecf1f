"""The committed lab runs, read for the notebooks: what a reader should expect, DevFT against
FedIT at equal rounds and at equal client FLOPs, and the paper's claims beside the lab's.

The main table's cells (``devft-lab reproduce main --scale lab``, in
``results/repro/lab/main/<method>-s<seed>``) are the reference: the same config as ``make demo``
(DevFT) and ``devft-lab run lab`` (FedIT), three seeds each. DevFT's ten rounds cost fewer
client FLOPs than FedIT's ten (:func:`flops_share`), so the fair comparison is FedIT run for
fewer rounds: the sweep's FLOP-matched FedIT runs (``results/repro/lab/sweep/sweep-fedit-*``,
6, 7 and 8 rounds) give FedIT a real curve against compute (:func:`fedit_budgets`, :func:`figure`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from devft_lab.experiments import compute_matched as cm
from devft_lab.experiments.reproduce.stats import paired_items
from devft_lab.stats import paired_bootstrap

LABELS = {"fedit": "FedIT", "devft": "DevFT", "progfed": "ProgFed", "fedsa-lora": "FedSA-LoRA"}


def lab_cells(root: str | Path, methods: Sequence[str] = ("fedit", "devft"), table: str = "main",
              scale: str = "lab") -> dict[str, dict[int, Path]]:
    """``{method: {seed: run folder}}`` of the finished committed cells under ``root/results``."""
    out: dict[str, dict[int, Path]] = {}
    base = Path(root) / "results" / "repro" / scale / table
    for m in methods:
        for d in sorted(base.glob(f"{m}-s*")):
            try:
                done = json.loads((d / "summary.json").read_text()).get("done")
            except (OSError, ValueError):
                done = False
            seed = d.name.rsplit("-s", 1)[-1]
            if done and seed.isdigit():
                out.setdefault(m, {})[int(seed)] = d
    return out


def _ms(xs: Sequence[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0)


def expectations(cells: dict[str, dict[int, Path]]) -> dict[str, dict[str, Any]]:
    """Per method: final accuracy and answer loss (mean, std over seeds), the untrained model's,
    and the run's wall time in minutes (mean, std), from the cells' summaries."""
    out = {}
    for m, by in cells.items():
        ss = [json.loads((d / "summary.json").read_text()) for d in by.values()]
        out[m] = {"seeds": sorted(by), "acc": _ms([s["final"]["acc"] for s in ss]),
                  "answer_nll": _ms([s["final"]["answer_nll"] for s in ss]),
                  "untrained_acc": _ms([s["initial"]["acc"] for s in ss]),
                  "minutes": _ms([s.get("wall_s", s.get("train_s", 0.0)) / 60 for s in ss])}
    return out


def expectation_line(exp: dict[str, dict[str, Any]], method: str = "devft") -> str:
    """"You should see X ± Y % (untrained Z %) in about W minutes" for ``method``, with FedIT beside it."""
    e = exp[method]
    line = (f"You should see {LABELS.get(method, method)} end at {e['acc'][0]:.1f} ± {e['acc'][1]:.1f} % "
            f"(untrained model {e['untrained_acc'][0]:.1f} %) in about {e['minutes'][0]:.0f} minutes on 2 CPU cores "
            f"(committed seeds {', '.join(map(str, e['seeds']))}; ± is the spread over seeds)")
    if method != "fedit" and "fedit" in exp:
        f = exp["fedit"]
        line += (f"; FedIT, the same federation without stages, ends at {f['acc'][0]:.1f} ± {f['acc'][1]:.1f} % "
                 f"in about {f['minutes'][0]:.0f} minutes")
    return line + "."



# --------------------------------------------------------------------------- references for a loss axis
def vocab_size(model: str) -> int:
    """The vocabulary size of ``model`` (a preset or a cached / local model folder), from its
    config: no weights are loaded. A tiny preset's byte tokenizer counts as its vocabulary."""
    from devft_lab.core.models import TINY_PRESETS, byte_tokenizer, cache_dir  # optional/heavy: torch (devft_lab.core.models)

    if model in TINY_PRESETS:
        return len(byte_tokenizer())
    for folder in (cache_dir() / model, Path(model)):
        p = folder / "config.json"
        if p.is_file():
            return int(json.loads(p.read_text())["vocab_size"])
    raise FileNotFoundError(f"no config.json for model {model!r} in {cache_dir()} or at {model}; prepare it "
                            f"first: devft-lab model prepare {model}")


def uniform_nats(model: str | None = None, vocab: int | None = None) -> float:
    """The loss of a uniform guess over the vocabulary: ln V nats per token (SmolLM2: ln 49152 =
    10.80). A model whose loss is above it predicts worse than guessing. Give ``vocab`` or ``model``."""
    if vocab is None:
        if model is None:
            raise ValueError("uniform_nats needs the vocabulary size (vocab=...) or a model name (model=...).")
        vocab = vocab_size(model)
    if vocab < 2:
        raise ValueError(f"a vocabulary has at least 2 tokens, got {vocab}.")
    return math.log(vocab)


def model_of(run_dir: str | Path) -> str:
    """The model name in a run folder's ``config.yaml``."""
    from devft_lab.runner.config import load_config  # optional/heavy: torch (devft_lab.runner.config)

    return load_config(Path(run_dir) / "config.yaml").model.name


def loss_references(ax, untrained: float | None = None, vocab: int | None = None, model: str | None = None) -> None:
    """Mark a loss axis (nats per token) with the untrained model (dashed grey) and the uniform
    guess ln V (dotted red; from ``vocab`` or ``model``), labelled with their values."""
    if untrained is not None:
        ax.axhline(untrained, ls="--", color="grey", lw=1, label=f"untrained model ({untrained:.2f})")
    if vocab is None and model is not None:
        vocab = vocab_size(model)
    if vocab is not None:
        u = uniform_nats(vocab=vocab)
        ax.axhline(u, ls=":", color="tab:red", lw=1.3, label=f"uniform guess over {vocab:,} tokens: ln V = {u:.2f}")


# --------------------------------------------------------------------------- equal rounds, equal FLOPs
def _summary(d: Path) -> dict[str, Any]:
    try:
        return json.loads((d / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def _budget_runs(base: Path) -> dict[int, dict[int, Path]]:
    out: dict[int, dict[int, Path]] = {}
    for d in sorted([*base.glob("main/fedit-s*"), *base.glob("sweep/sweep-fedit-*-s*")]):
        s, seed = _summary(d), d.name.rsplit("-s", 1)[-1]
        if s.get("done") and seed.isdigit():
            out.setdefault(int(s["rounds"]), {}).setdefault(int(seed), d)  # two runs of one length: the first
    return dict(sorted(out.items()))


def fedit_budgets(root: str | Path, scale: str = "lab") -> dict[int, dict[int, Path]]:
    """FedIT trained for different numbers of rounds, ``{rounds: {seed: run folder}}``: the main
    table's cells (``results/repro/<scale>/main/fedit-s*``, 10 rounds) and the sweep's FLOP-matched
    runs (``sweep/sweep-fedit-*-s*``: the rounds of equal client FLOPs to each DevFT schedule).
    Each is a separate run (its learning-rate schedule spans its own rounds), so its final
    evaluation is what FedIT reaches with that budget. Finished runs only; where two runs have the
    same length and seed, the main table's (then the first by name) is kept."""
    return _budget_runs(Path(root) / "results" / "repro" / scale)


def _budgets_near(cells: Mapping[str, Mapping[int, Path]]) -> dict[int, dict[int, Path]]:
    """:func:`fedit_budgets` of the results folder that holds the cells' FedIT runs ({} if none)."""
    fedit = cells.get("fedit") or {}
    if not fedit:
        return {}
    d = Path(next(iter(fedit.values())))
    return _budget_runs(d.parent.parent) if d.parent.name == "main" else {}


def flops_share(root: str | Path = ".", a: str = "devft", b: str = "fedit", table: str = "main") -> float:
    """``a``'s total client FLOPs as a share of ``b``'s (mean over seeds), from the committed
    ``results/table_<table>.json`` (the main table: DevFT's ten rounds against FedIT's ten)."""
    p = Path(root) / "results" / f"table_{table}.json"
    rows = {r["key"]: r for r in json.loads(p.read_text())["rows"]}
    try:
        fa, fb = (rows[k]["metrics"]["flops_estimate"]["mean"] for k in (a, b))
    except KeyError as e:
        raise KeyError(f"{p}: rows {a!r} and {b!r} need metrics.flops_estimate (missing {e}); regenerate the "
                       f"table: devft-lab reproduce {table} --scale lab") from None
    return fa / fb


def _curve(by_seed: Mapping[int, Path]) -> list[dict[str, Any]]:
    return cm.mean_curve({s: cm.points(Path(d)) for s, d in sorted(by_seed.items())})


def figure_data(cells: Mapping[str, Mapping[int, Path]], own: Mapping[str, Path] | None = None,
                budgets: Mapping[int, Mapping[int, Path]] | str | None = "auto") -> dict[str, Any]:
    """What :func:`figure` draws: per series the evaluations (mean ± sd over seeds of ``flops``,
    ``train_s``, ``acc``, ``answer_nll``; ``round``), its seeds and whether it is a curve.

    FedIT (with ``budgets``, see :func:`fedit_budgets`; ``"auto"``: the runs beside the cells'
    FedIT) is one series through the untrained model and every FedIT run's evaluations, sorted by
    FLOPs, each point tagged with its run's length (``rounds``). Other methods: their own
    evaluations; a method evaluated only before and after training is no curve (``curve`` False:
    only its final point is drawn). ``untrained``: the untrained model's accuracy and loss."""
    if isinstance(budgets, str):
        if budgets != "auto":
            raise ValueError(f"budgets must be 'auto', None or {{rounds: {{seed: run folder}}}}, got {budgets!r}.")
        budgets = _budgets_near(cells)
    budgets = {int(r): dict(by) for r, by in (budgets or {}).items()}
    series: dict[str, dict[str, Any]] = {}
    start: list[dict] = []
    for m, by in cells.items():
        if m == "fedit" and budgets:
            rounds = _summary(Path(next(iter(by.values())))).get("rounds")
            if rounds is not None:
                budgets.setdefault(int(rounds), dict(by))
            continue
        pts = _curve(by)
        start += [p for p in pts if p["round"] == 0]
        series[m] = {"label": LABELS.get(m, m), "points": pts, "seeds": sorted(by), "curve": len(pts) > 2, "own": False}
    if budgets:
        pts, seeds = [], set()
        for r, by in sorted(budgets.items()):
            for p in _curve(by):
                if p["round"] == 0:
                    start.append(p)
                    continue
                pts.append({**p, "rounds": r})
            seeds |= set(by)
        zero = [p for p in start if p["round"] == 0][:1]
        series = {"fedit": {"label": "FedIT, one run per length (" + ", ".join(map(str, sorted(budgets))) + " rounds)",
                            "points": zero + sorted(pts, key=lambda p: p["flops"]), "seeds": sorted(seeds),
                            "curve": True, "own": False, "rounds": sorted(budgets)}, **series}
    for label, d in (own or {}).items():
        pts = cm.points(Path(d))
        series[f"own:{label}"] = {"label": f"{label} (this notebook)", "seeds": [0], "own": True, "curve": len(pts) > 2,
                                  "points": [{**p, **{f"{k}_sd": 0.0 for k in ("flops", "train_s", "acc", "answer_nll")}}
                                             for p in pts]}
    untrained = {k: (sum(p[k] for p in start) / len(start) if start and all(p.get(k) is not None for p in start)
                     else None) for k in ("acc", "answer_nll")}
    return {"series": series, "untrained": untrained}


def figure(cells: dict[str, dict[int, Path]], own: dict[str, Path] | None = None,
           budgets: Mapping[int, Mapping[int, Path]] | str | None = "auto", x: Sequence[str] = ("flops",),
           vocab: int | None = None):
    """DevFT and FedIT at equal client FLOPs: accuracy and answer loss (log scale) against the
    clients' cumulative compute, every point an evaluation (mean ± sd over seeds as error bars).

    FedIT is a real curve: one run per length (``budgets``, default the committed FLOP-matched
    runs beside the main table's, :func:`fedit_budgets`), so each of its points is what FedIT
    reaches for that many FLOPs. The vertical line marks DevFT's total, where the two are at equal
    FLOPs. The loss panels show the untrained model and the uniform guess ln V (``vocab``, or the
    vocabulary of the runs' model). ``own`` runs (label -> run folder) are single-seed series on
    top (a line where they evaluate during training, else their final point); ``x`` adds ``"train_s"`` for a row against training time. Returns the pyplot figure."""
    import matplotlib.pyplot as plt  # optional/heavy: matplotlib.pyplot

    data = figure_data(cells, own, budgets)
    series, base = data["series"], data["untrained"]
    if vocab is None:
        first = next((Path(d) for by in cells.values() for d in by.values()), None)
        vocab = vocab_size(model_of(first)) if first is not None else None
    scales = {"flops": (1e12, "cumulative client compute (TFLOPs, estimate)"),
              "train_s": (60.0, "cumulative training + aggregation time (min)")}
    fig, axes = plt.subplots(len(x), 2, figsize=(12, 4.4 * len(x)), squeeze=False)
    for row, xk in enumerate(x):
        if xk not in scales:
            raise ValueError(f"x must name flops and/or train_s, got {xk!r}.")
        sc, xlabel = scales[xk]
        for col, key in enumerate(("acc", "answer_nll")):
            ax = axes[row][col]
            for j, (name, s) in enumerate(series.items()):
                pts = [p for p in s["points"] if p.get(key) is not None]
                if not s["curve"]:
                    pts = pts[-1:]
                if not pts:
                    continue
                n = len(s["seeds"])
                label = s["label"] + ("" if s["own"] else f", {n} seed{'s' if n > 1 else ''}") + \
                    ("" if s["curve"] else ", final only")
                gap_first = name == "fedit" and "rounds" in s and len(pts) > 1 and pts[0]["round"] == 0
                if gap_first:  # no FedIT run is shorter than its first budget: no line through the unknown
                    ax.plot([pts[0][xk] / sc, pts[1][xk] / sc], [pts[0][key], pts[1][key]], ls=":", lw=1, color=f"C{j}")
                ax.errorbar([p[xk] / sc for p in pts], [p[key] for p in pts], yerr=[p[f"{key}_sd"] or 0 for p in pts],
                            xerr=[(p[f"{xk}_sd"] or 0) / sc for p in pts], marker="s" if s["own"] else "o", ms=4,
                            capsize=3, ls="none", color=f"C{j}", label=label, zorder=3)
                if s["curve"]:
                    line = pts[1:] if gap_first else pts
                    ax.plot([p[xk] / sc for p in line], [p[key] for p in line], ls="-", color=f"C{j}", zorder=2)
                for p in pts:
                    if "rounds" in p:
                        ax.annotate(f"{p['rounds']} r", (p[xk] / sc, p[key]), textcoords="offset points",
                                    xytext=(4, -10 if key == "acc" else 4), fontsize=7, color=f"C{j}")
            if "devft" in series and series["devft"]["points"]:
                ax.axvline(series["devft"]["points"][-1][xk] / sc, color="k", lw=0.8, ls="-.", alpha=0.6,
                           label="DevFT's total")
            if key == "acc":
                if base["acc"] is not None:
                    ax.axhline(base["acc"], ls="--", color="grey", lw=1, label=f"untrained model ({base['acc']:.1f} %)")
                ax.set_ylabel("accuracy on the held-out items (%)")
            else:
                loss_references(ax, base["answer_nll"], vocab)
                ax.set_yscale("log")
                ax.set_ylabel("answer loss (nats per token, log scale)")
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3, which="both")
        what = "client FLOPs" if xk == "flops" else "training time"
        axes[row][0].set_title(f"accuracy at equal {what}", fontsize=10)
        axes[row][1].set_title(f"answer loss at equal {what}", fontsize=10)
    handles: dict[str, Any] = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("Each point is an evaluation (mean ± sd over seeds). FedIT: one run per length, so each of its "
                 "points is what FedIT reaches with that many FLOPs (dotted: no shorter run).", fontsize=9)
    fig.tight_layout(rect=(0, 0.06 + 0.03 * math.ceil(len(handles) / 3), 1, 1))
    return fig


def paired_gap(cells: dict[str, dict[int, Path]], a: str = "devft", b: str = "fedit") -> dict[str, Any]:
    """``a - b`` in accuracy points, paired item by item within each seed and pooled over seeds
    (:func:`devft_lab.experiments.reproduce.stats.paired_items`), from the runs' scored items."""
    from devft_lab.runner.run import read_items  # optional/heavy: torch (devft_lab.runner.run)

    def items(m: str) -> dict[int, list[dict]]:
        out = {}
        for s, d in cells.get(m, {}).items():
            rows = read_items(Path(d) / "final_items.jsonl")
            if rows:
                out[s] = rows
        return out

    return paired_items(items(a), items(b))



# --------------------------------------------------------------------------- the paper's claims, the lab's
def load_tables(root: str | Path = ".", names: Sequence[str] = ("main", "efficiency", "ablation", "compat", "growth")
                ) -> dict[str, dict[str, Any]]:
    """The committed ``results/table_<name>.json`` reports under ``root`` (missing ones left out)."""
    out = {}
    for t in names:
        p = Path(root) / "results" / f"table_{t}.json"
        if p.exists():
            out[t] = json.loads(p.read_text())
    return out


def verdict(paper_sign: int, ci: Sequence[float] | None) -> str:
    """How a lab gap's 95% interval reads against the direction the paper reports (``paper_sign``
    +1: the paper's gap is positive, -1: negative): "same direction as the paper" or "opposite to
    the paper" when the interval excludes zero, else "not distinguishable from zero"."""
    if not ci:
        return "no lab result"
    lo, hi = ci
    if lo > 0 or hi < 0:
        return "same direction as the paper" if (lo > 0) == (paper_sign > 0) else "opposite to the paper"
    return "not distinguishable from zero"


def _minus(text: str) -> str:
    """A formatted number with a typographic minus sign."""
    return text.replace("-", "−")


def _ci_text(g: Mapping[str, Any]) -> str:
    lo, hi = g["ci95"]
    return _minus(f"{g['mean']:+.1f} [{lo:+.1f}, {hi:+.1f}]") + " points"


def claims(tables: Mapping[str, Mapping[str, Any]], sweep: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The paper's claims beside the lab's results, one row each: ``claim``, ``paper`` (the
    paper's value, LLaMA), ``lab`` (the item-paired gap with its 95% interval, or a ratio ± sd over
    seeds), ``verdict`` (:func:`verdict`) and ``gap`` (the lab's numbers). Read from the committed
    tables (:func:`load_tables`) and, for the equal-FLOPs row, the sweep report (``sweep_lab.json``)."""
    out: list[dict[str, Any]] = []
    if "main" in tables:
        t = tables["main"]
        g = t["devft_minus_fedit_items"]
        pa = t["paper"]["closed_ended_avg"]
        cols = t["paper"]["columns"]
        out.append({"claim": "DevFT scores above FedIT (same rounds)", "gap": g,
                    "paper": " / ".join(_minus(f"{pa['devft'][c] - pa['fedit'][c]:+.2f}") for c in cols)
                             + " points (" + " / ".join(cols) + ")",
                    "lab": _ci_text(g), "verdict": verdict(+1, g["ci95"])})
    if sweep:
        center = sweep["rows"][0]
        fed = next((f for f in sweep.get("fedit", []) if f["key"] == center["fedit"]), {})
        g = center["gap_vs_fedit"]
        if g.get("mean") is not None:
            out.append({"claim": "DevFT scores above FedIT at equal client FLOPs", "gap": g,
                        "paper": "not reported (the paper compares equal rounds)",
                        "lab": _ci_text(g) + f" ({fed.get('label', 'matched FedIT').split(' (')[0]})",
                        "verdict": verdict(+1, g["ci95"])})
    if "efficiency" in tables:
        t = tables["efficiency"]
        r, p = t["rounds"]["devft_first_stage"], t["paper"]["first_stage_round_llama2_7b"]
        tx, bx = r["time_s_x_less_than_full"], r["paper_bytes_x_less_than_full"]
        same = all(m["mean"] - (m["std"] or 0) > 1 for m in (tx, bx))
        out.append({"claim": f"a first-stage round ({r['capacity']} layers) costs less than a full-model round",
                    "gap": {"time_x_less": tx, "uplink_x_less": bx},
                    "paper": f"{p['time_x_less']:g}x less time, {p['comm_x_less']:g}x less communication (LLaMA2-7B)",
                    "lab": f"{tx['mean']:.1f} ± {tx['std']:.1f}x less time, {bx['mean']:.1f}x less LoRA uplink "
                           "(± sd over seeds)",
                    "verdict": "same direction as the paper" if same else "not distinguishable from 1x"})
    if "ablation" in tables:
        t = tables["ablation"]
        for r in t["rows"]:
            drop = (r.get("paper") or {}).get("drop_pct_llama31_8b")
            g = r.get("vs_ref_items") or {}
            if drop is None or g.get("mean") is None:
                continue
            variant = r["method"].split(", ", 1)[-1]
            out.append({"claim": f"{variant} scores below DevFT (ablation)", "gap": g,
                        "paper": _minus(f"{-drop:+.2f}") + " % of DevFT's score (LLaMA3.1-8B)", "lab": _ci_text(g),
                        "verdict": verdict(-1, g["ci95"])})
    if "compat" in tables:
        t = tables["compat"]
        gain = t["paper"]["llama2_7b"]["score_gain_pct"]
        for r in t["rows"]:
            g = r.get("vs_ref_items") or {}
            if g.get("mean") is not None:
                out.append({"claim": f"{r['method']} scores above {LABELS.get(g.get('ref'), g.get('ref'))}", "gap": g,
                            "paper": _minus(f"{gain:+.2f}") + " % (LLaMA2-7B)", "lab": _ci_text(g), "verdict": verdict(+1, g["ci95"])})
    if "growth" in tables:
        t = tables["growth"]
        drop = t["paper"]["drop_pct_x4_x8_vs_x2"]
        for r in t["rows"]:
            g = r.get("vs_ref_items") or {}
            if g.get("mean") is not None:
                variant = r["method"].split(", ", 1)[-1]
                out.append({"claim": f"{variant} scores below growth x2 (4 stages)", "gap": g,
                            "paper": _minus(f"{-drop:+.1f}") + " % for x4 and x8 (LLaMA2-13B, secondary source)",
                            "lab": _ci_text(g), "verdict": verdict(-1, g["ci95"])})
    return out


def claims_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """:func:`claims` as one markdown table: claim | paper | lab | verdict."""
    lines = ["| claim | paper (LLaMA) | lab (SmolLM2-135M), 95% CI | verdict |", "|---|---|---|---|"]
    lines += [f"| {r['claim']} | {r['paper']} | {r['lab']} | {r['verdict']} |" for r in rows]
    return "\n".join(lines)


def table_figure(t: dict[str, Any], root: str | Path = "."):
    """A committed table (``results/table_<name>.json``) as two panels: each row's final accuracy
    (mean ± sd over seeds, dots: the seeds; dashed: the untrained model; the y axis spans the
    values, not 0-100) and each row's gap to the table's reference row, paired item by item and
    pooled over seeds, with its 95% interval (rows without kept items are left out of the right panel)."""
    import matplotlib.pyplot as plt  # optional/heavy: matplotlib.pyplot

    rows = [r for r in t["rows"] if r.get("metrics")]
    metric = t["metric"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    ax = axes[0]
    ys: list[float] = []
    lengths: set[int] = set()
    for i, r in enumerate(rows):
        m = r["metrics"][metric]
        ax.errorbar(i, m["mean"], yerr=m.get("std") or 0, fmt="o", ms=7, capsize=5, color="tab:blue", zorder=2,
                    label="mean ± sd over seeds" if i == 0 else None)
        seeds = []
        for d in r.get("run_dirs", {}).values():
            p = Path(root) / d / "summary.json"
            if p.exists():
                summary = json.loads(p.read_text())
                seeds.append(summary["final"][metric])
                lengths.add(summary.get("rounds"))
        ax.plot([i + 0.12] * len(seeds), seeds, ".", color="black", ms=5, zorder=3,
                label="one seed" if i == 0 and seeds else None)
        ys += seeds + [m["mean"] - (m.get("std") or 0), m["mean"] + (m.get("std") or 0)]
    base = [r["metrics"].get(f"initial_{metric}", {}).get("mean") for r in rows]
    base = [b for b in base if b is not None]
    if base:
        b = sum(base) / len(base)
        ax.axhline(b, ls="--", color="grey", lw=1, label=f"untrained model ({b:.1f})")
        ys.append(b)
    if ys:
        ax.set_ylim(min(ys) - 2, max(ys) + 2)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3, axis="y")
    ax.set_xticks(range(len(rows)), [r["method"] for r in rows], rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("final accuracy (%)" if metric == "acc" else metric)
    same = f" after {lengths.pop()} rounds each" if len(lengths) == 1 and None not in lengths else ""
    ax.set_title(f"{t['table']}: final {metric}{same}, mean ± sd over seeds (dots: seeds)", fontsize=9)
    ax = axes[1]
    gaps = [(r["method"], r["vs_ref_items"]) for r in rows if r.get("vs_ref_items", {}).get("mean") is not None]
    ref = next((r["vs_ref_items"]["ref"] for r in rows if r.get("vs_ref_items")), "reference")
    for j, (name, g) in enumerate(gaps):
        lo, hi = g["ci95"]
        ax.errorbar(g["mean"], j, xerr=[[g["mean"] - lo], [hi - g["mean"]]], fmt="o", capsize=4,
                    color="tab:red" if hi < 0 else ("tab:green" if lo > 0 else "tab:grey"))
    ax.axvline(0, color="grey", lw=1)
    ax.set_yticks(range(len(gaps)), [n for n, _ in gaps], fontsize=8)
    ax.set_ylim(-0.6, len(gaps) - 0.4)
    ax.invert_yaxis()
    ax.set_xlabel(f"gap to {LABELS.get(ref, ref)} (points), item-paired, 95% CI")
    ax.set_title("item-paired gaps, pooled over seeds", fontsize=9)
    fig.tight_layout()
    return fig


def run_expectation(run_dir: str | Path, what: str = "this config") -> str:
    """"You should see A -> B % (+g, paired 95% CI [lo, hi] over N items) in about Z minutes" from
    one committed run folder (its summary, meta and scored items)."""
    from devft_lab.runner.run import read_items  # optional/heavy: torch (devft_lab.runner.run)

    d = Path(run_dir)
    s = json.loads((d / "summary.json").read_text())
    meta = json.loads((d / "meta.json").read_text()) if (d / "meta.json").exists() else {}
    a, b = read_items(d / "initial_items.jsonl"), read_items(d / "final_items.jsonl")
    ci = ""
    if a and len(a) == len(b):
        lo, hi = paired_bootstrap(a, b, n_boot=2000, seed=0)
        ci = f", paired 95% CI [{lo:+.1f}, {hi:+.1f}] over {len(a)} items"
    before, after = s["initial"]["acc"], s["final"]["acc"]
    minutes = meta.get("wall_s", s.get("wall_s", 0.0)) / 60
    return (f"You should see {what} go from {before:.1f} % to {after:.1f} % ({after - before:+.1f} points{ci}) "
            f"in about {minutes:.0f} minutes on 2 CPU cores (one committed seed, {d.name}).")
