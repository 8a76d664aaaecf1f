"""Compute-matched views: points at every evaluation, seed means, cost to FedIT's final score."""
import json

import pytest

from devft_lab.experiments.compute_matched import build, markdown, plot, points, to_target


def _run(tmp_path, name, evals, flops_per_round, s_per_round, n_rounds, base=40.0):
    """A fake run folder: ``evals`` maps a 0-based round to its accuracy."""
    d = tmp_path / name
    d.mkdir()
    (d / "initial_eval.json").write_text(json.dumps({"acc": base, "answer_nll": 1.0, "eval_s": 1.0}))
    rows = []
    for r in range(n_rounds):
        extra = {"loss": 0.5}
        if r in evals:
            extra.update(acc=evals[r], answer_nll=1.0 - evals[r] / 100)
        rows.append({"round": r, "cum_flops_estimate": flops_per_round * (r + 1), "cum_train_s": s_per_round * (r + 1),
                     "cum_aggregate_s": 0.0, "extra": extra})
    (d / "rounds.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    return d


def test_points_start_at_the_untrained_model_and_follow_evaluations(tmp_path):
    d = _run(tmp_path, "a", {1: 45.0, 3: 50.0}, 10.0, 2.0, 4)
    p = points(d)
    assert [x["round"] for x in p] == [0, 2, 4]
    assert p[0]["flops"] == 0 and p[0]["acc"] == 40.0
    assert p[2]["flops"] == 40.0 and p[2]["train_s"] == 8.0 and p[2]["acc"] == 50.0


def test_cost_to_fedit_final_is_taken_at_the_first_evaluation_reaching_it(tmp_path):
    runs = {"fedit": {1: _run(tmp_path, "f1", {4: 50.0}, 10.0, 1.0, 5), 2: _run(tmp_path, "f2", {4: 52.0}, 10.0, 1.0, 5)},
            "devft": {1: _run(tmp_path, "d1", {1: 45.0, 3: 51.0}, 4.0, 0.5, 4),
                      2: _run(tmp_path, "d2", {1: 44.0, 3: 51.0}, 4.0, 0.5, 4)}}
    data = build(runs)
    assert data["targets"] == {1: 50.0, 2: 52.0}
    dev = data["methods"]["devft"]
    assert dev["reached"] == "1 of 2"  # seed 2 ends at 51 < 52
    assert dev["to_target"][1]["flops"] == 16.0 and dev["to_target"][1]["round"] == 4
    assert dev["flops_x_less_than_reference"][0] == pytest.approx(50.0 / 16.0)
    assert data["methods"]["fedit"]["reached"] == "2 of 2"  # the reference reaches its own final
    m = dev["mean"]
    assert [p["acc"] for p in m] == [40.0, 44.5, 51.0] and m[1]["acc_sd"] == pytest.approx(0.7071, abs=1e-3)
    text = markdown(data, {"fedit": "FedIT", "devft": "DevFT"}, "python -m x main --out results/cm")
    assert "1 of 2" in text and "cm.png" in text
    plot(data, tmp_path / "cm.png")
    assert (tmp_path / "cm.png").stat().st_size > 10_000


def test_to_target_none_when_never_reached():
    assert to_target([{"acc": 40, "flops": 0, "train_s": 0, "round": 0}], 41) is None
