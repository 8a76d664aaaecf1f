"""Reproduce the paper's tables: ``devft-lab reproduce TABLE --scale smoke|lab|paper``.

A table is a list of *variants* (a method or an ablation setting, i.e. config overrides)
run over seeds; one variant x one seed is a *cell*, one run folder::

    <runs>/<scale>[-<tag>]/<home table>/<variant>-s<seed>/     (a devft_lab.runner.run folder)

A variant that several tables share (DevFT in main, ablation and growth) has one home, so
it is trained once. Re-running the command skips finished cells (``summary.json`` with
``done``), resumes killed ones (``devft_lab.runner.run.resume``) and, with ``--max-cells K``,
trains at most K new cells per sitting. Afterwards it writes ``table_<name>.json`` and
``table_<name>.md`` from whatever cells are finished: mean +- sample std over seeds, the
paper's published values beside them, the command, config hashes, machine, and a status
``partial: k of n cells`` until all are done. The Markdown's "Reading" paragraph is
generated from the numbers (signs, spreads, ratios); nothing in it is written by hand.

Scales: ``smoke`` = the ``tiny`` config cut to 4 rounds (tests, seconds per cell),
``lab`` = ``smollm2_lab`` (SmolLM2-135M, lab benchmark, ~15-30 min per cell on a CPU),
``paper`` = ``llama2_7b`` (GPU + network; ``--base llama31_8b`` or ``llama2_13b`` for the
other columns).

Choices made here (the paper leaves them open):

* Growth x4 and x8 keep the total rounds and end at the full model; x4 uses 3 stages and
  x8 2 stages (so the first stage is ~L/16 and ~L/8 layers; with 4 stages x8 would start
  below one layer). Rounds are split evenly (``devft.rounds_per_stage=null``).
* Efficiency target = FedIT's final value of the headline metric *in the same seed*; a
  run reaches it at its first evaluation at or beyond it (no interpolation). Time is
  train + aggregate wall seconds (evaluation excluded), bytes are cumulative at that eval.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

# --------------------------------------------------------------------------- paper values
# Copied from /work/shared/DEVFT_METHOD.md, section "Published numbers" (arXiv 2508.00041,
# main table of closed-ended average scores: TruthfulQA, MMLU, IFEval, BBH).
PAPER_MAIN: dict[str, dict[str, float]] = {
    "fedit": {"LLaMA2-7B": 40.27, "LLaMA3.1-8B": 55.35, "LLaMA2-13B": 48.58},
    "dofit": {"LLaMA2-7B": 40.89, "LLaMA3.1-8B": 57.79, "LLaMA2-13B": 49.74},
    "progfed": {"LLaMA2-7B": 41.00, "LLaMA3.1-8B": 60.12, "LLaMA2-13B": 50.22},
    "fedsa-lora": {"LLaMA2-7B": 40.81, "LLaMA3.1-8B": 60.97, "LLaMA2-13B": 50.84},
    "devft": {"LLaMA2-7B": 42.33, "LLaMA3.1-8B": 64.25, "LLaMA2-13B": 52.77},
}
# Same file, "Efficiency": convergence time and communication against C2A, and one round
# of DevFT's first / final stage against a full-model round (basis of 1.44x not given).
PAPER_EFFICIENCY: dict[str, Any] = {
    "time_to_convergence_h_llama2_7b": {"devft": 0.81, "c2a": 3.72, "speedup": 4.59},
    "communication_gb_llama2_13b": {"devft": 3.93, "c2a": 41.95, "reduction": 10.67},
    "first_stage_round_llama2_7b": {"time_x_less": 10.3, "comm_x_less": 4.0, "memory_x_less": 4.0},
    "last_stage_round_llama2_7b": {"time_x_faster": 1.44},
}
# Same file, "Ablations" (LLaMA3.1-8B): drop of the score against full DevFT, in "%"
# (the paper does not say whether relative or in points).
PAPER_ABLATION: dict[str, float] = {"grouping-random": 3.56, "grouping-even": 6.49, "fusion-r-one": 10.96,
                                    "fusion-sum": 3.05}
# Same file, "Compatibility": FedSA-LoRA + DevFT vs FedSA-LoRA on LLaMA2-7B.
PAPER_COMPAT: dict[str, float] = {"score_gain_pct": 3.51, "time_x_less": 3.31, "comm_x_less": 2.14}
# Same file, "Stage schedule": x4 / x8 growth cost 11.6% vs x2 on LLaMA2-13B (one secondary source).
PAPER_GROWTH: dict[str, float] = {"drop_pct_x4_x8_vs_x2": 11.6}

PAPER_COLUMNS = ("LLaMA2-7B", "LLaMA3.1-8B", "LLaMA2-13B")
PAPER_COLUMN_OF_BASE = {"llama2_7b": "LLaMA2-7B", "llama31_8b": "LLaMA3.1-8B", "llama2_13b": "LLaMA2-13B"}


class ReproduceError(ValueError):
    """A bad table, cell, scale or folder; the message says what is known and what to do."""


# --------------------------------------------------------------------------- scales, variants, tables
@dataclass(frozen=True)
class Scale:
    """A base config and the overrides every cell of this scale gets."""

    name: str
    base: str
    overrides: tuple[str, ...] = ()
    note: str = ""


SCALES: dict[str, Scale] = {
    "smoke": Scale("smoke", "tiny", ("fed.num_rounds=4", "devft.rounds_per_stage=null", "eval.holdout=8",
                                     "eval.every_n_rounds=1"),
                   "tiny random 8-layer model, 4 rounds, held-out loss: checks the machinery, not the paper"),
    "lab": Scale("lab", "smollm2_lab", (), "SmolLM2-135M on the lab benchmark (devft_lab/runner/configs/smollm2_lab.yaml)"),
    "paper": Scale("paper", "llama2_7b", (), "paper-scale config; needs a GPU, bitsandbytes and the network"),
}


@dataclass(frozen=True)
class Variant:
    """One row of a table: a method or setting, as config overrides, trained in ``home``'s folder."""

    key: str
    label: str
    overrides: tuple[str, ...]
    home: str


