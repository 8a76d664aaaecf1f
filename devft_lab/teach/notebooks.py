"""Notebook tooling: checks that nbval compares, and a small executor that commits clean outputs.

``check`` prints one profile-independent line per fact, so a notebook's checked cells give
the same output on the tiny CI model and on SmolLM2 (see notebooks/README.md)::

    check("every layer is in exactly one group", sorted(sum(groups, [])) == list(range(L)))
    # -> ✓ every layer is in exactly one group        (raises AssertionError when false)

Execute notebooks in place (kernel ``python3`` of this environment, outputs kept, widget
state stripped, kernelspec normalised)::

    python -m devft_lab.teach.notebooks run notebooks/01_building_submodels.ipynb [...]
    DEVFT_PROFILE=ci python -m devft_lab.teach.notebooks run --no-save notebooks/*.ipynb   # smoke
    python -m devft_lab.teach.notebooks clean notebooks/*.ipynb                            # metadata only

Uses ``jupyter_client`` and ``nbformat`` (installed with nbval by the ``test`` extra).
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
    Python; store outputs (``save``); return the wall time in seconds. Raises on a cell error."""
    import nbformat
    from jupyter_client.manager import start_new_kernel
    from nbformat.v4 import output_from_msg

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    kenv = {**os.environ, **(env or {})}
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(path.parent.resolve()), env=kenv,
                              extra_arguments=[])
    try:
        count = 0
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            outputs: list = []
            display_ids: dict[str, list[int]] = {}

            def hook(msg, outputs=outputs, display_ids=display_ids):
                kind = msg["msg_type"]
                content = msg["content"]
                if kind == "clear_output":
                    outputs.clear()
                    display_ids.clear()
                    return
                if kind == "update_display_data":
                    did = content.get("transient", {}).get("display_id")
                    for k in display_ids.get(did, []):
                        outputs[k] = output_from_msg({**msg, "msg_type": "display_data"})
                    return
                if kind in ("stream", "display_data", "execute_result", "error"):
                    out = output_from_msg(msg)
                    did = content.get("transient", {}).get("display_id")
                    if did:
                        display_ids.setdefault(did, []).append(len(outputs))
                    if kind == "stream" and outputs and outputs[-1].get("output_type") == "stream" \
                            and outputs[-1]["name"] == out["name"]:
                        outputs[-1]["text"] += out["text"]
                    else:
                        outputs.append(out)

            reply = kc.execute_interactive(cell.source, timeout=timeout, output_hook=hook, allow_stdin=False)
            count += 1
            cell.outputs = outputs
            cell.execution_count = count
            if reply["content"]["status"] == "error":
                tb = "\n".join(reply["content"].get("traceback", []))
                raise RuntimeError(f"{path}: cell {index} failed:\n{tb}")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
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
