"""Checkpoints of a whole federated run: atomic, pickle-free, checked on load.

Layout of one checkpoint (a folder)::

    <root>/
      LATEST                     name of the newest complete checkpoint (replaced atomically)
      round-000012/
        tensors.safetensors      all tensor groups, keys "<group>::<key>"
                                 (global LoRA, per-client states, flattened optimizer states)
        rng.safetensors          torch CPU (and CUDA) RNG states as uint8 tensors
        state.json               everything else: round, stage, groups, config hash, ledger
                                 position, python/numpy RNG states, optimizer non-tensor parts
        manifest.json            size and SHA-256 of the three files above

Saving writes everything into a temporary folder in the same parent, fsyncs it, renames
it to ``round-NNNNNN`` (``os.replace``, atomic on one filesystem), then atomically replaces
``LATEST``. Older checkpoints are removed only after that, so a crash at any point leaves
the previous complete checkpoint loadable. Loading verifies sizes and hashes and names the
file that is truncated or corrupt; :func:`load_newest` then falls back to the previous
complete checkpoint (a run keeps two) and says so. Nothing is pickled: tensors go through
safetensors, the rest through JSON.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from devft_lab.data.files import sha256_file

SEP = "::"
TENSORS = "tensors.safetensors"
RNG = "rng.safetensors"
STATE = "state.json"
MANIFEST = "manifest.json"
LATEST = "LATEST"
FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt or incompatible; the message names the file."""


class ConfigMismatchError(CheckpointError):
    """A checkpoint was saved by a run with another training config (see ``expect_config_hash``)."""


@dataclass
class Checkpoint:
    meta: dict[str, Any]  # round, stage, groups, config_hash, log_position, ... (JSON)
    tensors: dict[str, dict[str, torch.Tensor]]  # group -> state, e.g. "global", "client/3"
    path: Path | None = None
    rng: dict[str, Any] = field(default_factory=dict)
    stray: list[str] = field(default_factory=list)  # files in the folder that no checkpoint writes


# --------------------------------------------------------------------------- RNG
def capture_rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(json_part, tensor_part)`` of the python, numpy (global), torch and CUDA RNG states."""
    version, internal, gauss = random.getstate()
    npst = np.random.get_state(legacy=False)
    js = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss},
        "numpy": {
            "bit_generator": npst["bit_generator"],
            "key": [int(x) for x in npst["state"]["key"]],
            "pos": int(npst["state"]["pos"]),
            "has_gauss": int(npst["has_gauss"]),
            "gauss": float(npst["gauss"]),
        },
    }
    ts = {"torch": torch.get_rng_state().clone()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            ts[f"cuda.{i}"] = s.clone()
    return js, ts


def restore_rng_state(js: Mapping[str, Any], ts: Mapping[str, torch.Tensor]) -> None:
    """Inverse of :func:`capture_rng_state`. CUDA states are restored for the devices present."""
    if "python" in js:
        p = js["python"]
        random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "numpy" in js:
        n = js["numpy"]
        np.random.set_state({
            "bit_generator": n["bit_generator"],
            "state": {"key": np.asarray(n["key"], dtype=np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"], "gauss": n["gauss"],
        })
    if "torch" in ts:
        torch.set_rng_state(ts["torch"].to(torch.uint8).cpu())
    if torch.cuda.is_available():
        cuda = [ts[f"cuda.{i}"] for i in range(torch.cuda.device_count()) if f"cuda.{i}" in ts]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([c.cpu() for c in cuda])


# --------------------------------------------------------------------------- optimizer
def flatten_optimizer_state(sd: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a ``torch.optim`` state dict into tensors (``state.<pid>.<name>``) and JSON."""
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = v
            else:
                scalars[f"{pid}.{name}"] = v
    groups = []
    for g in sd["param_groups"]:
        groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()})
    return tensors, {"scalars": scalars, "param_groups": groups}