_DEVFT = ("devft.enabled=true", "devft.plan=devft", "fed.strategy=fedit")
_FULL = ("devft.enabled=false",)
V: dict[str, Variant] = {v.key: v for v in [
    Variant("fedit", "FedIT", _FULL + ("fed.strategy=fedit",), "main"),
    Variant("progfed", "ProgFed", ("devft.enabled=true", "devft.plan=progfed", "fed.strategy=fedit"), "main"),
    Variant("fedsa-lora", "FedSA-LoRA", _FULL + ("fed.strategy=fedsa-lora",), "main"),
    Variant("devft", "DevFT", _DEVFT, "main"),
    Variant("grouping-random", "DevFT, RANDOM grouping", _DEVFT + ("devft.grouping=random",), "ablation"),
    Variant("grouping-even", "DevFT, EVEN grouping", _DEVFT + ("devft.grouping=even",), "ablation"),
    Variant("grouping-contiguous", "DevFT, contiguous spectral grouping", _DEVFT + ("devft.grouping=contiguous",),
            "ablation"),
    Variant("fusion-r-one", "DevFT, R-ONE fusion", _DEVFT + ("devft.fusion=r-one",), "ablation"),
    Variant("fusion-sum", "DevFT, SUM fusion", _DEVFT + ("devft.fusion=sum",), "ablation"),
    Variant("fedsa-lora-devft", "FedSA-LoRA + DevFT",
            ("devft.enabled=true", "devft.plan=devft", "fed.strategy=fedsa-lora"), "compat"),
    Variant("growth-x4", "DevFT, growth x4 (3 stages)", _DEVFT + (
        "devft.growth=4", "devft.stages=3", "devft.capacities=null", "devft.rounds_per_stage=null"), "growth"),
    Variant("growth-x8", "DevFT, growth x8 (2 stages)", _DEVFT + (
        "devft.growth=8", "devft.stages=2", "devft.capacities=null", "devft.rounds_per_stage=null"), "growth"),
]}

TABLES: dict[str, tuple[str, ...]] = {
    "main": ("fedit", "progfed", "fedsa-lora", "devft"),
    "efficiency": ("fedit", "progfed", "fedsa-lora", "devft"),
    "ablation": ("devft", "grouping-random", "grouping-even", "grouping-contiguous", "fusion-r-one", "fusion-sum"),
    "compat": ("fedsa-lora", "fedsa-lora-devft"),
    "growth": ("devft", "growth-x4", "growth-x8"),
}
NOT_IMPLEMENTED: dict[str, tuple[tuple[str, str], ...]] = {
    "main": (("dofit", "DoFIT"), ("c2a", "C2A")),
    "efficiency": (("c2a", "C2A"),),
}
# Row labels in the tables that differ from the variant's own label.
ROW_LABELS = {("ablation", "devft"): "DevFT (spectral grouping + DBLF fusion)", ("growth", "devft"): "DevFT, growth x2 (4 stages)"}


@dataclass(frozen=True)
class Cell:
    """One run: a variant with one seed, at one scale."""

    variant: Variant
    seed: int

    @property
    def name(self) -> str:
        return f"{self.variant.key}-s{self.seed}"


@dataclass
class Plan:
    """Where a reproduction's runs and tables live, and what config each cell gets."""

    scale: Scale
    base: str
    extra: tuple[str, ...] = ()
    tag: str = ""
    results: Path = Path("results")
    runs: Path | None = None

    @property
    def root(self) -> Path:
        return Path(self.runs) if self.runs is not None else self.results / "repro" / (
            self.scale.name + (f"-{self.tag}" if self.tag else ""))

    def cell_dir(self, cell: Cell) -> Path:
        return self.root / cell.variant.home / cell.name

    def overrides(self, cell: Cell) -> list[str]:
        d = self.cell_dir(cell)
        return [*self.scale.overrides, *cell.variant.overrides, *self.extra, f"train.seed={cell.seed}",
                f"name={d.name}", f"out_dir={d.parent}"]

    def config(self, cell: Cell):
        from devft_lab.runner.config import load_config

        return load_config(self.base, self.overrides(cell))

    def table_path(self, table: str, ext: str) -> Path:
        suffix = "" if self.scale.name == "lab" else f"_{self.scale.name}"
        suffix += f"_{self.tag}" if self.tag else ""
        return self.results / f"table_{table}{suffix}.{ext}"


def check_table(name: str) -> str:
    if name not in TABLES:
        raise ReproduceError(f"unknown table {name!r}; known tables: {', '.join(TABLES)} (or 'all').")
    return name


def seeds_of(plan: Plan, n: int) -> list[int]:
    """``n`` seeds counting up from the base config's ``train.seed``."""
    from devft_lab.runner.config import load_config

    if n < 1:
        raise ReproduceError(f"--seeds {n}: need at least one seed.")
    first = load_config(plan.base, [*plan.scale.overrides, *plan.extra]).train.seed
    return [first + i for i in range(n)]


def cells_of(tables: Iterable[str], seeds: Sequence[int], only: Sequence[str] = ()) -> list[Cell]:
    """The cells of ``tables`` (shared variants once), optionally restricted to ``only``
    (cell names like ``devft-s42`` or variant keys like ``devft``)."""
    out: list[Cell] = []
    for t in tables:
        for key in TABLES[check_table(t)]:
            for s in seeds:
                c = Cell(V[key], s)
                if c not in out:
                    out.append(c)
    if only:
        known = {c.name for c in out} | {c.variant.key for c in out}
        bad = [o for o in only if o not in known]
        if bad:
            raise ReproduceError(f"unknown cell(s) {', '.join(bad)}; known cells: {', '.join(c.name for c in out)} "
                                 f"(or a variant: {', '.join(dict.fromkeys(c.variant.key for c in out))}).")
        out = [c for c in out if c.name in only or c.variant.key in only]
    return out


# --------------------------------------------------------------------------- cell status and running
def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except json.JSONDecodeError:
        return {}


def cell_status(plan: Plan, cell: Cell) -> str:
    """``done``, ``stale`` (finished under another config), ``partial`` (resumable) or ``missing``."""
    from devft_lab.runner.config import config_hash

    d = plan.cell_dir(cell)
    if not (d / "config.yaml").exists():
        return "missing"
    meta = _json(d / "meta.json")
    if meta.get("config_hash") and meta["config_hash"] != config_hash(plan.config(cell)):
        return "stale"
    return "done" if _json(d / "summary.json").get("done") else "partial"


def _lock(d: Path) -> Path | None:
    """Claim a cell (a lock file next to its folder); None if a live process holds it."""
    d.parent.mkdir(parents=True, exist_ok=True)
    lock = d.parent / f".{d.name}.lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
                os.kill(pid, 0)
                return None  # held by a live process
            except (ValueError, ProcessLookupError, PermissionError):
                lock.unlink(missing_ok=True)  # stale lock of a dead process
                continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return lock
    return None


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "devft_lab.cli", *args]


