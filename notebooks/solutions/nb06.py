"""Solutions to notebook 06's exercises (reproducing the paper's tables).

They read the committed tables and runs under ``results/`` (nothing is trained), so both profiles
give the same answers. Run from ``notebooks/``:
``DEVFT_PROFILE=ci python -c "import solutions.nb06 as s; s.exercise_1()"``.
"""
from __future__ import annotations

import json

from devft_lab.teach.profile import repo_root


def _table(name: str) -> dict:
    return json.loads((repo_root() / "results" / f"table_{name}.json").read_text())


def exercise_1():
    """DevFT's share of FedIT's client FLOPs and of its LoRA uplink, from the main table. The uplink
    share is the smaller: a stage's LoRA shrinks with its layers, but its FLOPs also pay for the
    embeddings and the output head, which every stage keeps whole."""
    rows = {r["key"]: r["metrics"] for r in _table("main")["rows"] if r.get("metrics")}
    flops = rows["devft"]["flops_estimate"]["mean"] / rows["fedit"]["flops_estimate"]["mean"]
    uplink = rows["devft"]["paper_bytes"]["mean"] / rows["fedit"]["paper_bytes"]["mean"]
    print(f"DevFT / FedIT: client FLOPs {flops:.2f}, LoRA uplink {uplink:.2f}")
    assert 0 < uplink < flops < 1, "DevFT saves more uplink than FLOPs, and saves some of both"
    return {"flops": flops, "uplink": uplink}


def exercise_2():
    """One paired gap by hand: seed 42's DevFT − FedIT from the two runs' scored items, and its 95%
    paired-bootstrap interval, equal to what the main table recorded for that seed."""
    from devft_lab.stats import paired_bootstrap, summarise
    from devft_lab.runner.run import read_items

    t = _table("main")
    dirs = {r["key"]: r["run_dirs"]["42"] for r in t["rows"] if r["key"] in ("devft", "fedit")}
    devft, fedit = (read_items(repo_root() / dirs[k] / "final_items.jsonl") for k in ("devft", "fedit"))
    gap = summarise(devft)["avg"] - summarise(fedit)["avg"]
    lo, hi = paired_bootstrap(fedit, devft, n_boot=2000, seed=42)  # avg(devft) - avg(fedit)
    rec = t["devft_minus_fedit_items"]["per_seed"]["42"]
    print(f"seed 42: DevFT − FedIT {gap:+.2f} points, 95% CI [{lo:+.2f}, {hi:+.2f}] over {len(devft)} items")
    assert abs(gap - rec["gap"]) < 1e-9 and abs(lo - rec["ci95"][0]) < 1e-9 and abs(hi - rec["ci95"][1]) < 1e-9, \
        "the recomputed gap and interval are the table's"
    return gap, (lo, hi)


def exercise_3():
    """The growth table against the number of rounds each schedule trains the full model: the more
    full-model rounds (x2: 3, x4: 4, x8: 5 of 10), the higher the final accuracy."""
    t = _table("growth")
    out = []
    for r in t["rows"]:
        meta = json.loads((repo_root() / next(iter(r["run_dirs"].values())) / "meta.json").read_text())
        full = sum(n for c, n in zip(meta["capacities"], meta["stage_rounds"]) if c == meta["capacities"][-1])
        out.append((r["method"], full, r["metrics"]["acc"]["mean"]))
        print(f"{r['method']}: {full} full-model rounds, final accuracy {r['metrics']['acc']['mean']:.1f} %")
    by_rounds = [m for m, _, _ in sorted(out, key=lambda x: x[1])]
    by_acc = [m for m, _, _ in sorted(out, key=lambda x: x[2])]
    assert by_rounds == by_acc, "ranked by full-model rounds, the schedules are ranked by accuracy too"
    return out
