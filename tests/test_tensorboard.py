"""TensorBoard export: every number of the run log appears once per round, unchanged."""
import json

import pytest

from devft_lab.runner.tensorboard import export, scalars


def _run_dir(tmp_path, rounds):
    d = tmp_path / "run"
    d.mkdir()
    with open(d / "rounds.jsonl", "w") as f:
        for r in rounds:
            f.write(json.dumps(r) + "\n")
    (d / "initial_eval.json").write_text(json.dumps({"acc": 40.0, "acc_bbh": 35.0, "eval_s": 12.0}))
    return d


def _row(i, loss, acc=None):
    extra = {"loss": loss, "lr": 1e-3, "clients": [0, 1], "capacity": 4}
    if acc is not None:
        extra["acc"] = acc
    return {"round": i, "stage": 0, "num_clients": 2, "uplink_bytes": 100 * (i + 1), "downlink_bytes": 50,
            "submodel_delivery_bytes": 0, "flops_estimate": 1e9, "train_s": 1.5, "aggregate_s": 0.1,
            "eval_s": 0.0, "peak_rss_mb": 900.0, "cuda_peak_mb": 0.0, "extra": extra,
            "cum_paper_bytes": 100, "cum_full_bytes": 150}


def _read(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_scalars_skip_lists_and_route_metrics():
    tags = dict(scalars(_row(0, 2.5, acc=41.0)))
    assert tags["train/loss"] == 2.5 and tags["eval/acc"] == 41.0 and tags["comm/uplink_bytes"] == 100.0
    assert tags["train/clients"] == 2.0  # num_clients; the list of client ids is not a scalar
    assert all(isinstance(v, float) for v in tags.values())


def test_export_matches_the_log_and_reexport_replaces(tmp_path):
    pytest.importorskip("tensorboard")
    d = _run_dir(tmp_path, [_row(0, 3.0), _row(1, 2.0, acc=45.0)])
    out = export(d)
    got = _read(out)
    assert got["train/loss"] == [(1, 3.0), (2, 2.0)]
    assert got["eval/acc"] == [(0, 40.0), (2, 45.0)]  # the initial evaluation is step 0
    assert got["comm/uplink_bytes"] == [(1, 100.0), (2, 200.0)]
    assert "eval/eval_s" not in got  # a time, not a metric
    # a resumed run rewrote its log: the export shows the new rounds, each once
    (d / "rounds.jsonl").write_text(json.dumps(_row(0, 9.0)) + "\n")
    export(d)
    assert _read(out)["train/loss"] == [(1, 9.0)]
    assert len(list(out.glob("events.out.tfevents.*"))) == 1


def test_export_of_a_folder_without_a_log_says_what_it_needs(tmp_path):
    with pytest.raises(FileNotFoundError, match="rounds.jsonl"):
        export(tmp_path)


def test_export_of_a_round_that_is_not_an_integer_names_the_line(tmp_path):
    pytest.importorskip("tensorboard")
    d = _run_dir(tmp_path, [_row(0, 3.0), {**_row(1, 2.0), "round": "three"}])
    with pytest.raises(ValueError, match=r"rounds.jsonl:2: round = 'three' should be an integer"):
        export(d)