def run_cell(plan: Plan, cell: Cell, isolate: bool = True, quiet: bool = True, rerun_stale: bool = False) -> str:
    """Bring one cell to ``done``: skip, resume or start it. Returns what was done."""
    from devft_lab.runner import run as runmod

    status = cell_status(plan, cell)
    if status == "done":
        return "skipped (done)"
    if status == "stale" and not rerun_stale:
        raise ReproduceError(f"{plan.cell_dir(cell)} holds a run of a different config (config changed since); "
                             "pass --rerun-stale to train it again, or move the folder away.")
    d = plan.cell_dir(cell)
    lock = _lock(d)
    if lock is None:
        return "skipped (running in another process)"
    try:
        status = cell_status(plan, cell)  # again: another process may have finished it meanwhile
        if status == "done":
            return "skipped (done)"
        ov = plan.overrides(cell)
        command = "devft-lab run " + " ".join(shlex.quote(x) for x in [plan.base, *ov])
        if status == "partial":
            if isolate:
                subprocess.run(_cli(["resume", str(d), *(["--quiet"] if quiet else [])]), check=True)
            else:
                runmod.resume(d, quiet=quiet)
            return "resumed"
        if isolate:
            subprocess.run(_cli(["run", plan.base, *ov, "--force", *(["--quiet"] if quiet else [])]), check=True)
        else:
            runmod.start(plan.config(cell), force=True, quiet=quiet, command=command)
        return "started"
    finally:
        lock.unlink(missing_ok=True)


def adopt(plan: Plan, cells: Sequence[Cell], run_dirs: Iterable[str | Path]) -> list[str]:
    """Copy finished runs made elsewhere (``devft-lab run``) into the cells they match.

    A run matches a cell when its config hash (training) and its ``eval`` section are the
    cell's; only finished runs are taken, and a cell that already has a folder is left alone.
    """
    import shutil

    from devft_lab.runner.config import config_hash, load_config

    by_hash = {config_hash(plan.config(c)): c for c in cells}
    notes = []
    for src in map(Path, run_dirs):
        meta, summary = _json(src / "meta.json"), _json(src / "summary.json")
        c = by_hash.get(meta.get("config_hash", ""))
        if not summary.get("done"):
            notes.append(f"{src}: not adopted (not a finished run folder)")
        elif c is None:
            notes.append(f"{src}: not adopted (config hash {meta.get('config_hash')} matches no cell)")
        elif load_config(src / "config.yaml").eval != plan.config(c).eval:
            notes.append(f"{src}: not adopted (its eval settings differ from {c.name}'s)")
        elif plan.cell_dir(c).exists():
            notes.append(f"{src}: not adopted ({plan.cell_dir(c)} already exists)")
        else:
            plan.cell_dir(c).parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src, plan.cell_dir(c), ignore=shutil.ignore_patterns("checkpoints"))
            notes.append(f"{src}: adopted as {c.name}")
    return notes


# --------------------------------------------------------------------------- aggregation
def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (n - 1; None for one value) of finite values."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return {"mean": m, "std": sd, "n": len(xs)}


def fmt(ms: dict[str, Any] | None, digits: int = 2, scale: float = 1.0) -> str:
    """``mean ± std`` (or ``mean`` for one seed, ``-`` for none)."""
    if not ms or ms.get("mean") is None:
        return "-"
    s = f"{ms['mean'] / scale:.{digits}f}"
    return s + (f" ± {ms['std'] / scale:.{digits}f}" if ms.get("std") is not None else "")


@dataclass
class Finished:
    """The finished runs of one variant, by seed."""

    summaries: dict[int, dict] = field(default_factory=dict)
    metas: dict[int, dict] = field(default_factory=dict)
    paths: dict[int, Path] = field(default_factory=dict)


def collect(plan: Plan, cells: Sequence[Cell]) -> dict[str, Finished]:
    """Summaries of the finished (not stale) cells, by variant key."""
    out: dict[str, Finished] = {}
    for c in cells:
        f = out.setdefault(c.variant.key, Finished())
        if cell_status(plan, c) == "done":
            d = plan.cell_dir(c)
            f.summaries[c.seed] = _json(d / "summary.json")
            f.metas[c.seed] = _json(d / "meta.json")
            f.paths[c.seed] = d
    return out


def headline(summaries: Iterable[dict]) -> tuple[str, bool]:
    """The metric tables compare by: ``acc`` (higher is better) if evaluated, else ``eval_loss``."""
    keys = {k for s in summaries for k in s.get("final", {})}
    return ("acc", True) if "acc" in keys else ("eval_loss", False)


def row_metrics(summaries: dict[int, dict]) -> dict[str, dict[str, Any]]:
    """Mean ± std over seeds of final metrics, initial metric and totals."""
    ss = list(summaries.values())
    keys = sorted({k for s in ss for k in s.get("final", {})})
    out = {k: mean_std([s["final"].get(k) for s in ss if k in s.get("final", {})]) for k in keys}
    for k in sorted({k for s in ss for k in s.get("initial", {}) if k != "eval_s"}):
        out[f"initial_{k}"] = mean_std([s["initial"][k] for s in ss if k in s.get("initial", {})])
    out["train_s"] = mean_std([s.get("train_s", 0) + s.get("aggregate_s", 0) for s in ss])
    for k in ("paper_bytes", "full_bytes", "uplink_bytes", "downlink_bytes", "submodel_delivery_bytes",
              "flops_estimate", "peak_rss_mb", "cuda_peak_mb"):
        out[k] = mean_std([s.get(k) for s in ss if k in s])
    return out


