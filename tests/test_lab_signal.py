"""The signal job: config errors, and one tiny end-to-end run writing the artifact the checks read."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from devft_lab.data.records import DataError
from devft_lab.experiments.lab_signal import SignalConfig, load_signal_config, main

SHIPPED = str(Path(__file__).resolve().parents[1] / "devft_lab" / "runner" / "configs" / "lab_signal.yaml")


def test_shipped_config_loads_and_overrides_apply():
    cfg = load_signal_config(SHIPPED, ["steps=3", "suites=[bbh]"])
    assert isinstance(cfg, SignalConfig) and cfg.steps == 3 and cfg.suites == ["bbh"]
    assert load_signal_config(SHIPPED).model == "smollm2-135m"
    # YAML 1.1 reads 5e-4 (no dot) as a string; the float field still gets a float
    assert load_signal_config(SHIPPED, ["lr=5e-4"]).lr == 5e-4


@pytest.mark.parametrize("override, message", [
    ("step=3", "unknown field 'step'. Did you mean 'steps'"),
    ("steps=0", "steps must be an integer >= 1"),
    ("steps", "write key=value"),
    ("lr=fast", "lr = 'fast' should be"),
])
def test_bad_config_says_what_to_fix(override, message):
    with pytest.raises(DataError, match=message):
        load_signal_config(SHIPPED, [override])


def test_unknown_suite_fails_before_loading_anything(tmp_path):
    from devft_lab.experiments.lab_signal import run

    with pytest.raises(DataError, match="unknown evaluation suite 'mmlu_pro'"):
        run(SignalConfig(suites=["mmlu_pro"], out=str(tmp_path / "x")), "cmd")


def test_tiny_run_writes_the_signal_artifact(tmp_path):
    out = tmp_path / "signal"
    argv = ["--config", SHIPPED, "--set", "model=tiny-llama", "--set", "template=plain", "--set", "steps=1",
            "--set", "batch_size=2", "--set", "max_per_task=1", "--set", "seq_len=64", "--set", f"out={out}"]
    assert main(argv) == 0
    r = json.loads(out.with_suffix(".json").read_text())
    for key in ("model", "base_avg", "finetuned_avg", "gap", "ci95", "n_eval", "command", "per_suite"):
        assert key in r
    assert r["gap"] == pytest.approx(r["finetuned_avg"] - r["base_avg"], abs=0.011)
    assert r["ci95"][0] <= r["ci95"][1] and r["n_eval"] == 13  # headline indist + bbh: 6 + 7 tasks, one item each
    assert r["all_suites"]["n_eval"] == 14 and r["all_suites"]["suites"] == ["indist", "bbh", "mmlu"]
    assert (tmp_path / "signal_items.jsonl").read_text().count("\n") == 14
    assert r["command"].startswith("python -m devft_lab.experiments.lab_signal --config ")
    assert "| indist |" in out.with_suffix(".md").read_text()


def test_committed_signal_result_matches_the_shipped_config_and_lists_earlier_tries():
    """results/lab_signal.* is what the shipped config produces, and its Markdown is its JSON rendered."""
    import dataclasses
    from pathlib import Path

    from devft_lab.experiments.lab_signal import markdown

    root = Path(__file__).resolve().parents[1]
    r = json.loads((root / "results" / "lab_signal.json").read_text())
    assert r["config"] == dataclasses.asdict(load_signal_config(SHIPPED))
    assert r["command"] == "python -m devft_lab.experiments.lab_signal --config devft_lab/runner/configs/lab_signal.yaml"
    assert (root / "results" / "lab_signal.md").read_text() == markdown(r)
    for t in r.get("earlier_tries", []):
        assert f"gap {t['gap']:+.1f}" in markdown(r)
