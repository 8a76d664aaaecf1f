"""Solutions to the exercises of notebook 00 (quickstart).

Each reads committed runs under ``results/`` (the same in both profiles), prints what it finds
and asserts it. Run one from the ``notebooks/`` folder::

    python -c "import solutions.nb00 as s; s.exercise_1()"
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from devft_lab.teach.profile import repo_root

ROOT = repo_root(Path(__file__).parent)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def exercise_1() -> float:
    """Fused-layer delivery = (groups of more than one layer) x (clients served) x (one layer's bytes);
    returns one layer's MB."""
    from devft_lab.runner.report import read_run
    from devft_lab.teach.schematic import stages_from

    run = read_run(ROOT / "results" / "demo_run")
    stages, _, _ = stages_from(ROOT / "results" / "submodels_smollm2.json", config="demo")
    per_layer = []
    for s, st in enumerate(stages):
        rows = [r for r in run.rows if r["stage"] == s]
        delivered = sum(r["submodel_delivery_bytes"] for r in rows)
        clients = len({c for r in rows for c in r["extra"]["clients"]})  # each gets the fused layers once
        fused = sum(len(g) > 1 for g in st["groups"])
        print(f"stage {s + 1}: {fused} fused groups x {clients} clients -> {delivered / 1e6:.1f} MB")
        if fused == 0:
            assert delivered == 0, "a stage of singleton groups (the full model) sends no fused layer"
        else:
            assert delivered % (fused * clients) == 0
            per_layer.append(delivered // (fused * clients))
    assert len(set(per_layer)) == 1, f"one layer's bytes differ between stages: {per_layer}"
    print(f"one decoder layer: {per_layer[0] / 1e6:.1f} MB; the last stage is the full model, which clients hold already")
    return per_layer[0] / 1e6


def exercise_2() -> dict[int, float]:
    """The main table's schedule [2, 2, 3, 3]: the config, and each stage's share of the clients' FLOPs."""
    from devft_lab.runner.config import load_config, stage_rounds

    cfg = load_config("demo", ["devft.rounds_per_stage=[2,2,3,3]", "fed.num_rounds=10"])
    assert stage_rounds(cfg) == [2, 2, 3, 3] and cfg.fed.num_rounds == sum(stage_rounds(cfg))
    flops: dict[int, float] = {}
    for r in _rows(ROOT / "results" / "repro" / "lab" / "main" / "devft-s42" / "rounds.jsonl"):
        flops[r["stage"]] = flops.get(r["stage"], 0.0) + r["flops_estimate"]
    total = sum(flops.values())
    share = {s + 1: f / total for s, f in sorted(flops.items())}
    print("share of the clients' FLOPs per stage:", {s: round(v, 2) for s, v in share.items()})
    assert max(share, key=share.get) == len(share), "the last stage (the full model) costs the most"
    assert all(a < b for a, b in zip(share.values(), list(share.values())[1:])), "deeper stages cost more"
    return share


def exercise_3(n_boot: int = 4000, seed: int = 0) -> tuple[tuple[float, float], tuple[float, float]]:
    """Paired against unpaired bootstrap of the demo's gain: pairing gives the narrower interval."""
    d = ROOT / "results" / "demo_run"
    before = {r["id"]: float(r["correct"]) for r in _rows(d / "initial_items.jsonl")}
    after = {r["id"]: float(r["correct"]) for r in _rows(d / "final_items.jsonl")}
    assert set(before) == set(after), "the two evaluations scored the same items"
    ids = sorted(before)
    x, y = np.array([before[i] for i in ids]), np.array([after[i] for i in ids])
    n, rng = len(ids), np.random.default_rng(seed)
    i = rng.integers(0, n, (n_boot, n))
    paired = 100 * (y[i] - x[i]).mean(axis=1)                       # the same items before and after
    j, k = rng.integers(0, n, (n_boot, n)), rng.integers(0, n, (n_boot, n))
    unpaired = 100 * (y[k].mean(axis=1) - x[j].mean(axis=1))       # as if two unrelated samples
    p, u = tuple(np.percentile(paired, [2.5, 97.5])), tuple(np.percentile(unpaired, [2.5, 97.5]))
    gain = 100 * (y - x).mean()
    print(f"gain {gain:+.1f} points; paired 95% CI [{p[0]:+.1f}, {p[1]:+.1f}], unpaired [{u[0]:+.1f}, {u[1]:+.1f}]")
    assert p[0] < gain < p[1] and u[0] < gain < u[1]
    assert p[1] - p[0] < u[1] - u[0], "pairing removes the items' own difficulty, so its interval is narrower"
    return p, u


if __name__ == "__main__":
    exercise_1()
    exercise_2()
    exercise_3()