def paired(a: dict[int, dict], b: dict[int, dict], metric: str) -> dict[str, Any]:
    """a - b of ``final[metric]`` over the seeds both have: mean ± std of per-seed differences."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s]["final"][metric] - b[s]["final"][metric] for s in seeds
             if metric in a[s].get("final", {}) and metric in b[s].get("final", {})]
    return {**mean_std(diffs), "seeds": seeds}


def ratio(a: dict[int, dict], b: dict[int, dict], get: Callable[[dict], float | None]) -> dict[str, Any]:
    """b / a per seed (how many times less ``a`` needs than ``b``), mean ± std."""
    vals = []
    for s in sorted(set(a) & set(b)):
        x, y = get(a[s]), get(b[s])
        if x and y is not None:
            vals.append(y / x)
    return mean_std(vals)


def _wall(s: dict) -> float:
    return s.get("train_s", 0.0) + s.get("aggregate_s", 0.0)


# --------------------------------------------------------------------------- efficiency helpers
def reach(curve: tuple[list[float], list[float], list[float], list[float]], target: float,
          higher: bool) -> dict[str, float] | None:
    """Wall s, paper bytes and full bytes at the first evaluation at or beyond ``target``."""
    t, pb, fb, v = curve
    for i, x in enumerate(v):
        if (x >= target) if higher else (x <= target):
            return {"time_s": t[i], "paper_bytes": pb[i], "full_bytes": fb[i], "value": x}
    return None


def stage_round_costs(rows: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Mean per-round cost of the first and the last stage of one run (stage = ``row['stage']``)."""
    if not rows:
        return {}
    stages = sorted({r["stage"] for r in rows})

    def mean_of(sel: list[dict]) -> dict[str, float]:
        n = len(sel)
        return {"time_s": sum(r["train_s"] + r["aggregate_s"] for r in sel) / n,
                "paper_bytes": sum(r["uplink_bytes"] for r in sel) / n,
                "full_bytes": sum(r["uplink_bytes"] + r["downlink_bytes"] + r["submodel_delivery_bytes"]
                                  for r in sel) / n,
                "flops": sum(r["flops_estimate"] for r in sel) / n,
                "peak_rss_mb": max(r["peak_rss_mb"] for r in sel),
                "cuda_peak_mb": max(r["cuda_peak_mb"] for r in sel),
                "capacity": sel[0].get("extra", {}).get("capacity"), "rounds": n}

    return {"first": mean_of([r for r in rows if r["stage"] == stages[0]]),
            "last": mean_of([r for r in rows if r["stage"] == stages[-1]])}


def efficiency(fin: dict[str, Finished], metric: str, higher: bool) -> dict[str, Any]:
    """Time/bytes to FedIT's final value (per seed), and DevFT's stage rounds vs a full-model round."""
    from devft_lab.runner.report import read_run

    ref = fin.get("fedit", Finished())
    finals = {s: ref.summaries[s]["final"][metric] for s in ref.summaries if metric in ref.summaries[s].get("final", {})}
    initials = {s: ref.summaries[s].get("initial", {}).get(metric) for s in finals}

    def improved(s: int) -> bool:  # a target only where FedIT beat the untrained model of that seed
        i = initials[s]
        return i is None or (finals[s] > i if higher else finals[s] < i)

    targets = {s: v for s, v in finals.items() if improved(s)}
    out: dict[str, Any] = {"target": {"definition": f"FedIT's final {metric} in the same seed, where it improves on "
                                                    f"the untrained model's (other seeds have no target)",
                                      **mean_std(list(targets.values())), "per_seed": targets,
                                      "no_target_seeds": sorted(s for s in finals if s not in targets)},
                           "to_target": {}, "rounds": {}}
    reached: dict[str, dict[int, dict]] = {}
    for key, f in fin.items():
        per: dict[int, dict] = {}
        for s, path in f.paths.items():
            if s in targets:
                per[s] = reach(read_run(path).curve(metric), targets[s], higher) or {}
        reached[key] = per
        hit = {s: r for s, r in per.items() if r}
        out["to_target"][key] = {
            "reached": f"{len(hit)} of {len(per)}",
            "time_s": mean_std([r["time_s"] for r in hit.values()]),
            "paper_bytes": mean_std([r["paper_bytes"] for r in hit.values()]),
            "full_bytes": mean_std([r["full_bytes"] for r in hit.values()]),
        }
    base = reached.get("fedit", {})
    for key, per in reached.items():
        for q in ("time_s", "paper_bytes", "full_bytes"):
            vals = [base[s][q] / per[s][q] for s in per if per[s] and base.get(s) and per[s][q] > 0]
            out["to_target"][key][f"{q}_x_less_than_fedit"] = mean_std(vals)
    dev_hit = reached.get("devft", {})
    out["devft_vs"] = {key: {q: mean_std([per[s][q] / dev_hit[s][q] for s in per
                                          if per[s] and dev_hit.get(s) and dev_hit[s][q] > 0])
                             for q in ("time_s", "paper_bytes", "full_bytes")}
                       for key, per in reached.items() if key != "devft"}
    # per-round cost: DevFT's first / last stage against FedIT's full-model rounds
    def rounds_of(f: Finished) -> dict[int, list[dict]]:
        return {s: read_run(p).rows for s, p in f.paths.items()}

    dev = {s: stage_round_costs(r) for s, r in rounds_of(fin.get("devft", Finished())).items()}
    full = {s: stage_round_costs(r)["last"] for s, r in rounds_of(ref).items() if r}
    for which in ("first", "last"):
        per_q: dict[str, Any] = {}
        for q in ("time_s", "paper_bytes", "full_bytes", "flops", "peak_rss_mb", "cuda_peak_mb"):
            per_q[q] = mean_std([d[which][q] for d in dev.values() if d])
            per_q[f"{q}_x_less_than_full"] = mean_std(
                [full[s][q] / dev[s][which][q] for s in dev if dev[s] and s in full and dev[s][which][q] > 0])
        per_q["capacity"] = next((d[which]["capacity"] for d in dev.values() if d), None)
        out["rounds"][f"devft_{which}_stage"] = per_q
    out["rounds"]["full_model"] = {q: mean_std([f[q] for f in full.values()])
                                   for q in ("time_s", "paper_bytes", "full_bytes", "flops", "peak_rss_mb",
                                             "cuda_peak_mb")}
    return out


# --------------------------------------------------------------------------- readings (generated)
def _sign(ms: dict[str, Any], unit: str = " points", digits: int = 2) -> str:
    if ms.get("mean") is None:
        return "not computable yet (no seed finished for both)"
    m, sd, n = ms["mean"], ms["std"], ms["n"]
    spread = (f", std {sd:.{digits}f} over {n} seeds" if sd is not None else ", one seed (no spread)")
    settled = ("" if sd is None else " — the spread is larger than the gap, so the sign is not settled"
               if abs(m) <= sd else " — larger than its spread")
    return f"{m:+.{digits}f}{unit}{spread}{settled}"


def _direction(gap: dict[str, Any], paper_positive: bool = True) -> str:
    if gap.get("mean") is None:
        return "cannot be compared yet"
    if gap["mean"] == 0:
        return "shows no difference (the paper reports one)"
    return "has the paper's direction" if (gap["mean"] > 0) == paper_positive else "is opposite to the paper's"


