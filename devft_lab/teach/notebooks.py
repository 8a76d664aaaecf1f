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

Uses ``nbclient`` and ``nbformat`` (installed by the ``test`` extra).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

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
            for out in cell.get("outputs", []):
                out.get("metadata", {}).pop("transient", None)
                out.pop("transient", None)


def execute(path: str | Path, timeout: float = 1800, save: bool = True, env: dict | None = None) -> float:
    """Run every code cell of the notebook at ``path`` in a fresh ``python3`` kernel of this
    Python (nbclient, working directory: the notebook's folder); store outputs (``save``);
    return the wall time in seconds. Raises ``nbclient.exceptions.CellExecutionError`` on a cell error."""
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=False,
                            store_widget_state=False, record_timing=False, coalesce_streams=True,
                            resources={"metadata": {"path": str(path.parent.resolve())}})
    t0 = time.perf_counter()
    client.execute(env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - t0
    clean(nb)
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
    args = p.parse_args(argv)
    import nbformat

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
