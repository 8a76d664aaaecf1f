"""Notebook tooling: checks that nbval compares, and an executor (nbclient) that commits clean outputs.

``check`` prints one profile-independent line per fact, so a notebook's checked cells give
the same output on the tiny CI model and on SmolLM2 (see notebooks/README.md)::

    check("every layer is in exactly one group", sorted(sum(groups, [])) == list(range(L)))
    # -> ✓ every layer is in exactly one group        (raises AssertionError when false)

Execute notebooks in place (kernel ``python3`` of this environment, outputs kept, widget
state stripped, kernelspec normalised)::

    python -m devft_lab.teach.notebooks run notebooks/01_building_submodels.ipynb [...]
    DEVFT_PROFILE=ci python -m devft_lab.teach.notebooks run --no-save notebooks/*.ipynb   # smoke
    python -m devft_lab.teach.notebooks clean notebooks/*.ipynb                            # metadata only

Provenance: a notebook names the files its outputs are made from (configs, ``results/``
files, data) in its metadata, ``"devft_lab": {"inputs": ["results/table_main.json", ...]}``
(paths from the repository root; a glob counts as one input). A full-profile run records
their hashes there (``input_hashes``) and the profile (``profile``);
``tests/test_notebook_provenance.py`` recomputes them and fails when a committed notebook's
outputs are older than one of its inputs::

    python -m devft_lab.teach.notebooks stale notebooks/*.ipynb       # which notebooks to re-run, and why

Uses ``nbclient`` and ``nbformat`` (installed by the ``test`` extra).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def check(statement: str, condition: object) -> None:
    """Print ``✓ statement`` when ``condition`` is true, else raise AssertionError(statement)."""
    if not bool(condition):
        raise AssertionError(f"check failed: {statement}")
    print(f"✓ {statement}")


def clean(nb) -> None:
    """Normalise a notebook in place: kernelspec python3, no widget state, no cell ids churn."""
    nb.metadata.pop("widgets", None)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            # a widget's view is only a "HBox(children=...)" line without a live kernel; the
            # static figure that devft_lab.teach.widgets.interact draws below it is what a reader sees
            cell["outputs"] = [o for o in cell.get("outputs", []) if WIDGET_MIME not in o.get("data", {})]
            for out in cell.get("outputs", []):
                out.get("metadata", {}).pop("transient", None)
                out.pop("transient", None)


META_KEY = "devft_lab"


def repo_root_of(path: str | Path) -> Path:
    """The repository folder above a notebook (the first parent holding ``pyproject.toml``)."""
    path = Path(path).resolve()
    for p in path.parents:
        if (p / "pyproject.toml").is_file():
            return p
    raise FileNotFoundError(f"{path} is not inside a repository with a pyproject.toml")


def input_hashes(inputs: list[str], root: str | Path) -> dict[str, str]:
    """SHA-256 (16 hex digits) of each declared input, read from ``root``. A glob hashes its
    matching files' names and contents together; a missing input hashes to ``"missing"``."""
    root = Path(root)
    out = {}
    for pattern in inputs:
        files = sorted(p for p in root.glob(pattern) if p.is_file())
        if not files:
            out[pattern] = "missing"
            continue
        h = hashlib.sha256()
        for f in files:
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
        out[pattern] = h.hexdigest()[:16]
    return out


def stale_inputs(nb_meta: Mapping[str, Any], root: str | Path) -> list[str]:
    """Why a notebook's committed outputs are stale: one line per reason ([] when current)."""
    meta = nb_meta.get(META_KEY) or {}
    inputs, recorded = list(meta.get("inputs") or []), dict(meta.get("input_hashes") or {})
    if not inputs:
        return ["it names no inputs (metadata.devft_lab.inputs)"]
    reasons = []
    if meta.get("profile") != "full":
        reasons.append(f"its outputs come from the {meta.get('profile', 'unknown')!r} profile, not 'full'")
    now = input_hashes(inputs, root)
    for k in inputs:
        if k not in recorded:
            reasons.append(f"{k}: no hash recorded (added after the last run)")
        elif now[k] != recorded[k]:
            reasons.append(f"{k} changed since the outputs were made" if now[k] != "missing" else f"{k} is missing")
    return reasons


def execute(path: str | Path, timeout: float = 1800, save: bool = True, env: dict | None = None) -> float:
    """Run every code cell of the notebook at ``path`` in a fresh ``python3`` kernel of this
    Python (nbclient, working directory: the notebook's folder); store outputs (``save``);
    return the wall time in seconds. Raises ``nbclient.exceptions.CellExecutionError`` on a cell error."""
    import nbformat  # optional/heavy: nbformat
    from nbclient import NotebookClient  # optional/heavy: nbclient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=False,
                            store_widget_state=False, record_timing=False, coalesce_streams=True,
                            resources={"metadata": {"path": str(path.parent.resolve())}})
    t0 = time.perf_counter()
    client.execute(env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - t0
    clean(nb)
    meta = nb.metadata.setdefault(META_KEY, {})
    meta["profile"] = (env or {}).get("DEVFT_PROFILE") or os.environ.get("DEVFT_PROFILE", "full") or "full"
    meta["input_hashes"] = input_hashes(list(meta.get("inputs") or []), repo_root_of(path))
    if save:
        nbformat.write(nb, path)
    return seconds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m devft_lab.teach.notebooks", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="execute notebooks in place")
    r.add_argument("paths", nargs="+")
    r.add_argument("--no-save", action="store_true", help="execute only (a smoke test)")
    r.add_argument("--timeout", type=float, default=1800, help="seconds per cell")
    c = sub.add_parser("clean", help="strip widget state, normalise the kernelspec")
    c.add_argument("paths", nargs="+")
    st = sub.add_parser("stale", help="list notebooks whose outputs are older than their inputs")
    st.add_argument("paths", nargs="+")
    args = p.parse_args(argv)
    import nbformat  # optional/heavy: nbformat

    if args.cmd == "stale":
        bad = 0
        for path in args.paths:
            nb = nbformat.read(path, as_version=4)
            reasons = stale_inputs(nb.metadata, repo_root_of(path))
            bad += bool(reasons)
            print(f"{path}: " + ("current" if not reasons else "stale: " + "; ".join(reasons)))
        sys.exit(1 if bad else 0)
    for path in args.paths:
        if args.cmd == "clean":
            nb = nbformat.read(path, as_version=4)
            clean(nb)
            nbformat.write(nb, path)
            print(f"cleaned {path}")
        else:
            seconds = execute(path, timeout=args.timeout, save=not args.no_save)
            size = Path(path).stat().st_size / 1e6
            print(f"{path}: {seconds:.1f} s, {size:.2f} MB", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