def reading(table: str, fin: dict[str, Finished], metric: str, higher: bool, extra: dict[str, Any]) -> str:
    """A factual paragraph from the numbers: gaps with their spread, and the paper's direction."""
    better = 1 if higher else -1
    name = "score" if metric == "acc" else metric
    lines: list[str] = []
    unit, digits = (" points", 2) if metric == "acc" else ("", 3)

    def sign(g: dict[str, Any]) -> str:
        return _sign(g, unit, digits)

    def rel(g: dict[str, Any], ref: str) -> str:
        """The gap as a percentage of the reference's mean score (accuracy only)."""
        base = row_metrics(fin[ref].summaries).get(metric, {}).get("mean") if fin.get(ref, Finished()).summaries else None
        if metric != "acc" or g.get("mean") is None or not base:
            return ""
        return f" ({100 * g['mean'] / base:+.1f}% of {V[ref].label}'s score)"

    def gap(a: str, b: str) -> dict[str, Any]:
        g = paired(fin.get(a, Finished()).summaries, fin.get(b, Finished()).summaries, metric)
        if g["mean"] is not None and not higher:  # express as improvement: positive = better
            g = {**g, "mean": -g["mean"]}
        return g

    if table == "main":
        g = gap("devft", "fedit")
        lines.append(f"DevFT − FedIT ({'improvement in ' + name}, paired by seed): {sign(g)}{rel(g, 'fedit')}. "
                     f"The paper reports +2.06 (LLaMA2-7B), +8.90 (LLaMA3.1-8B), +4.19 (LLaMA2-13B); "
                     f"this lab gap {_direction(g)}.")
        means = {k: row_metrics(f.summaries).get(metric, {}).get("mean") for k, f in fin.items() if f.summaries}
        order = [k for k, _ in sorted(((k, v) for k, v in means.items() if v is not None),
                                      key=lambda kv: better * kv[1])]
        if len(order) > 1:
            paper_order = [k for k in ("fedit", "progfed", "fedsa-lora", "devft") if k in order]
            same = "the same as" if order == paper_order else "different from"
            lines.append(f"Lab order, worst to best by mean: {' < '.join(V[k].label for k in order)}; "
                         f"{same} the paper's order ({' < '.join(V[k].label for k in paper_order)}).")
        for k in ("progfed", "fedsa-lora"):
            g2 = gap("devft", k)
            if g2["mean"] is not None:
                lines.append(f"DevFT − {V[k].label}: {sign(g2)}.")
    elif table == "ablation":
        drops = {}
        for k in TABLES["ablation"][1:]:
            g = gap("devft", k)  # positive = the variant is worse than DevFT = a drop
            drops[k] = g
            paper = f"; paper drop {PAPER_ABLATION[k]:.2f}%" if k in PAPER_ABLATION else ""
            lines.append(f"{V[k].label}: drop vs full DevFT {sign(g)}{rel(g, 'devft')}{paper}; this {_direction(g)}."
                         if k in PAPER_ABLATION else
                         f"{V[k].label}: drop vs full DevFT {sign(g)}{rel(g, 'devft')} (not in the paper).")
        have = {k: d["mean"] for k, d in drops.items() if d["mean"] is not None and k in PAPER_ABLATION}
        if len(have) > 1:
            lab = sorted(have, key=lambda k: -have[k])
            pap = sorted(have, key=lambda k: -PAPER_ABLATION[k])
            lines.append(f"Largest to smallest drop, lab: {', '.join(lab)}; paper: {', '.join(pap)} "
                         f"({'same' if lab == pap else 'different'} order).")
    elif table == "compat":
        g = gap("fedsa-lora-devft", "fedsa-lora")
        a, b = fin.get("fedsa-lora-devft", Finished()).summaries, fin.get("fedsa-lora", Finished()).summaries
        t = ratio(a, b, _wall)
        c = ratio(a, b, lambda s: s.get("paper_bytes"))
        fl = ratio(a, b, lambda s: s.get("flops_estimate"))
        lines.append(f"FedSA-LoRA + DevFT − FedSA-LoRA: {sign(g)}{rel(g, 'fedsa-lora')}; the paper reports +"
                     f"{PAPER_COMPAT['score_gain_pct']}% on LLaMA2-7B; this {_direction(g)}.")
        lines.append(f"Training time {fmt(t)}x less (paper {PAPER_COMPAT['time_x_less']}x), client FLOPs "
                     f"{fmt(fl)}x less, LoRA uplink {fmt(c)}x less (paper {PAPER_COMPAT['comm_x_less']}x).")
    elif table == "growth":
        for k in ("growth-x4", "growth-x8"):
            g = gap("devft", k)
            lines.append(f"x2 − {k[-2:]} (positive: x2 is better): {sign(g)}{rel(g, k)}; the paper (one secondary source) says x4/x8 cost "
                         f"{PAPER_GROWTH['drop_pct_x4_x8_vs_x2']}% on LLaMA2-13B; this {_direction(g)}.")
    elif table == "efficiency":
        tt = extra.get("to_target", {})
        none = extra.get("target", {}).get("no_target_seeds") or []
        if none:
            lines.append(f"FedIT ended at or below the untrained model's {metric} in seed(s) "
                         f"{', '.join(map(str, none))}: no target there, so those seeds are left out of the "
                         "to-target columns (every method would 'reach' it before training).")
        for k in ("devft", "progfed", "fedsa-lora"):
            if k in tt and not tt[k]["time_s"]["n"]:
                lines.append(f"{V[k].label} did not reach FedIT's final {metric} ({tt[k]['reached']} seeds).")
            elif k in tt:
                e = tt[k]
                lines.append(f"{V[k].label} reached FedIT's final {metric} in {e['reached']} seeds; time "
                             f"{fmt(e['time_s_x_less_than_fedit'])}x less than FedIT, LoRA uplink "
                             f"{fmt(e['paper_bytes_x_less_than_fedit'])}x less (x > 1: faster / cheaper).")
        for k, v in extra.get("devft_vs", {}).items():
            if v["time_s"]["n"]:
                lines.append(f"Where both reached the target, DevFT needed {fmt(v['time_s'])}x less time and "
                             f"{fmt(v['paper_bytes'])}x less LoRA uplink than {V[k].label} "
                             f"({v['time_s']['n']} seeds).")
        r = extra.get("rounds", {})
        f1, fl = r.get("devft_first_stage", {}), r.get("devft_last_stage", {})
        if f1.get("time_s", {}).get("mean") is not None:
            lines.append(f"One round of DevFT's first stage ({f1.get('capacity')} layers) vs a full-model round: "
                         f"time {fmt(f1['time_s_x_less_than_full'])}x less (paper 10.3x), uplink "
                         f"{fmt(f1['paper_bytes_x_less_than_full'])}x less (paper 4x); last stage time "
                         f"{fmt(fl['time_s_x_less_than_full'])}x less (paper 1.44x faster). The paper's 4.59x / 10.67x "
                         "headline ratios are against C2A, which is not implemented here.")
        lines.append("Memory: peak RSS and CUDA peak are process peaks up to that round (never reset, and the "
                     "simulation holds the full model), so they bound a client's per-stage memory rather than "
                     "measure it; the paper's 4x memory claim is not tested by these columns.")
    same = [V[k].label for k, f in fin.items() if f.summaries and all(
        s.get("final") and all(s["initial"].get(m) == v for m, v in s["final"].items())
        for s in f.summaries.values())]
    if same:
        lines.append(f"{', '.join(same)} ended with exactly the base model's scores on every suite: at this "
                     "training budget its adapter left the net correctness of the evaluated answers unchanged, "
                     "so its gaps above are the other rows moving, not it.")
    caveat = _timing_caveat(fin) if table in ("compat", "efficiency") else ""
    if caveat:
        lines.append(caveat)
    return " ".join(lines)