def unflatten_optimizer_state(tensors: Mapping[str, torch.Tensor], js: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer_state`; the result feeds ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        _, pid, name = k.split(".", 2)
        state.setdefault(int(pid), {})[name] = v
    for k, v in js.get("scalars", {}).items():
        pid, name = k.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    groups = []
    for g in js["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# --------------------------------------------------------------------------- save


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover (platforms without directory fds)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _flatten_groups(tensors: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    flat = {}
    for group, st in tensors.items():
        if SEP in group:
            raise ValueError(f"tensor group name {group!r} may not contain {SEP!r}")
        for k, v in st.items():
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"{group}{SEP}{k} is a {type(v).__name__}, not a tensor; put it in meta")
            flat[f"{group}{SEP}{k}"] = v.detach().to("cpu").contiguous().clone()
    return flat


def checkpoint_name(round_idx: int) -> str:
    return f"round-{int(round_idx):06d}"


def save_checkpoint(root: str | os.PathLike, meta: Mapping[str, Any],
                    tensors: Mapping[str, Mapping[str, torch.Tensor]], *,
                    rng: bool = True, keep: int = 1, name: str | None = None) -> Path:
    """Save a complete run state under ``root`` atomically; returns the checkpoint folder.

    ``meta`` must be JSON-serialisable (round, stage, groups, config_hash, log_position ...);
    its ``round`` names the folder unless ``name`` is given. ``tensors`` maps group names
    (``"global"``, ``"client/3"``, ``"optim/3"``) to tensor dicts. ``keep`` complete
    checkpoints are kept (the newest included); older ones are removed after the new one
    is in place.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = name or checkpoint_name(meta.get("round", 0))
    final = root / name
    try:
        meta_json = json.dumps({"format": FORMAT, "meta": dict(meta)}, allow_nan=True)
    except TypeError as e:
        raise TypeError(f"checkpoint meta must be JSON-serialisable: {e}") from None
    for stale in root.glob(".round-*.tmp-*"):  # left by a crash during an earlier save
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
    try:
        save_file(_flatten_groups(tensors), str(tmp / TENSORS))
        rng_js, rng_ts = capture_rng_state() if rng else ({}, {})
        save_file({k: v.contiguous() for k, v in rng_ts.items()}, str(tmp / RNG))
        state = json.loads(meta_json)
        state["rng"] = rng_js
        state["groups"] = sorted(tensors)
        (tmp / STATE).write_text(json.dumps(state, indent=1), encoding="utf-8")
        files = {f: {"bytes": (tmp / f).stat().st_size, "sha256": sha256_file(tmp / f)}
                 for f in (TENSORS, RNG, STATE)}
        (tmp / MANIFEST).write_text(json.dumps({"format": FORMAT, "files": files}, indent=1), encoding="utf-8")
        for f in (TENSORS, RNG, STATE, MANIFEST):
            _fsync_file(tmp / f)
        _fsync_dir(tmp)
        if final.exists():  # same name saved again: move the old one aside first
            old = root / f".{name}.old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    latest_tmp = root / f".{LATEST}.tmp-{os.getpid()}"
    latest_tmp.write_text(name + "\n", encoding="utf-8")
    _fsync_file(latest_tmp)
    os.replace(latest_tmp, root / LATEST)
    _fsync_dir(root)
    if keep >= 1:
        done = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("round-")
                      and (p / MANIFEST).exists() and p.name != name)
        for p in done[: max(0, len(done) - (keep - 1))]:
            shutil.rmtree(p, ignore_errors=True)
    return final


# --------------------------------------------------------------------------- load
def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``root`` (via ``LATEST``), or None if there is none."""
    root = Path(root)
    ptr = root / LATEST
    if ptr.is_file():
        cand = root / ptr.read_text(encoding="utf-8").strip()
        if (cand / MANIFEST).is_file():
            return cand
    done = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("round-")
                  and (p / MANIFEST).is_file()) if root.is_dir() else []
    return done[-1] if done else None


def _resolve(path: Path) -> Path:
    if (path / MANIFEST).is_file() or (path / STATE).is_file():
        return path
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is not None:
            return found
    raise CheckpointError(f"no checkpoint at {path} (expected {path / MANIFEST} or a {LATEST} file)")


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({e}); resume from an earlier checkpoint") from None


def verify_checkpoint(path: str | os.PathLike) -> Path:
    """Check sizes and hashes of a checkpoint folder; returns it or raises :class:`CheckpointError`."""
    path = _resolve(Path(path))
    mf = path / MANIFEST
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
        files = manifest["files"]
    except FileNotFoundError:
        raise CheckpointError(f"{mf} is missing: {path} is not a complete checkpoint") from None
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{mf} is corrupt ({e})") from None
    for fname, info in files.items():
        f = path / fname
        if not f.is_file():
            raise CheckpointError(f"{f} is missing from the checkpoint")
        size = f.stat().st_size
        if size != info["bytes"]:
            raise CheckpointError(f"{f} is truncated or corrupt: {size} bytes, expected {info['bytes']}")
        if sha256_file(f) != info["sha256"]:
            raise CheckpointError(f"{f} is corrupt: its SHA-256 does not match {mf}")
    return path


def load_checkpoint(path: str | os.PathLike, *, restore_rng: bool = True,
                    expect_config_hash: str | None = None,
                    map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint folder (or the newest under a root), verified; optionally restore RNGs.

    ``expect_config_hash`` (from :func:`devft_lab.runner.config.config_hash`) refuses to resume a
    run whose training-relevant config changed.
    """
    path = verify_checkpoint(path)
    try:
        state = json.loads((path / STATE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path / STATE} is corrupt ({e})") from None
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{path / STATE}: checkpoint format {state.get('format')} is not {FORMAT}")
    meta = state.get("meta", {})
    if expect_config_hash is not None and meta.get("config_hash") not in (None, expect_config_hash):
        raise ConfigMismatchError(
            f"{path}: saved with config hash {meta.get('config_hash')}, the current config has "
            f"{expect_config_hash}; resume with the same config or start a new run (out_dir)"
        )
    flat = _load_safetensors(path / TENSORS)
    groups: dict[str, dict[str, torch.Tensor]] = {g: {} for g in state.get("groups", [])}
    for k, v in flat.items():
        g, key = k.split(SEP, 1)
        groups.setdefault(g, {})[key] = v.to(map_location)
    rng_ts = _load_safetensors(path / RNG)
    rng = {"json": state.get("rng", {}), "tensors": rng_ts}
    if restore_rng:
        restore_rng_state(rng["json"], rng_ts)
    return Checkpoint(meta=meta, tensors=groups, path=path, rng=rng, stray=stray_files(path))


def stray_files(path: str | os.PathLike) -> list[str]:
    """Entries of a checkpoint folder that no save writes (names, sorted): copied in or edited by
    hand. They are not loaded; :func:`load_newest` warns about them."""
    path = Path(path)
    return sorted(p.name for p in path.iterdir() if p.name not in (TENSORS, RNG, STATE, MANIFEST))


def _own(name: str) -> bool:
    """Whether ``name`` in a checkpoint root is something :func:`save_checkpoint` writes."""
    return (name == LATEST or name.startswith("round-") or name.startswith(".round-")
            or name.startswith(f".{LATEST}.tmp-"))


def candidates(root: str | os.PathLike) -> list[Path]:
    """The checkpoint folders under ``root``, the one ``LATEST`` names first, then newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("round-")), reverse=True)
    ptr = root / LATEST
    first = root / ptr.read_text(encoding="utf-8").strip() if ptr.is_file() else None
    return ([first] if first in found else []) + [p for p in found if p != first]


def load_newest(root: str | os.PathLike, *, restore_rng: bool = True, expect_config_hash: str | None = None,
                warn=None) -> Checkpoint | None:
    """The newest checkpoint under ``root`` that loads intact, or None if there is none at all.

    A damaged newest checkpoint (a file truncated, corrupt or missing) is passed over for the
    previous complete one (runs keep two, see ``save_checkpoint(keep=2)``) and ``warn`` (a
    callable taking a message) is told which and why; files that no checkpoint writes are
    reported the same way. When every checkpoint is damaged the :class:`CheckpointError` says
    what to do. A config mismatch is never passed over."""
    warn = warn or (lambda msg: None)
    root = Path(root)
    stray = sorted(p.name for p in root.iterdir() if not _own(p.name)) if root.is_dir() else []
    if stray:
        warn(f"{root} holds {', '.join(stray)}, which no checkpoint writes; ignored (move them elsewhere)")
    damaged: list[str] = []
    for path in candidates(root):
        try:
            ck = load_checkpoint(path, restore_rng=restore_rng, expect_config_hash=expect_config_hash)
        except ConfigMismatchError:
            raise
        except CheckpointError as e:
            damaged.append(str(e))
            continue
        if damaged:
            warn(f"{damaged[0]}; resuming from the previous complete checkpoint {path.name} instead (the rounds "
                 "after it run again, with the same result)")
        if ck.stray:
            warn(f"{path} holds {', '.join(ck.stray)}, which no checkpoint writes; ignored")
        return ck
    if damaged:
        raise CheckpointError(
            f"{damaged[0]}. No older complete checkpoint is left to fall back to. To continue from round 0 "
            f"delete {root} and resume again (the round log is rebuilt from the start), or start over: "
            "devft-lab run CONFIG --force")
    return None
