"""The plan of a reproduction: paper values, scales, variants, tables, cells, and running a cell."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence


# --------------------------------------------------------------------------- paper values
# The paper's published numbers (docs/method.md, "Published numbers"; arXiv 2508.00041,
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
    "lab": Scale("lab", "lab", (), "SmolLM2-135M on the lab v2 benchmark (devft_lab/runner/configs/lab.yaml)"),
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
# Rows of the ablation, compat and growth tables compare final scores only: their cells skip the
# evaluations at the ends of the early stages (eval is not part of the config hash; the main and
# efficiency tables keep them for the curves).
_FINAL_ONLY = ("eval.stage_ends=false",)
_FULL = ("devft.enabled=false",)
V: dict[str, Variant] = {v.key: v for v in [
    Variant("fedit", "FedIT", _FULL + ("fed.strategy=fedit",), "main"),
    Variant("dofit", "DoFIT", _FULL + ("fed.strategy=dofit",), "main"),
    Variant("c2a", "C2A", _FULL + ("fed.strategy=c2a",), "efficiency"),
    Variant("progfed", "ProgFed", ("devft.enabled=true", "devft.plan=progfed", "fed.strategy=fedit"), "main"),
    Variant("fedsa-lora", "FedSA-LoRA", _FULL + ("fed.strategy=fedsa-lora",), "main"),
    Variant("devft", "DevFT", _DEVFT, "main"),
    Variant("grouping-random", "DevFT, RANDOM grouping", _DEVFT + _FINAL_ONLY + ("devft.grouping=random",), "ablation"),
    Variant("grouping-even", "DevFT, EVEN grouping", _DEVFT + _FINAL_ONLY + ("devft.grouping=even",), "ablation"),
    Variant("grouping-contiguous", "DevFT, contiguous spectral grouping", _DEVFT + _FINAL_ONLY + ("devft.grouping=contiguous",),
            "ablation"),
    Variant("fusion-r-one", "DevFT, R-ONE fusion", _DEVFT + _FINAL_ONLY + ("devft.fusion=r-one",), "ablation"),
    Variant("fusion-sum", "DevFT, SUM fusion", _DEVFT + _FINAL_ONLY + ("devft.fusion=sum",), "ablation"),
    Variant("fedsa-lora-devft", "FedSA-LoRA + DevFT",
            ("devft.enabled=true", "devft.plan=devft", "fed.strategy=fedsa-lora") + _FINAL_ONLY, "compat"),
    Variant("growth-x4", "DevFT, growth x4 (3 stages)", _DEVFT + _FINAL_ONLY + (
        "devft.growth=4", "devft.stages=3", "devft.capacities=null", "devft.rounds_per_stage=null"), "growth"),
    Variant("growth-x8", "DevFT, growth x8 (2 stages)", _DEVFT + _FINAL_ONLY + (
        "devft.growth=8", "devft.stages=2", "devft.capacities=null", "devft.rounds_per_stage=null"), "growth"),
]}

TABLES: dict[str, tuple[str, ...]] = {
    "main": ("fedit", "dofit", "progfed", "fedsa-lora", "devft"),
    "efficiency": ("fedit", "progfed", "fedsa-lora", "c2a", "devft"),
    "ablation": ("devft", "grouping-random", "grouping-even", "grouping-contiguous", "fusion-r-one", "fusion-sum"),
    "compat": ("fedsa-lora", "fedsa-lora-devft"),
    "growth": ("devft", "growth-x4", "growth-x8"),
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
        from devft_lab.runner.config import load_config  # optional/heavy: torch (devft_lab.runner.config)

        return load_config(self.base, self.overrides(cell))

    def table_path(self, table: str, ext: str) -> Path:
        suffix = "" if self.scale.name == "lab" else f"_{self.scale.name}"
        suffix += f"_{self.tag}" if self.tag else ""
        return self.results / f"table_{table}{suffix}.{ext}"


def check_tag(tag: str, extra) -> None:
    """``--set`` overrides need a ``--tag`` (their own folders and files); a tag is a folder-name part."""
    if extra and not tag:
        raise ReproduceError("--set changes what every cell trains; add --tag NAME so these runs and their "
                             "tables and reports do not mix with the default ones.")
    if tag and not tag.replace("-", "").replace("_", "").isalnum():
        raise ReproduceError(f"--tag {tag!r}: use letters, digits, - and _ only.")


def check_table(name: str) -> str:
    if name not in TABLES:
        raise ReproduceError(f"unknown table {name!r}; known tables: {', '.join(TABLES)} (or 'all').")
    return name


def seeds_of(plan: Plan, n: int) -> list[int]:
    """``n`` seeds counting up from the base config's ``train.seed``."""
    from devft_lab.runner.config import load_config  # optional/heavy: torch (devft_lab.runner.config)

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
    """``done``, ``stale`` (its saved config trains something else), ``partial`` (resumable) or ``missing``."""
    from devft_lab.runner.config import ConfigError, config_hash, saved_config_hash  # optional/heavy: torch (devft_lab.runner.config)

    d = plan.cell_dir(cell)
    if not (d / "config.yaml").exists():
        return "missing"
    try:
        if saved_config_hash(d) != config_hash(plan.config(cell)):
            return "stale"
    except ConfigError:  # a config.yaml that is not a run config of this code
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
    from devft_lab.runner import run as runmod  # optional/heavy: torch (devft_lab.runner.run)

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

    A run matches a cell when the config hash of its saved config (training) and its ``eval``
    section are the cell's; only finished runs are taken, and a cell that already has a folder is
    left alone.
    """
    from devft_lab.runner.config import ConfigError, config_hash, load_config, saved_config_hash  # optional/heavy: torch (devft_lab.runner.config)

    by_hash = {config_hash(plan.config(c)): c for c in cells}
    notes = []
    for src in map(Path, run_dirs):
        try:
            h = saved_config_hash(src) if _json(src / "summary.json").get("done") else None
        except ConfigError as e:
            notes.append(f"{src}: not adopted ({e})")
            continue
        c = by_hash.get(h)
        if h is None:
            notes.append(f"{src}: not adopted (not a finished run folder)")
        elif c is None:
            notes.append(f"{src}: not adopted (config hash {h} matches no cell)")
        elif load_config(src / "config.yaml").eval != plan.config(c).eval:
            notes.append(f"{src}: not adopted (its eval settings differ from {c.name}'s)")
        elif plan.cell_dir(c).exists():
            notes.append(f"{src}: not adopted ({plan.cell_dir(c)} already exists)")
        else:
            plan.cell_dir(c).parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src, plan.cell_dir(c), ignore=shutil.ignore_patterns("checkpoints"))
            notes.append(f"{src}: adopted as {c.name}")
    return notes


