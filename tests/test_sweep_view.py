"""Notebook 07's views of a sweep report: data first, figures second. Nothing names a factor:
a factor or a level added to the report appears in every view."""
import matplotlib

matplotlib.use("Agg")
import math

import pytest

from devft_lab.teach import sweep_view


def _gap(mean, lo, hi):
    return {"mean": mean, "ci95": [lo, hi], "half_width": (hi - lo) / 2}


def _row(factor, level, gap, probe, key=None, fedit="f6"):
    return {"factor": factor, "level": level, "key": key or f"k-{factor}-{level}", "seeds": [42], "fedit": fedit,
            "label": f"DevFT, {factor} {level}", "metric": {"mean": 40.0, "std": 1.0},
            "gain_over_untrained": _gap(5, 1, 9), "gap_vs_fedit": gap,
            "probe": [{"stage": s, "at": at, "capacity": c, "gap": {"mean": g},
                       "sub_loss": {"mean": g + 0.8}, "full_loss": {"mean": 0.8 if s == 0 else 0.5}}
                      for s, (c, g) in enumerate(probe) for at in ("start", "end")]}


CENTER = _row("transfer", "copy", _gap(-9, -12, -6), [(4, 30.0), (30, 0.0)], key="center")
SWEEP = {"metric": "acc", "scale": "lab", "status": "complete", "runs": "results/repro/lab",
         "fedit": [{"key": "f6", "label": "FedIT, 6 rounds (FLOPs of DevFT ...)", "metric": {"mean": 47.0}},
                   {"key": "f8", "label": "FedIT, 8 rounds (FLOPs of DevFT ...)", "metric": {"mean": 48.0}}],
         "rows": [
             CENTER,
             _row("transfer", "copy-scaled", _gap(-4, -7, -1), [(4, 10.0), (30, 0.0)]),
             dict(CENTER, factor="beta", level="0.1"),
             _row("beta", "0.05", _gap(2, -1, 5), [(4, 1.0), (30, 0.0)], fedit="f8"),
             dict(_row("beta", "0.025", {"mean": None}, []), metric=None),  # not trained yet
         ]}


def test_factor_rows_keep_the_reports_order_and_reject_unknown_factors():
    assert sweep_view.factors(SWEEP) == ["transfer", "beta"]
    rows = sweep_view.factor_rows(SWEEP, "transfer")
    assert [r["level"] for r in rows] == ["copy", "copy-scaled"]
    assert rows[0]["probe_start"] == [(4, 30.0), (30, 0.0)]
    with pytest.raises(ValueError, match="transfer, beta"):
        sweep_view.factor_rows(SWEEP, "grouping")


def test_settings_list_each_devft_setting_once_center_first():
    st = sweep_view.settings(SWEEP)
    assert [s["key"] for s in st] == ["center", "k-transfer-copy-scaled", "k-beta-0.05", "k-beta-0.025"]
    assert st[0]["name"] == sweep_view.CENTER and st[2]["name"] == "beta = 0.05"
    assert st[2]["fedit"] == {"key": "f8", "acc": 48.0, "rounds": 8}
    assert sweep_view.fedit_rounds(SWEEP, "f6") == 6


def test_headline_sorts_every_level_by_its_interval_and_a_new_factor_counts():
    h = sweep_view.headline(SWEEP)
    assert h["levels"] == 4 and h["factors"] == 2 and h["settings"] == 3  # beta 0.025 has no result yet
    assert h["below"] == ["transfer = copy", "transfer = copy-scaled", "beta = 0.1"]
    assert h["level with"] == ["beta = 0.05"]
    assert h["above"] == [] and "every level" not in h["text"] and "FedIT run for 6 rounds" in h["text"]
    assert h["best"]["key"] == "k-beta-0.05"
    new = dict(SWEEP, rows=SWEEP["rows"] + [_row("schedule", "final only", _gap(3, 1, 5), [], fedit="f6")])
    h2 = sweep_view.headline(new)
    assert h2["factors"] == 3 and h2["above"] == ["schedule = final only"]
    assert "FedIT run for 6 rounds" in h2["text"]
    # a new row whose matched FedIT has no result yet is still drawn (its gap, no accuracies)
    out = sweep_view.gap_figure(dict(new, rows=new["rows"] + [_row("schedule", "restart", _gap(-1, -3, 1), [],
                                                                   fedit="f-new")]))
    assert out["settings"][-1]["fedit"] == {"key": "f-new", "acc": None, "rounds": None}
    below = dict(SWEEP, rows=[CENTER, dict(CENTER, factor="beta", level="0.1")])
    assert "every level of every factor" in sweep_view.headline(below)["text"]


