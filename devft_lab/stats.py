"""Statistics over scored items: per-suite accuracies and the paired bootstrap.

Pure numpy, importing nothing of devft_lab, so every layer may use it: the scorer
(:func:`devft_lab.core.evaluate.evaluate_suites` summarises with :func:`summarise`), the
runner, the experiments and the notebooks. A *row* is one scored item as
:func:`devft_lab.core.evaluate.score_multiple_choice` writes it, with its ``suite``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-task acc / acc_norm (percent), per-suite macro averages over tasks, and the
    macro average over suites (``avg``). ``rows`` need ``suite``, ``task``, ``correct``, ``correct_norm``;
    where every row has ``answer_nll`` its macro averages come too (``answer_nll``, nats per token)."""
    by: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in rows:
        by.setdefault(r["suite"], {}).setdefault(r["task"], []).append(r)
    suites = {}
    with_nll = bool(rows) and all("answer_nll" in r for r in rows)
    for s, tasks in by.items():
        per_task = {t: {"acc": 100.0 * np.mean([r["correct"] for r in rs]),
                        "acc_norm": 100.0 * np.mean([r["correct_norm"] for r in rs]), "n": len(rs)}
                    for t, rs in sorted(tasks.items())}
        if with_nll:
            for t, rs in tasks.items():
                per_task[t]["answer_nll"] = np.mean([r["answer_nll"] for r in rs])
        suites[s] = {"acc": float(np.mean([v["acc"] for v in per_task.values()])),
                     "acc_norm": float(np.mean([v["acc_norm"] for v in per_task.values()])),
                     "n": sum(v["n"] for v in per_task.values()),
                     "tasks": {t: {k: (float(v) if k != "n" else v) for k, v in d.items()} for t, d in per_task.items()}}
        if with_nll:
            suites[s]["answer_nll"] = float(np.mean([v["answer_nll"] for v in per_task.values()]))
    out = {"avg": float(np.mean([v["acc"] for v in suites.values()])) if suites else float("nan"),
           "avg_norm": float(np.mean([v["acc_norm"] for v in suites.values()])) if suites else float("nan"),
           "n": len(rows), "suites": suites}
    if with_nll:  # macro over suites, like ``avg``
        out["answer_nll"] = float(np.mean([v["answer_nll"] for v in suites.values()]))
    return out


def paired_bootstrap(rows_a: Sequence[dict[str, Any]], rows_b: Sequence[dict[str, Any]], n_boot: int = 2000,
                     seed: int = 0, key: str = "correct") -> tuple[float, float]:
    """95% interval of ``avg(b) - avg(a)`` (percent points) by a paired bootstrap over items.

    Items are matched by (suite, id) and resampled with replacement within each task, so
    each replicate keeps the suite/task structure of :func:`summarise`'s ``avg``.
    """
    diffs = bootstrap_gaps(rows_a, rows_b, n_boot, seed, key)
    return float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def bootstrap_gaps(rows_a: Sequence[dict[str, Any]], rows_b: Sequence[dict[str, Any]], n_boot: int = 2000,
                   seed: int = 0, key: str = "correct") -> np.ndarray:
    """``n_boot`` paired-bootstrap replicates of ``avg(b) - avg(a)`` in percent points (see
    :func:`paired_bootstrap`); averaging the replicates of several seeds pools them."""
    a = {(r["suite"], r["id"]): r for r in rows_a}
    b = {(r["suite"], r["id"]): r for r in rows_b}
    if set(a) != set(b):
        raise ValueError("paired_bootstrap: the two runs scored different items.")
    strata: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for k in sorted(a):
        strata.setdefault((k[0], a[k]["task"]), []).append(k)
    suites = sorted({s for s, _ in strata})
    rng = np.random.default_rng(seed)
    diffs = np.zeros(n_boot)
    for s in suites:
        task_keys = [v for (su, _), v in sorted(strata.items()) if su == s]
        suite_diff = np.zeros(n_boot)
        for keys in task_keys:
            d = np.array([float(b[k][key]) - float(a[k][key]) for k in keys])
            idx = rng.integers(0, len(d), size=(n_boot, len(d)))
            suite_diff += d[idx].mean(axis=1)
        diffs += suite_diff / len(task_keys)
    return 100.0 * diffs / len(suites)
