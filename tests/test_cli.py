"""The command line: help, exit codes for bad input."""
import json
import subprocess
import sys

import pytest

from devft_lab.cli import main


def test_help_lists_the_commands():
    r = subprocess.run([sys.executable, "-m", "devft_lab.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for word in ("model", "demo"):
        assert word in r.stdout


def test_unknown_preset_exits_2(capsys):
    assert main(["model", "prepare", "no-such-preset"]) == 2
    assert "unknown preset" in capsys.readouterr().err


def test_model_list(capsys):
    assert main(["model", "list"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "Apache-2.0" in out and "tiny-gemma3" in out


def test_demo_summary_pairs_before_and_after_on_the_same_items(tmp_path, monkeypatch, capsys):
    """The demo's summary line gives the gain with its paired 95% interval over the scored items,
    and the numbers are the run's own."""
    import json
    import re

    from devft_lab.runner.demo import main

    monkeypatch.setenv("DEVFT_LAB_CACHE", str(tmp_path / "cache"))
    main(model_name="tiny-llama", quiet=True, overrides=[
        f"out_dir={tmp_path}", "fed.num_rounds=4", "data.source=tiny", "data.partitioner=iid", "data.partitioner_params={}", "data.num_clients=4",
        "data.min_samples=4", "fed.clients_per_round=2", "train.local_steps=1", "train.batch_size=2",
        "train.seq_len=64", "eval.max_per_task=2", "model.dtype=float32", "train.compile=false"])
    out = capsys.readouterr().out
    m = re.search(r"acc\s+([\d.]+) % before -> ([\d.]+) % after \(([+-][\d.]+), paired 95% CI \[([+-][\d.]+), "
                  r"([+-][\d.]+)\] over (\d+) items\)", out)
    assert m, out
    before, after, gain, lo, hi, n = map(float, m.groups())
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert round(summary["final"]["acc"], 1) == after and round(summary["initial"]["acc"], 1) == before
    assert lo <= gain <= hi and n == 8  # four in-distribution tasks, two items each
    assert "answer loss" in out and " min in all" in out


def _log(tmp_path, rows):
    d = tmp_path / "run"
    d.mkdir()
    (d / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


ROW = {"round": 0, "cum_train_s": 1.0, "cum_aggregate_s": 0.1, "cum_paper_bytes": 10, "cum_full_bytes": 20,
       "peak_rss_mb": 100.0, "extra": {"loss": 1.0}}


@pytest.mark.parametrize("bad, says", [
    ({k: v for k, v in ROW.items() if k != "extra"} | {"cum_paper_bytes": None}, "cum_paper_bytes = None should be a number"),
    ({k: v for k, v in ROW.items() if k not in ("cum_train_s", "peak_rss_mb")}, "has no cum_train_s, peak_rss_mb"),
    (ROW | {"round": "three"}, "round = 'three' should be an integer"),
    (ROW | {"extra": [1]}, "extra = [1] should be an object of metrics"),
])
def test_report_over_a_bad_round_record_names_the_line_and_the_field(tmp_path, capsys, bad, says):
    d = _log(tmp_path, [ROW, bad])
    assert main(["report", str(d)]) == 2
    err = capsys.readouterr().err
    assert f"{d / 'rounds.jsonl'}:2: " in err and says in err and "preset" not in err
    assert "devft-lab resume RUN_DIR` to rebuild it from rounds.csv" in err
    assert not (d / "report.png").exists()
