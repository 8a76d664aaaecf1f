"""Solutions to notebook 07's exercises (when does developmental tuning pay off?).

They read the committed sweep report and its run folders (nothing is trained), so both profiles
give the same answers. Run from ``notebooks/``:
``DEVFT_PROFILE=ci python -c "import solutions.nb07 as s; s.exercise_1()"``.
"""
from __future__ import annotations

import json

from devft_lab.teach import sweep_view
from devft_lab.teach.profile import repo_root


def _meta(sweep: dict, key: str) -> dict:
    """The meta.json of a cell's first seed (DevFT settings shared with the ablation live beside it)."""
    runs = repo_root() / sweep.get("runs", "results/repro/lab")
    return json.loads(next(iter(sorted(runs.glob(f"*/{key}-s*/meta.json")))).read_text())


def exercise_1():
    """Full-model rounds: every DevFT schedule with more than one stage trains the full model in
    fewer rounds than its FLOP-matched FedIT (the center: 3 against 6)."""
    sweep = sweep_view.load_sweep(repo_root())
    out = []
    for s in sweep_view.settings(sweep):
        m = _meta(sweep, s["key"])
        full = sum(n for c, n in zip(m["capacities"], m["stage_rounds"]) if c == m["capacities"][-1])
        fedit = s["fedit"]["rounds"]
        out.append((s["name"], len(m["capacities"]), full, fedit))
        print(f"{s['name']}: {m['capacities']} x {m['stage_rounds']}: {full} full-model rounds; matched FedIT {fedit}")
    staged = [(n, full, fedit) for n, stages, full, fedit in out if stages > 1]
    assert staged and all(full < fedit for _, full, fedit in staged), \
        "every staged schedule gives the full model fewer rounds than FLOP-matched FedIT"
    return out


def ranks(xs):
    """Ranks 1..n of ``xs``; tied values share the mean of their ranks."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def exercise_2():
    """Spearman's rho by hand: the Pearson correlation of the ranks of the stage-1 probe gap and of
    DevFT − matched FedIT, over the settings with a probe; equal to the report's ``probe_correlation``."""
    sweep = sweep_view.load_sweep(repo_root())
    pts = sweep_view.probe_vs_gap(sweep)["points"]
    a, b = ranks([p["probe_gap"] for p in pts]), ranks([p["gap"] for p in pts])
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    rho = cov / (sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b)) ** 0.5
    print(f"Spearman rho over {len(pts)} settings: {rho:+.3f} (report: {sweep['probe_correlation']['rho']:+.3f})")
    assert abs(rho - sweep["probe_correlation"]["rho"]) < 1e-9, "the hand-computed rho is the report's"
    return rho


def exercise_3():
    """How far from a guess? The first submodel's probe loss at its start against a uniform guess
    (ln V): the center's starts far above it; every setting's last stage (the full model) ends far below."""
    from devft_lab.teach import lab_view

    sweep = sweep_view.load_sweep(repo_root())
    uniform = lab_view.uniform_nats(sweep_view.sweep_model(sweep, repo_root()))
    out = {}
    for name, key in sweep_view.probe_settings(sweep):
        st = sweep_view.probe_view(sweep, key, uniform)["stages"]
        out[name] = (st[0]["sub"] / uniform, st[-1]["sub"] / uniform)
        print(f"{name}: stage 1 starts at {out[name][0]:.2f} x ln V, the last stage ends at {out[name][1]:.3f} x ln V")
    center = out[sweep_view.CENTER]
    assert center[0] > 1, "the center's first submodel predicts worse than a uniform guess"
    assert all(end < 0.1 for _, end in out.values()), "every run's full model ends far below a uniform guess"
    return out


def exercise_4():
    """Learned and forgotten, by hand: in each paper-regime run of seed 42, count the unseen items
    that went wrong -> right and right -> wrong. Their difference is the change of the item-level
    accuracy, and the counts are ``paper_regime.flips``'s. Most runs move many more items than
    their net gain suggests: a small net is a difference of two larger movements."""
    from devft_lab.experiments import paper_regime
    from devft_lab.runner.run import read_items

    out = {}
    for d in sorted((repo_root() / "results" / "repro" / "paper_regime").glob("paper_*_s42")):
        init = paper_regime.only(read_items(d / "initial_items.jsonl"), paper_regime.UNSEEN)
        final_rows = paper_regime.only(read_items(d / "final_items.jsonl"), paper_regime.UNSEEN)
        final = {(r["suite"], r["id"]): bool(r["correct"]) for r in final_rows}
        learned = sum(final[r["suite"], r["id"]] and not r["correct"] for r in init)
        forgotten = sum(bool(r["correct"]) and not final[r["suite"], r["id"]] for r in init)
        change = sum(final.values()) - sum(bool(r["correct"]) for r in init)
        assert learned - forgotten == change, "learned - forgotten is the change in correct items"
        f = paper_regime.flips(init, final_rows)
        assert abs(f["learned"] - 100 * learned / len(init)) < 1e-9 and abs(f["forgotten"] - 100 * forgotten / len(init)) < 1e-9
        out[d.name] = (learned, forgotten, len(init))
        print(f"{d.name}: {learned} learned, {forgotten} forgotten of {len(init)} unseen items (net {change:+d})")
    assert out, "no paper-regime runs of seed 42 under results/repro/paper_regime"
    return out