def _timing_caveat(fin: dict[str, Finished]) -> str:
    """A warning when the cells' wall times were measured under different settings."""
    machines = {m.get("machine", "?") for f in fin.values() for m in f.metas.values()}
    if len(machines) < 2:
        return ""
    return (f"Caution: these cells were trained under {len(machines)} different machine settings (see 'Runs "
            "trained on'; on a shared CPU the load differs between sittings too), so wall-time ratios mix "
            "method and machine; the FLOPs and byte ratios do not depend on the machine.")


# --------------------------------------------------------------------------- building a table
def _capacities(plan: Plan, key: str, f: Finished) -> list[int] | None:
    """Layers per stage of a variant's finished runs (one stage, the full model, without DevFT/ProgFed)."""
    caps = next((s["capacities"] for s in f.summaries.values() if s.get("capacities")), None)
    if caps and not plan.config(Cell(V[key], next(iter(f.summaries)))).devft.enabled:
        return caps[-1:]
    return caps


def build_table(plan: Plan, table: str, seeds: Sequence[int], command: str) -> dict[str, Any]:
    """The JSON of one table from the finished cells."""
    from devft_lab.runner.config import config_hash
    from devft_lab.runner.run import machine

    cells = cells_of([table], seeds)
    fin = collect(plan, cells)
    done = sum(len(f.summaries) for f in fin.values())
    metric, higher = headline(s for f in fin.values() for s in f.summaries.values())
    column = PAPER_COLUMN_OF_BASE.get(plan.base)
    rows = []
    for key in TABLES[table]:
        f = fin[key]
        row: dict[str, Any] = {
            "key": key, "method": ROW_LABELS.get((table, key), V[key].label), "overrides": list(V[key].overrides),
            "metrics": row_metrics(f.summaries) if f.summaries else {},
            "seeds": sorted(f.summaries), "cells": f"{len(f.summaries)} of {len(seeds)}",
            "capacities": _capacities(plan, key, f),
            "config_hashes": {c.name: config_hash(plan.config(c)) for c in cells if c.variant.key == key},
            "run_dirs": {str(s): str(p) for s, p in f.paths.items()},
        }
        if table == "main":
            row["paper"] = PAPER_MAIN.get(key, {})
        elif table == "ablation" and key != "devft":
            row["vs_devft"] = paired(fin["devft"].summaries, f.summaries, metric)
            row["paper"] = {"drop_pct_llama31_8b": PAPER_ABLATION.get(key)}
        elif table == "growth" and key != "devft":
            row["vs_x2"] = paired(fin["devft"].summaries, f.summaries, metric)
        rows.append(row)
    for key, label in NOT_IMPLEMENTED.get(table, ()):
        rows.append({"key": key, "method": label, "status": "not implemented", "metrics": {}, "seeds": [],
                     "cells": "0 of 0", "paper": PAPER_MAIN.get(key, {}) if table == "main" else {}})
    paper: dict[str, Any] = {"main": {"columns": list(PAPER_COLUMNS), "closed_ended_avg": PAPER_MAIN},
                             "efficiency": PAPER_EFFICIENCY, "ablation": {"drop_pct_llama31_8b": PAPER_ABLATION},
                             "compat": {"llama2_7b": PAPER_COMPAT}, "growth": PAPER_GROWTH}[table]
    extra: dict[str, Any] = {}
    if table == "efficiency":
        extra = efficiency(fin, metric, higher)
    elif table == "compat":
        a, b = fin["fedsa-lora-devft"].summaries, fin["fedsa-lora"].summaries
        extra = {"gain": paired(a, b, metric), "time_x_less": ratio(a, b, _wall),
                 "paper_bytes_x_less": ratio(a, b, lambda s: s.get("paper_bytes")),
                 "full_bytes_x_less": ratio(a, b, lambda s: s.get("full_bytes"))}
    elif table == "main":
        extra = {"devft_minus_fedit": paired(fin["devft"].summaries, fin["fedit"].summaries, metric)}
    total = len(cells)
    machines = sorted({m.get("machine", "?") for f in fin.values() for m in f.metas.values()})
    return {
        "table": table, "scale": plan.scale.name, "base_config": plan.base, "extra_overrides": list(plan.extra),
        "status": "complete" if done == total else f"partial: {done} of {total} cells",
        "cells_done": done, "cells_total": total, "metric": metric, "higher_is_better": higher,
        "paper_column": column, "rows": rows, **extra, "paper": paper,
        "reading": reading(table, fin, metric, higher, extra),
        "command": command, "machine": machine(), "run_machines": machines, "scale_note": plan.scale.note,
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def to_markdown(t: dict[str, Any]) -> str:
    """The Markdown twin of a table's JSON."""
    m, unit = t["metric"], ("score, %" if t["metric"] == "acc" else "lower is better")
    out = [f"# Table: {t['table']} ({t['scale']} scale)", "",
           f"**Status: {t['status']}.** Metric: final `{m}` ({unit}), mean ± sample std over finished seeds.", "",
           f"Command: `{t['command']}`  ", f"Base config: `{t['base_config']}` {t['extra_overrides'] or ''} "
           f"({t['scale_note']})  ", f"Machine: {t['machine']}  "]
    if t["run_machines"]:
        out.append(f"Runs trained on: {'; '.join(t['run_machines'])}")
    out.append("")
    suites = sorted({k for r in t["rows"] for k in r["metrics"] if k.startswith("acc_")})
    if t["table"] != "efficiency":
        cols = ["method", "stage layers", f"final {m}", *suites, f"initial {m}", "train+agg s", "LoRA uplink MB", "full MB",
                "seeds", "cells"]
        paper_cols = (list(PAPER_COLUMNS) if t["table"] == "main" and not t["paper_column"]
                      else [t["paper_column"]] if t["table"] == "main" else [])
        head = cols + [f"paper {c}" for c in paper_cols]
        if t["table"] in ("ablation", "growth"):
            pts = " (points)" if m == "acc" else ""
            head.insert(3, f"drop vs DevFT x2{pts}" if t["table"] == "growth" else f"drop vs DevFT{pts}")
            if t["table"] == "ablation":
                head.insert(4, "paper drop %")
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in t["rows"]:
            if r.get("status") == "not implemented":
                cells = [r["method"], "-", "not implemented"] + ["-"] * (len(head) - 3 - len(paper_cols))
            else:
                x = r["metrics"]
                caps = "→".join(map(str, r["capacities"])) if r.get("capacities") else "-"
                cells = [r["method"], caps, fmt(x.get(m), 3 if m == "eval_loss" else 2),
                         *[fmt(x.get(s)) for s in suites], fmt(x.get(f"initial_{m}"), 3 if m == "eval_loss" else 2),
                         fmt(x.get("train_s"), 1), fmt(x.get("paper_bytes"), 2, 1e6), fmt(x.get("full_bytes"), 2, 1e6),
                         ", ".join(map(str, r["seeds"])) or "-", r["cells"]]
                if t["table"] in ("ablation", "growth"):
                    d = r.get("vs_devft") or r.get("vs_x2")
                    d = {**d, "mean": -d["mean"]} if d and d.get("mean") is not None and not t["higher_is_better"] else d
                    cells.insert(3, fmt(d, 3 if m == "eval_loss" else 2) if d else "(reference)")
                    if t["table"] == "ablation":
                        p = (r.get("paper") or {}).get("drop_pct_llama31_8b")
                        cells.insert(4, f"{p:.2f}" if p is not None else "-")
            cells += [f"{r['paper'][c]:.2f}" if c in r.get("paper", {}) else "-" for c in paper_cols]
            out.append("| " + " | ".join(cells) + " |")
    else:
        out += [f"Target: {t['target']['definition']} = {fmt(t['target'])}.", "",
                "| method | reached | time to target s | LoRA uplink MB to target | full MB to target | "
                "time x less than FedIT | uplink x less than FedIT | seeds | cells |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in t["rows"]:
            if r.get("status") == "not implemented":
                out.append(f"| {r['method']} | not implemented | - | - | - | - | - | - | - |")
                continue
            e = t["to_target"].get(r["key"], {})
            out.append(f"| {r['method']} | {e.get('reached', '-')} | {fmt(e.get('time_s'), 1)} | "
                       f"{fmt(e.get('paper_bytes'), 2, 1e6)} | {fmt(e.get('full_bytes'), 2, 1e6)} | "
                       f"{fmt(e.get('time_s_x_less_than_fedit'))} | {fmt(e.get('paper_bytes_x_less_than_fedit'))} | "
                       f"{', '.join(map(str, r['seeds'])) or '-'} | {r['cells']} |")
        rr = t["rounds"]
        out += ["", "Per-round cost (mean over a stage's rounds, then over seeds):", "",
                "| round | layers | time s | LoRA uplink KB | full KB | GFLOP | peak RSS MB | CUDA peak MB | "
                "time x less | uplink x less | full x less | FLOP x less |", "|" + "---|" * 12]
        for label, key in (("DevFT first stage", "devft_first_stage"), ("DevFT last stage", "devft_last_stage"),
                           ("full model (FedIT)", "full_model")):
            q = rr.get(key, {})
            xs = [fmt(q.get(f"{k}_x_less_than_full")) if key != "full_model" else "1"
                  for k in ("time_s", "paper_bytes", "full_bytes", "flops")]
            out.append(f"| {label} | {q.get('capacity', 'all')} | {fmt(q.get('time_s'), 3)} | "
                       f"{fmt(q.get('paper_bytes'), 1, 1e3)} | {fmt(q.get('full_bytes'), 1, 1e3)} | "
                       f"{fmt(q.get('flops'), 2, 1e9)} | {fmt(q.get('peak_rss_mb'), 0)} | "
                       f"{fmt(q.get('cuda_peak_mb'), 0)} | {' | '.join(xs)} |")
        pe = PAPER_EFFICIENCY
        out += ["", f"Paper: convergence time LLaMA2-7B DevFT {pe['time_to_convergence_h_llama2_7b']['devft']} h vs "
                f"C2A {pe['time_to_convergence_h_llama2_7b']['c2a']} h; communication LLaMA2-13B "
                f"{pe['communication_gb_llama2_13b']['devft']} GB vs C2A {pe['communication_gb_llama2_13b']['c2a']} GB; "
                "first-stage round 10.3x less time, 4x less communication, 4x less memory; final stage 1.44x faster."]
    if t["table"] == "main" and not t["paper_column"]:
        out += ["", "Paper columns are the published LLaMA results (closed-ended average of TruthfulQA, MMLU, "
                "IFEval, BBH); the lab score is the lab benchmark's suite average on a 135M model — compare "
                "directions and gaps, not levels."]
    out += ["", "## Reading (generated from the numbers above)", "", t["reading"] or "No finished cells yet.", ""]
    if t["status"] != "complete":
        out += [f"These numbers come from {t['status']}; finish the rest with the command above.", ""]
    if t.get("written_reading"):
        w = t["written_reading"]
        out += [f"## Reading (written; `{w['path']}`, kept when the table is regenerated)", "", w["text"], ""]
    out += ["Config hashes (devft_lab.runner.config.config_hash) per cell:", ""]
    for r in t["rows"]:
        for c, h in r.get("config_hashes", {}).items():
            out.append(f"- `{c}`: `{h}`")
    return "\n".join(out) + "\n"


def written_reading_path(plan: Plan, table: str) -> Path:
    """``RESULTS/readings/<table file name>.md``: a reading written by a person, kept across regenerations
    (the generated reading states the numbers; this one says why they may be so)."""
    return plan.results / "readings" / plan.table_path(table, "md").name


def write_table(plan: Plan, table: str, seeds: Sequence[int], command: str) -> tuple[Path, Path]:
    data = build_table(plan, table, seeds, command)
    js, md = plan.table_path(table, "json"), plan.table_path(table, "md")
    written = written_reading_path(plan, table)
    if written.exists():
        data["written_reading"] = {"path": str(written), "text": written.read_text(encoding="utf-8").strip()}
    js.parent.mkdir(parents=True, exist_ok=True)
    js.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    md.write_text(to_markdown(data), encoding="utf-8")
    return js, md


# --------------------------------------------------------------------------- command line
def add_reproduce_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``reproduce`` to a ``devft-lab`` subparsers object (``func`` = :func:`run_args`)."""
    p = subparsers.add_parser("reproduce", help="regenerate the paper's tables (resumable)",
                              description=__doc__.split("\n\n")[0])
    _arguments(p)
    p.set_defaults(func=run_args)
    return p


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("table", help=f"one of {', '.join(TABLES)}, or all")
    p.add_argument("--scale", default="lab", choices=list(SCALES), help="smoke (tiny, tests), lab (SmolLM2-135M), "
                   "paper (LLaMA, GPU)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per variant (default 3)")
    p.add_argument("--only", nargs="+", default=(), metavar="CELL", help="only these cells (devft-s42) or variants")
    p.add_argument("--max-cells", type=int, default=None, metavar="K", help="train at most K new cells this sitting")
    p.add_argument("--dry-run", action="store_true", help="list the cells and their status; train nothing")
    p.add_argument("--base", help="another base config (e.g. llama31_8b at paper scale); its name becomes the tag")
    p.add_argument("--set", nargs="+", default=(), metavar="KEY=VALUE", dest="extra",
                   help="overrides for every cell (e.g. model.name=gemma3-270m); needs --tag")
    p.add_argument("--tag", default="", help="name for a non-default setup: its own runs folder and table files")
    p.add_argument("--results", default="results", help="where tables (and repro/ runs) go (default results)")
    p.add_argument("--runs", default=None, help="runs folder (default RESULTS/repro/SCALE[-TAG])")
    p.add_argument("--in-process", action="store_true", help="train cells in this process (default: one "
                   "subprocess per cell, so memory figures and crashes stay per cell)")
    p.add_argument("--adopt", nargs="+", default=(), metavar="RUN_DIR", help="copy finished runs made with "
                   "`devft-lab run` into the cells whose config they match (saves retraining them)")
    p.add_argument("--rerun-stale", action="store_true", help="retrain cells whose folder holds another config")
    p.add_argument("--quiet", action="store_true", help="no progress bars from the runs")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="devft-lab reproduce", description=__doc__.split("\n\n")[0])
    _arguments(p)
    return p


def plan_of(args) -> Plan:
    scale = SCALES[args.scale]
    base = args.base or scale.base
    tag = args.tag or (Path(base).stem if base != scale.base and not args.extra else "")
    if args.extra and not tag:
        raise ReproduceError("--set changes what every cell trains; add --tag NAME so these runs and "
                             "tables do not mix with the default ones.")
    if tag and not tag.replace("-", "").replace("_", "").isalnum():
        raise ReproduceError(f"--tag {tag!r}: use letters, digits, - and _ only.")
    return Plan(scale, base, tuple(args.extra), tag, Path(args.results), Path(args.runs) if args.runs else None)


# Options that only pace or narrow a sitting: the table they write is the same without them.
_SITTING_OPTIONS = {"--max-cells": 1, "--only": -1, "--adopt": -1, "--quiet": 0, "--in-process": 0}


def table_command(argv: Sequence[str]) -> str:
    """The command a table records: the invocation without sitting options (``--max-cells``,
    ``--only``, ``--adopt``, ``--quiet``, ``--in-process``), i.e. the one that trains every cell."""
    out, i = [], 0
    argv = list(argv)
    while i < len(argv):
        a = argv[i]
        name = a.split("=", 1)[0]
        if name in _SITTING_OPTIONS:
            n = _SITTING_OPTIONS[name]
            i += 1
            if "=" in a or n == 0:
                continue
            if n == 1:
                i += 1
            else:  # all values up to the next option
                while i < len(argv) and not argv[i].startswith("-"):
                    i += 1
            continue
        out.append(a)
        i += 1
    return "devft-lab reproduce " + " ".join(shlex.quote(a) for a in out)


def run_args(args, argv: Sequence[str] | None = None, echo: Callable[[str], None] = print) -> int:
    """Run a parsed ``reproduce`` command: cells first (resumable), then the tables."""
    tables = list(TABLES) if args.table == "all" else [check_table(args.table)]
    plan = plan_of(args)
    seeds = seeds_of(plan, args.seeds)
    cells = cells_of(tables, seeds, args.only)
    for note in ([] if args.dry_run else adopt(plan, cells, args.adopt)):
        echo(note)
    command = table_command(argv if argv is not None else sys.argv[2:])
    if args.dry_run:
        for c in cells:
            echo(f"{c.name:28s} {cell_status(plan, c):8s} {plan.cell_dir(c)}")
        todo = sum(cell_status(plan, c) != "done" for c in cells)
        echo(f"{len(cells)} cells, {todo} to train; runs in {plan.root}")
        return 0
    if args.max_cells is not None and args.max_cells < 0:
        raise ReproduceError(f"--max-cells {args.max_cells}: give K >= 0.")
    trained, failed = 0, []
    for c in cells:
        if cell_status(plan, c) == "done":
            continue
        if args.max_cells is not None and trained >= args.max_cells:
            echo(f"stopping: --max-cells {args.max_cells} reached; run the command again to continue.")
            break
        echo(f"[{time.strftime('%H:%M:%S')}] {c.name}: training ({cell_status(plan, c)})")
        t0 = time.perf_counter()
        try:
            what = run_cell(plan, c, isolate=not args.in_process, quiet=args.quiet, rerun_stale=args.rerun_stale)
        except Exception as e:  # one failed cell must not end a long sitting; it is reported and resumable
            failed.append(c.name)
            echo(f"{c.name}: FAILED ({e}); the next run of this command resumes it.")
            continue
        trained += what in ("started", "resumed")
        echo(f"[{time.strftime('%H:%M:%S')}] {c.name}: {what} in {time.perf_counter() - t0:.0f} s")
    for t in tables:
        js, md = write_table(plan, t, seeds, command)
        echo(f"{t}: {json.loads(js.read_text())['status']} -> {js}, {md}")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m devft_lab.experiments.reproduce TABLE [options]`` (same as ``devft-lab reproduce``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return run_args(args, argv)
    except ValueError as e:  # ReproduceError and ConfigError
        print(f"devft-lab reproduce: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
