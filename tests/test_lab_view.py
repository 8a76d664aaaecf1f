"""devft_lab.teach.lab_view: FedIT as a curve at equal client FLOPs, loss references, and the paper's
claims against the lab's (notebooks 00, 04, 06)."""
import json
import math

import matplotlib

matplotlib.use("Agg")
import pytest

from devft_lab.teach import lab_view


def _run(d, rounds, flops_per_round, acc, evals=None, done=True, model="tiny-llama"):
    """A finished run folder: ``acc(r)`` after round r (1-based) at the rounds in ``evals`` (default: the last)."""
    d.mkdir(parents=True)
    evals = set(evals or [rounds])
    rows = [{"round": r, "cum_flops_estimate": flops_per_round * (r + 1), "cum_train_s": 10.0 * (r + 1),
             "cum_aggregate_s": 0.0, "uplink_bytes": 1,
             "extra": {"capacity": 8, "loss": 1.0, **({"acc": acc(r + 1), "answer_nll": 1.0 / (r + 2)}
                                                      if r + 1 in evals else {})}} for r in range(rounds)]
    (d / "rounds.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (d / "initial_eval.json").write_text(json.dumps({"acc": 30.0, "answer_nll": 1.0}))
    (d / "summary.json").write_text(json.dumps({"done": done, "rounds": rounds, "initial": {"acc": 30.0},
                                                "final": {"acc": acc(rounds)}}))
    (d / "config.yaml").write_text(f"model:\n  name: {model}\n")
    return d


@pytest.fixture()
def lab(tmp_path):
    """main/ with FedIT (10 rounds) and DevFT (4 evaluations); sweep/ with FedIT of 6 and 8 rounds."""
    base = tmp_path / "results" / "repro" / "lab"
    for s in (42, 43):
        _run(base / "main" / f"fedit-s{s}", 10, 6.0, lambda r, s=s: 30 + 2 * r + (s - 42))
        _run(base / "main" / f"devft-s{s}", 10, 4.0, lambda r: 30 + r, evals=[2, 4, 7, 10])
        _run(base / "sweep" / f"sweep-fedit-l8-s{s}", 6, 6.0, lambda r: 30 + 2 * r)
        _run(base / "sweep" / f"sweep-fedit-l2-s{s}", 8, 6.0, lambda r: 30 + 2 * r)
    _run(base / "sweep" / "sweep-fedit-l4-s42", 7, 6.0, lambda r: 0.0, done=False)  # unfinished: left out
    return tmp_path


def test_fedit_budgets_group_finished_fedit_runs_by_their_length(lab):
    b = lab_view.fedit_budgets(lab)
    assert sorted(b) == [6, 8, 10] and all(sorted(by) == [42, 43] for by in b.values())


def test_figure_data_makes_fedit_a_curve_through_every_budget_sorted_by_flops(lab):
    cells = lab_view.lab_cells(lab)
    data = lab_view.figure_data(cells)
    fedit = data["series"]["fedit"]
    assert [p.get("rounds") for p in fedit["points"]] == [None, 6, 8, 10]
    assert [p["flops"] for p in fedit["points"]] == [0.0, 36.0, 48.0, 60.0]
    assert fedit["points"][-1]["acc"] == pytest.approx(50.5) and fedit["points"][-1]["acc_sd"] > 0
    devft = data["series"]["devft"]
    assert devft["curve"] and [p["round"] for p in devft["points"]] == [0, 2, 4, 7, 10]
    assert data["untrained"] == {"acc": 30.0, "answer_nll": 1.0}
    # without budgets FedIT is its own two evaluations: no curve, only its final point is drawn
    flat = lab_view.figure_data(cells, budgets=None)["series"]["fedit"]
    assert not flat["curve"] and len(flat["points"]) == 2
    own = lab_view.figure_data(cells, own={"mine": cells["fedit"][42]})["series"]["own:mine"]
    assert not own["curve"] and own["label"] == "mine (this notebook)"  # before and after only: its final point
    with pytest.raises(ValueError, match="budgets"):
        lab_view.figure_data(cells, budgets="sweep")


def test_figure_keeps_its_signature_and_marks_the_loss_axis(lab):
    cells = lab_view.lab_cells(lab)
    own = {"DevFT": cells["devft"][42]}
    fig = lab_view.figure(cells, own=own)
    acc_ax, loss_ax = fig.axes[:2]
    assert loss_ax.get_yscale() == "log"
    flat = {round(line.get_ydata()[0], 6) for line in loss_ax.lines if len(set(line.get_ydata())) == 1}
    assert round(math.log(lab_view.vocab_size("tiny-llama")), 6) in flat and 1.0 in flat
    assert "equal client FLOPs" in acc_ax.get_title()
    assert len(lab_view.figure(cells, x=("flops", "train_s")).axes) == 4


def test_uniform_guess_is_ln_v():
    assert lab_view.uniform_nats(vocab=49152) == pytest.approx(10.8027, abs=1e-4)
    assert lab_view.uniform_nats("tiny-llama") == pytest.approx(math.log(lab_view.vocab_size("tiny-llama")))
    with pytest.raises(ValueError, match="vocabulary"):
        lab_view.uniform_nats()
    with pytest.raises(FileNotFoundError, match="model prepare"):
        lab_view.vocab_size("no-such-model-here")


def test_flops_share_reads_the_main_table(tmp_path):
    (tmp_path / "results").mkdir()
    rows = [{"key": "fedit", "metrics": {"flops_estimate": {"mean": 8.0}}},
            {"key": "devft", "metrics": {"flops_estimate": {"mean": 5.0}}}]
    (tmp_path / "results" / "table_main.json").write_text(json.dumps({"rows": rows}))
    assert lab_view.flops_share(tmp_path) == pytest.approx(0.625)
    with pytest.raises(KeyError, match="progfed"):
        lab_view.flops_share(tmp_path, "progfed")


def test_verdict_reads_the_interval_against_the_papers_sign():
    assert lab_view.verdict(+1, [0.5, 2.0]) == "same direction as the paper"
    assert lab_view.verdict(+1, [-3.0, -1.0]) == "opposite to the paper"
    assert lab_view.verdict(-1, [-3.0, -1.0]) == "same direction as the paper"
    assert lab_view.verdict(-1, [-1.0, 1.0]) == "not distinguishable from zero"
    assert lab_view.verdict(+1, None) == "no lab result"


def test_claims_of_the_committed_tables_carry_the_tables_numbers():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    tables = lab_view.load_tables(root)
    if "main" not in tables:
        pytest.skip("no committed main table")
    rows = lab_view.claims(tables)
    main = rows[0]
    assert main["gap"] is tables["main"]["devft_minus_fedit_items"]
    assert main["verdict"] == lab_view.verdict(+1, main["gap"]["ci95"])
    for r in rows:
        if "ci95" in r["gap"]:
            lo, hi = r["gap"]["ci95"]
            assert f"[{lo:+.1f}, {hi:+.1f}]".replace("-", "−") in r["lab"]
    md = lab_view.claims_markdown(rows).splitlines()
    assert len(md) == 2 + len(rows) and md[0].startswith("| claim | paper")


def test_table_figure_shows_the_values_range_not_zero_to_the_top(lab):
    t = {"table": "main", "metric": "acc", "rows": [
        {"method": "FedIT", "metrics": {"acc": {"mean": 50.0, "std": 1.0}, "initial_acc": {"mean": 35.0}}},
        {"method": "DevFT", "metrics": {"acc": {"mean": 41.0, "std": 1.5}, "initial_acc": {"mean": 35.0}},
         "vs_ref_items": {"ref": "fedit", "mean": -9.0, "ci95": [-11.7, -6.1]}}]}
    fig = lab_view.table_figure(t, lab)
    lo, hi = fig.axes[0].get_ylim()
    assert 30 < lo < 35 and 51 < hi < 55
    assert len(fig.axes[1].containers) == 1
