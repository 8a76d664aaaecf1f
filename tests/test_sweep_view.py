"""Notebook 07's views of a sweep report: data first, figures second."""
import matplotlib

matplotlib.use("Agg")
import pytest

from devft_lab.teach import sweep_view


def _gap(mean, lo, hi):
    return {"mean": mean, "ci95": [lo, hi], "half_width": (hi - lo) / 2}


def _row(factor, level, gap, probe):
    return {"factor": factor, "level": level, "key": f"k-{factor}-{level}", "seeds": [42], "fedit": "f",
            "metric": {"mean": 40.0}, "gain_over_untrained": _gap(5, 1, 9), "gap_vs_fedit": gap,
            "probe": [{"stage": s, "at": at, "capacity": c, "gap": {"mean": g}}
                      for s, (c, g) in enumerate(probe) for at in ("start", "end")]}


SWEEP = {"metric": "acc", "scale": "lab", "status": "complete", "rows": [
    _row("transfer", "copy", _gap(-9, -12, -6), [(4, 30.0), (30, 0.0)]),
    _row("transfer", "copy-scaled", _gap(-4, -7, -1), [(4, 10.0), (30, 0.0)]),
    _row("beta", "0.05", _gap(2, -1, 5), [(4, 1.0), (30, 0.0)]),
    dict(_row("beta", "0.025", {"mean": None}, []), metric=None),  # not trained yet
]}


def test_factor_rows_keep_the_reports_order_and_reject_unknown_factors():
    assert sweep_view.factors(SWEEP) == ["transfer", "beta"]
    rows = sweep_view.factor_rows(SWEEP, "transfer")
    assert [r["level"] for r in rows] == ["copy", "copy-scaled"]
    assert rows[0]["probe_start"] == [(4, 30.0), (30, 0.0)]
    with pytest.raises(ValueError, match="transfer, beta"):
        sweep_view.factor_rows(SWEEP, "grouping")


def test_small_multiples_has_one_column_per_factor_and_marks_each_interval():
    out = sweep_view.small_multiples(SWEEP)
    axes = out["figure"].axes
    assert out["factors"] == ["transfer", "beta"] and len(axes) == 4
    # one error bar per level that has a gap (beta 0.025 has none yet)
    assert [len(ax.containers) for ax in axes[:2]] == [2, 1]


def test_probe_vs_gap_pairs_the_first_stage_gap_with_the_final_gap():
    out = sweep_view.probe_vs_gap(SWEEP)
    assert [(p["probe_gap"], p["gap"]) for p in out["points"]] == [(30.0, -9), (10.0, -4), (1.0, 2)]
    assert out["spearman"] is None  # three settings are too few for a rank correlation


def test_factor_view_returns_its_rows_and_a_two_panel_figure():
    out = sweep_view.factor_view(SWEEP, "beta")
    assert [r["level"] for r in out["rows"]] == ["0.05", "0.025"] and len(out["figure"].axes) == 2
    assert out["rows"][1]["acc"] is None


def test_load_sweep_reads_the_committed_report_or_says_none(tmp_path):
    assert sweep_view.load_sweep(tmp_path) is None
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "sweep_lab.json").write_text('{"rows": []}')
    assert sweep_view.load_sweep(tmp_path) == {"rows": []}
