"""Statistics over scored items: macro averages and the paired bootstrap (devft_lab.stats)."""
from __future__ import annotations

import numpy as np
import pytest

from devft_lab.stats import bootstrap_gaps, paired_bootstrap, summarise


def test_summarise_macro_averages_tasks_then_suites():
    rows = [{"suite": "s1", "task": "a", "correct": c, "correct_norm": c} for c in (1, 1, 1, 0)]
    rows += [{"suite": "s1", "task": "b", "correct": 0, "correct_norm": 0}]
    rows += [{"suite": "s2", "task": "c", "correct": 1, "correct_norm": 0}]
    out = summarise(rows)
    assert out["suites"]["s1"]["acc"] == pytest.approx((75 + 0) / 2)
    assert out["avg"] == pytest.approx((37.5 + 100) / 2)
    assert out["avg_norm"] == pytest.approx((37.5 + 0) / 2)
    assert out["n"] == 6


def test_paired_bootstrap_interval_covers_the_gap_and_excludes_zero_when_clear():
    base = [{"suite": "s", "task": t, "id": f"{t}{i}", "correct": i % 4 == 0} for t in "ab" for i in range(80)]
    better = [{**r, "correct": r["correct"] or int(r["id"][1:]) % 4 == 1} for r in base]
    lo, hi = paired_bootstrap(base, better, seed=0)
    assert 0 < lo < 25 < hi
    assert paired_bootstrap(base, base) == (0.0, 0.0)
    with pytest.raises(ValueError, match="different items"):
        paired_bootstrap(base, better[:-1])


def test_bootstrap_replicates_centre_on_the_observed_gap():
    base = [{"suite": s, "task": t, "id": f"{s}{t}{i}", "correct": i % 3 == 0}
            for s in ("s1", "s2") for t in "ab" for i in range(40)]
    better = [{**r, "correct": r["correct"] or int(r["id"][3:]) % 3 == 1} for r in base]
    gaps = bootstrap_gaps(base, better, n_boot=4000, seed=1)
    observed = summarise([{**r, "correct_norm": 0} for r in better])["avg"] - \
        summarise([{**r, "correct_norm": 0} for r in base])["avg"]
    assert gaps.shape == (4000,)
    assert np.mean(gaps) == pytest.approx(observed, abs=0.5)
    assert np.array_equal(gaps, bootstrap_gaps(base, better, n_boot=4000, seed=1))  # seeded