def test_design_has_one_line_per_factor_with_its_matched_fedit():
    lines = sweep_view.design(SWEEP).splitlines()
    assert len(lines) == 2 + 2
    assert lines[2].startswith("| transfer | copy, copy-scaled |") and "FedIT 6 rounds" in lines[2]
    assert "FedIT 6 rounds, FedIT 8 rounds" in lines[3]


def test_gap_figure_draws_one_interval_per_setting_with_a_result():
    out = sweep_view.gap_figure(SWEEP)
    ax = out["figure"].axes[0]
    assert len(out["settings"]) == 4 and len(ax.containers) == 3  # beta 0.025 is not trained yet


def test_probe_view_marks_the_untrained_model_and_the_uniform_guess():
    assert sweep_view.untrained_loss(SWEEP) == pytest.approx(0.8)
    out = sweep_view.probe_view(SWEEP, "center", vocab=49152)
    assert [(p["capacity"], p["at"]) for p in out["stages"]] == [(4, "start"), (4, "end"), (30, "start"), (30, "end")]
    assert out["stages"][0]["sub"] == pytest.approx(30.8)
    ys = sorted(line.get_ydata()[0] for line in out["figure"].axes[0].lines if len(set(line.get_ydata())) == 1)
    assert ys == pytest.approx(sorted([0.8, math.log(49152)]))
    assert sweep_view.probe_settings(SWEEP)[0] == (sweep_view.CENTER, "center")
    with pytest.raises(ValueError, match="no setting"):
        sweep_view.probe_view(SWEEP, "nope")


def test_probe_vs_gap_pairs_the_first_stage_gap_with_the_final_gap():
    out = sweep_view.probe_vs_gap(SWEEP)
    assert [(p["probe_gap"], p["gap"]) for p in out["points"]] == [(30.0, -9), (10.0, -4), (1.0, 2)]
    assert out["spearman"] is None  # three settings are too few for a rank correlation


def test_load_sweep_reads_the_committed_report_or_says_none(tmp_path):
    assert sweep_view.load_sweep(tmp_path) is None
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "sweep_lab.json").write_text('{"rows": []}')
    assert sweep_view.load_sweep(tmp_path) == {"rows": []}


def test_controls_view_pairs_each_level_with_its_final_stage_control_and_skips_levels_without_one():
    run = dict(_row("schedule", "run", _gap(-6, -9, -3), []), control="c-run", gap_vs_control=_gap(6.7, 2.4, 11.0))
    stage = dict(_row("schedule", "stage", _gap(-4, -10, 2), []), control="c-stage",
                 gap_vs_control=_gap(2.1, -3.1, 7.1), metric={"mean": 42.9, "std": None})
    d = dict(SWEEP, rows=SWEEP["rows"] + [run, stage],
             controls=[{"key": "c-run", "label": "FedIT, last 3 rounds only", "seeds": [42], "metric": {"mean": 36.0, "std": None}},
                       {"key": "c-stage", "label": "FedIT, last 3 rounds only", "seeds": [], "metric": None}])
    v = sweep_view.controls_view(d)
    assert [x["level"] for x in v["rows"]] == ["schedule = run", "schedule = stage"]  # no control, no row
    assert v["rows"][0]["control"]["mean"] == 36.0 and v["rows"][1]["control"] is None  # not trained yet
    assert v["rows"][0]["vs_control"]["mean"] == 6.7 and v["rows"][0]["fedit"]["mean"] == 47.0
    lines = v["table"].splitlines()
    assert len(lines) == 2 + 2 and "+6.7 [+2.4, +11.0]" in lines[2] and "| – |" in lines[3]
    assert sweep_view.untrained_acc(d) == 40.0 - 5  # the first row's accuracy minus its paired gain
    assert len(v["figure"].axes[0].patches) == 2 + 1 + 2  # DevFT x2, control x1 (one trained), FedIT x2
