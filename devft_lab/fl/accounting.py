"""What a round costs: bytes up and down, FLOPs, seconds, memory -- and a ledger that logs them.

Communication is counted two ways, reported side by side:

* **paper** -- what DevFT's paper counts: the uplink of LoRA parameters only;
* **full**  -- uplink + downlink + submodel delivery (the server sending a stage's fused
  submodel weights to a client, when the runtime does so).

Bytes are ``numel * element_size`` of the tensors actually sent (dtype-aware: a bf16 LoRA
costs half of an fp32 one). Serialisation framing (headers, protobuf) is not counted.

FLOPs (:func:`training_flops`) follow the usual dense-transformer estimate (Kaplan et al.
2020): a forward pass costs ``2 N`` FLOPs per token, a backward pass ``4 N`` (``2 N`` for
the gradients w.r.t. activations, ``2 N`` w.r.t. weights), where ``N`` counts the parameters
on the path actually run -- for a DevFT stage, the submodel's decoder layers plus the LM
head (embedding lookups are free). Training therefore costs ``6 N`` per token. With LoRA
only the adapters need weight gradients, but activation gradients must still flow back
through every frozen layer down to the first adapted one, so the honest LoRA estimate is
``4 N + 6 N_lora`` per token (``lora_only=True``); ``6 N`` is the conventional upper bound.
Attention-score FLOPs (``~ 4 * layers * seq * d`` per token) are not included.
"""
from __future__ import annotations

import csv
import ctypes
import dataclasses
import functools
import io
import json
import os
import re
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch


# --------------------------------------------------------------------------- sizes
def tensor_bytes(obj: torch.Tensor | Mapping[str, torch.Tensor] | Iterable[torch.Tensor]) -> int:
    """Bytes of a tensor, a dict of tensors or an iterable of tensors: ``sum numel * element_size``."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        obj = obj.values()
    return sum(t.numel() * t.element_size() for t in obj)


def num_params(obj: torch.nn.Module | Mapping[str, torch.Tensor], trainable_only: bool = False) -> int:
    """Parameter count of a module (optionally trainable only) or of a state dict."""
    if isinstance(obj, torch.nn.Module):
        return sum(p.numel() for p in obj.parameters() if p.requires_grad or not trainable_only)
    return sum(t.numel() for t in obj.values())


def forward_flops(n_params: int, tokens: int) -> float:
    """``2 N`` FLOPs per token for a forward pass over ``N`` parameters."""
    return 2.0 * n_params * tokens


def training_flops(n_params: int, tokens: int, lora_params: int = 0, lora_only: bool = False) -> float:
    """Forward + backward FLOPs for ``tokens`` tokens through ``n_params`` parameters.

    Default ``6 N T`` (forward ``2 N T`` + backward ``4 N T``). ``lora_only=True`` gives
    ``(4 N + 6 N_lora) T``: forward, activation gradients through the frozen weights, and
    forward + both backward halves for the ``lora_params`` adapter weights.
    """
    if lora_only:
        return (4.0 * n_params + 6.0 * lora_params) * tokens
    return 6.0 * (n_params + lora_params) * tokens


# --------------------------------------------------------------------------- memory and time
def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB.

    Linux: ``VmHWM`` of ``/proc/self/status``, the high-water mark of this process's own memory
    (``getrusage``'s ``ru_maxrss`` survives ``fork`` + ``exec``, so a fresh child started by a
    large parent reports the parent's peak). Elsewhere ``getrusage`` (bytes on macOS)."""
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def rss_mb() -> float:
    """Resident memory of this process now, in MiB (Linux ``VmRSS``; elsewhere the peak)."""
    rss = _proc_status_mb("VmRSS")
    return rss if rss is not None else peak_rss_mb()


