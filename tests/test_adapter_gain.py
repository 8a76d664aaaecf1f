"""adapter_gain re-scores a finished run's base and adapter on the run's own items."""
import json

from devft_lab.experiments.adapter_gain import main, score_run
from devft_lab.runner.config import load_config
from devft_lab.runner.run import start


def test_gain_is_paired_on_the_runs_items_and_matches_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("DEVFT_LAB_CACHE", str(tmp_path / "cache"))
    cfg = load_config("tiny", ["fed.num_rounds=2", "devft.enabled=false", f"out_dir={tmp_path}", "name=r",
                               "eval.suites=[indist]", "eval.max_per_task=3", "train.lr=0.01"])
    summary = start(cfg, quiet=True)
    out = score_run(tmp_path / "r")
    assert out["n"] == 12  # 4 pool tasks x 3 items
    assert abs(out["base_acc"] - summary["initial"]["acc"]) < 1e-6  # the same untrained model and items
    assert abs(out["acc"] - summary["final"]["acc"]) < 1e-6  # the exported adapter is the run's final state
    assert out["ci95"][0] <= out["gain"] <= out["ci95"][1]
    assert main([str(tmp_path / "r"), "--out", str(tmp_path / "g")]) == 0
    assert json.loads((tmp_path / "g.json").read_text())["runs"][0]["n"] == 12
