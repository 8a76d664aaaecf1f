"""The efficiency table's whole-run ratios: each method's totals over DevFT's, seed by seed."""
from __future__ import annotations

import pytest

from devft_lab.experiments.reproduce.stats import Finished, efficiency


def summary(train_s: float, up: float, full: float, flops: float, acc: float = 40.0) -> dict:
    return {"train_s": train_s, "aggregate_s": 1.0, "paper_bytes": up, "full_bytes": full, "flops_estimate": flops,
            "final": {"acc": acc}, "initial": {"acc": 30.0}}


def test_whole_run_ratios_are_each_methods_totals_over_devfts_per_seed():
    fin = {"devft": Finished(summaries={1: summary(9, 100, 400, 10), 2: summary(19, 100, 400, 20)}),
           "c2a": Finished(summaries={1: summary(29, 25, 50, 15), 2: summary(39, 50, 100, 30), 3: summary(1, 1, 1, 1)})}
    out = efficiency(fin, "acc", higher=True)["whole_run_vs_devft"]
    assert set(out) == {"c2a"}  # DevFT is the denominator, not a row
    c2a = out["c2a"]
    assert c2a["time_s"]["mean"] == pytest.approx((30 / 10 + 40 / 20) / 2)  # train + aggregate
    assert c2a["paper_bytes"]["mean"] == pytest.approx((0.25 + 0.5) / 2)  # < 1: C2A sent less than DevFT
    assert c2a["full_bytes"]["mean"] == pytest.approx((50 / 400 + 100 / 400) / 2)
    assert c2a["flops"]["mean"] == pytest.approx(1.5) and c2a["flops"]["n"] == 2  # seed 3 has no DevFT run