def _proc_status_mb(key: str) -> float | None:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MiB; None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Give the C heap's free pages back to the operating system (glibc ``malloc_trim(0)``).

    On a CPU, torch takes tensor memory from the C allocator. A training step's activations are
    freed when it ends, but glibc keeps the freed space in its heap, where it fragments: over a
    long run the resident memory climbs while the live tensors do not
    (``docs/performance.md#memory-over-a-long-run``). Trimming returns every whole free page, so
    between rounds the resident memory is close to what is live. Costs a fraction of a second.
    Returns False where there is no glibc (macOS, musl): nothing is done.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def cuda_peak_mb(reset: bool = False) -> float:
    """Peak CUDA memory allocated by torch in MiB since the last reset (0 without CUDA)."""
    if not torch.cuda.is_available():
        return 0.0
    v = torch.cuda.max_memory_allocated() / (1024 * 1024)
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return v


class Timer:
    """``with Timer() as t: ...``; then ``t.seconds`` (synchronises CUDA if ``cuda=True``)."""

    def __init__(self, cuda: bool = False):
        self.cuda = cuda and torch.cuda.is_available()
        self.seconds = 0.0

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self._t0
        return False


# --------------------------------------------------------------------------- records
@dataclass
class RoundCost:
    """The cost of one federated round (bytes summed over the round's clients)."""

    round: int
    stage: int = 0
    num_clients: int = 0
    uplink_bytes: int = 0  # LoRA tensors sent client -> server
    downlink_bytes: int = 0  # LoRA tensors sent server -> clients
    submodel_delivery_bytes: int = 0  # fused submodel weights sent to clients (if any)
    flops_estimate: float = 0.0
    train_s: float = 0.0
    aggregate_s: float = 0.0
    eval_s: float = 0.0
    peak_rss_mb: float = 0.0
    cuda_peak_mb: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # metrics (loss, scores), free-form


SUMMED = ("uplink_bytes", "downlink_bytes", "submodel_delivery_bytes", "flops_estimate",
          "train_s", "aggregate_s", "eval_s")
CSV_FIELDS = [f.name for f in dataclasses.fields(RoundCost) if f.name != "extra"] + [
    f"cum_{k}" for k in SUMMED] + ["cum_paper_bytes", "cum_full_bytes", "extra"]


class Ledger:
    """Accumulates :class:`RoundCost` records; appends one JSONL and one CSV line per round.

    ``position()`` is what a checkpoint stores; ``Ledger.resume(..., position)`` truncates
    the files back to it (dropping rounds logged after the checkpoint, which will be re-run)
    and rebuilds the cumulative totals from the JSONL.
    """

    def __init__(self, jsonl_path: str | os.PathLike | None = None, csv_path: str | os.PathLike | None = None):
        self.jsonl_path = Path(jsonl_path) if jsonl_path else None
        self.csv_path = Path(csv_path) if csv_path else None
        self.rows: list[dict[str, Any]] = []
        self.cum = {k: 0.0 for k in SUMMED}
        self.rebuilt: list[str] = []  # what Ledger.resume rebuilt (a log that was missing or cut short)
        for p in (self.jsonl_path, self.csv_path):
            if p is not None:
                p.parent.mkdir(parents=True, exist_ok=True)

    # recording ------------------------------------------------------------------
    def record(self, cost: RoundCost) -> dict[str, Any]:
        row = dataclasses.asdict(cost)
        for k in SUMMED:
            self.cum[k] += row[k]
            row[f"cum_{k}"] = self.cum[k]
        row["cum_paper_bytes"] = self.cum["uplink_bytes"]
        row["cum_full_bytes"] = (self.cum["uplink_bytes"] + self.cum["downlink_bytes"]
                                 + self.cum["submodel_delivery_bytes"])
        for k in row:
            if k.startswith("cum_") and k.endswith("bytes"):
                row[k] = int(row[k])
        self.rows.append(row)
        self._append(row)
        return row

    def _append(self, row: dict[str, Any]) -> None:
        if self.jsonl_path is not None:
            with open(self.jsonl_path, "a", encoding="utf-8") as f:
                f.write(jsonl_line(row))
                f.flush()
        if self.csv_path is not None:
            new = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
            with open(self.csv_path, "a", encoding="utf-8") as f:
                f.write(csv_lines([row], header=new))
                f.flush()

    # reporting ------------------------------------------------------------------
    def totals(self) -> dict[str, Any]:
        """Cumulative values, with communication both the paper's way and in full."""
        c = self.cum
        return {
            "rounds": len(self.rows),
            "paper_bytes": int(c["uplink_bytes"]),
            "full_bytes": int(c["uplink_bytes"] + c["downlink_bytes"] + c["submodel_delivery_bytes"]),
            "uplink_bytes": int(c["uplink_bytes"]),
            "downlink_bytes": int(c["downlink_bytes"]),
            "submodel_delivery_bytes": int(c["submodel_delivery_bytes"]),
            "flops_estimate": c["flops_estimate"],
            "train_s": c["train_s"],
            "aggregate_s": c["aggregate_s"],
            "eval_s": c["eval_s"],
            "peak_rss_mb": max((r["peak_rss_mb"] for r in self.rows), default=0.0),
            "cuda_peak_mb": max((r["cuda_peak_mb"] for r in self.rows), default=0.0),
        }

    def summary(self) -> str:
        t = self.totals()
        gb = 1e9
        return (f"{t['rounds']} rounds | communication: paper (LoRA uplink) {t['paper_bytes'] / gb:.4f} GB, "
                f"full (up {t['uplink_bytes'] / gb:.4f} + down {t['downlink_bytes'] / gb:.4f} + submodel "
                f"{t['submodel_delivery_bytes'] / gb:.4f}) {t['full_bytes'] / gb:.4f} GB | "
                f"{t['flops_estimate']:.3g} FLOPs | train {t['train_s']:.1f} s")

    # resume ---------------------------------------------------------------------
    def position(self) -> dict[str, int]:
        """Byte offsets and line counts of the log files (store it in a checkpoint)."""
        pos = {"rounds": len(self.rows)}
        for name, p in (("jsonl", self.jsonl_path), ("csv", self.csv_path)):
            if p is not None and p.exists():
                pos[f"{name}_bytes"] = p.stat().st_size
                with open(p, "rb") as f:
                    pos[f"{name}_lines"] = sum(1 for _ in f)
            else:
                pos[f"{name}_bytes"] = 0
                pos[f"{name}_lines"] = 0
        return pos

    @classmethod
    def resume(cls, jsonl_path, csv_path=None, position: Mapping[str, int] | None = None) -> "Ledger":
        """Reopen the logs of a run, truncated to ``position`` (from a checkpoint) if given.

        A log that is missing or shorter than the checkpoint recorded is rebuilt from the other
        one (``rounds.csv`` holds every field of ``rounds.jsonl``, and back), so the totals count
        every round; when neither holds the checkpoint's rounds, :class:`LogError` says so and
        nothing is totalled."""
        led = cls(jsonl_path, csv_path)
        if position is not None:
            led._restore(position)
        if led.jsonl_path is not None and led.jsonl_path.exists():
            led.rows = read_jsonl_log(led.jsonl_path)
            for row in led.rows:
                for k in SUMMED:
                    led.cum[k] += row.get(k, 0)
        rounds = (position or {}).get("rounds")
        if rounds is not None and led.jsonl_path is not None and len(led.rows) != int(rounds):
            raise LogError(f"{led.jsonl_path} holds {len(led.rows)} rounds but the checkpoint was saved after "
                           f"{int(rounds)}; totals over it would be wrong. Restore the file, or start the run "
                           "again (devft-lab run CONFIG --force).")
        return led

    def _restore(self, position: Mapping[str, int]) -> None:
        """Truncate each log to the checkpoint's byte offset; rebuild one that is missing or short."""
        files = {name: p for name, p in (("jsonl", self.jsonl_path), ("csv", self.csv_path)) if p is not None}
        whole, lost = {}, {}
        for name, p in files.items():
            size = int(position.get(f"{name}_bytes", p.stat().st_size if p.exists() else 0))
            have = p.stat().st_size if p.exists() else 0
            (whole if have >= size else lost)[name] = size
        for name, size in whole.items():
            with open(files[name], "r+b") if files[name].exists() else open(files[name], "wb") as f:
                f.truncate(size)
        if not lost:
            return
        rounds = position.get("rounds")
        if not whole or rounds is None:
            what = " and ".join(f"{files[n].name} ({_state(files[n])})" for n in lost)
            raise LogError(f"{what}: the checkpoint was saved after {position.get('rounds', '?')} logged rounds and "
                           "no log of the run still holds them, so its totals cannot be rebuilt. Restore the "
                           "file(s) from a backup, or start the run again (devft-lab run CONFIG --force).")
        rows = (read_jsonl_log(files["jsonl"]) if "jsonl" in whole else read_csv_log(files["csv"]))[: int(rounds)]
        if len(rows) != int(rounds):
            src = files["jsonl" if "jsonl" in whole else "csv"]
            raise LogError(f"{src} holds {len(rows)} rounds but the checkpoint was saved after {int(rounds)}, and "
                           f"{', '.join(files[n].name for n in lost)} is incomplete; start the run again "
                           "(devft-lab run CONFIG --force).")
        was = {name: "was missing" if not files[name].exists() else "was cut short" for name in lost}
        for name in lost:
            try:
                text = "".join(jsonl_line(r) for r in rows) if name == "jsonl" else csv_lines(rows, header=True)
            except KeyError as e:
                raise LogError(f"{files['jsonl'].name} has a round without the field {e}, so {files[name].name} "
                               "cannot be rebuilt from it; start the run again (devft-lab run CONFIG --force).") from None
            tmp = files[name].with_name("." + files[name].name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, files[name])
            self.rebuilt.append(f"{files[name].name} ({was[name]}) rebuilt from "
                                f"{files['csv' if name == 'jsonl' else 'jsonl'].name}: {len(rows)} rounds")


class LogError(ValueError):
    """A run's round log cannot be trusted (missing, cut short, edited); the message names the file."""


def _state(path: Path) -> str:
    return "missing" if not path.exists() else f"{path.stat().st_size} bytes, cut short"


def jsonl_line(row: Mapping[str, Any]) -> str:
    """One ledger row as a line of ``rounds.jsonl``."""
    return json.dumps(row, default=str) + "\n"


def csv_lines(rows: Iterable[Mapping[str, Any]], header: bool = False) -> str:
    """Ledger rows as lines of ``rounds.csv`` (``extra`` as JSON), the header first if asked."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    if header:
        w.writeheader()
    for row in rows:
        w.writerow({**{k: row[k] for k in CSV_FIELDS if k != "extra"}, "extra": json.dumps(row["extra"], default=str)})
    return buf.getvalue()


def read_jsonl_log(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``rounds.jsonl``; a line that is not JSON raises :class:`LogError`."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise LogError(f"{path}: line {i + 1} is not valid JSON; delete {path.name} and resume again to "
                               "rebuild it from rounds.csv, or restore it") from None
    return rows


_INT = re.compile(r"-?\d+")


def read_csv_log(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``rounds.csv`` as ``rounds.jsonl`` holds them (same keys, order and values:
    a number without a point or exponent is an int, as JSON wrote it)."""
    order = [f.name for f in dataclasses.fields(RoundCost)] + [f"cum_{k}" for k in SUMMED] + [
        "cum_paper_bytes", "cum_full_bytes"]
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        for i, rec in enumerate(csv.DictReader(f), start=2):
            try:
                row = {k: (json.loads(rec[k]) if k == "extra" else
                           int(rec[k]) if _INT.fullmatch(rec[k]) else float(rec[k])) for k in order}
            except (KeyError, TypeError, ValueError):
                raise LogError(f"{path}: line {i} is not a complete round record; restore the file, or start "
                               "the run again (devft-lab run CONFIG --force)") from None
            rows.append(row)
    return rows
