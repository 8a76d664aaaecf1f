"""devft_lab.teach.schedule_view: partitions, run comparison and knowledge transfer (notebook 04)."""
import json

import pytest
import torch

from devft_lab.teach import schedule_view as sv
from devft_lab.data import load_examples

CATS = [e["category"] for e in load_examples("tiny")]


def test_partitions_figure_covers_every_example_once():
    out = sv.partitions_figure(CATS, num_clients=8, seed=42)
    assert set(out["parts"]) == set(sv.PARTITIONS)
    for parts in out["parts"].values():
        assert len(parts) == 8
        assert sorted(i for p in parts for i in p) == list(range(len(CATS)))
    assert all(len({CATS[i] for i in p}) <= 2 for p in out["parts"]["pathological, 2 tasks per client"])
    assert out["skew"]["IID"] < out["skew"]["pathological, 2 tasks per client"]
    assert out["figure"].axes


def test_partition_view_skew_falls_with_alpha():
    skews = [sv.partition_view(CATS, a, num_clients=8, seed=0)["skew"] for a in (0.05, 1.0, 100.0)]
    assert skews[0] > skews[-1]
    v = sv.partition_view(CATS, 0.5, num_clients=8)
    assert v["counts"].shape == (8, 4) and v["counts"].sum() == len(CATS)
    assert v["names"] == sorted(set(CATS))


def test_lora_cosine_and_holds_representative():
    g = torch.Generator().manual_seed(0)
    rep = {0: {"a.lora_A.weight": torch.randn(2, 3, generator=g), "a.lora_B.weight": torch.randn(3, 2, generator=g)},
           1: {"a.lora_A.weight": torch.randn(2, 3, generator=g), "a.lora_B.weight": torch.randn(3, 2, generator=g)}}
    groups = [[0, 2], [1]]
    lora = {0: dict(rep[0]), 1: dict(rep[1]), 2: dict(rep[0])}
    assert sv.holds_representative(lora, groups, rep)
    cos = sv.lora_cosine(lora)
    assert cos.shape == (3, 3)
    assert float(cos[0, 2]) == pytest.approx(1.0)
    lora[2] = {n: t + 1 for n, t in rep[0].items()}
    assert not sv.holds_representative(lora, groups, rep)


def test_run_stages_transfers_on_tiny_model():
    from devft_lab.runner.config import load_config
    from devft_lab.runner.run import build

    parts = build(load_config("tiny", ["train.local_steps=1"]), progress=False)
    history = sv.run_stages(parts, rounds_per_stage=1, clients=(0, 1))
    L = parts.plan.L
    assert [r["capacity"] for r in history] == list(parts.capacities)
    for r in history:
        assert r["holds_representative"]
        assert sorted(i for g in r["groups"] for i in g) == list(range(L))
    assert history[-1]["groups"] == [[i] for i in range(L)]
    from devft_lab.method.transfer import transfer_lora

    for r in history:  # the plan's transfer is the library's copy of the stage's representatives
        want = transfer_lora(r["before"], r["groups"], r["reps"], "copy")
        assert all(torch.equal(want[i][n], r["global_lora"][i][n]) for i in want for n in want[i])
    assert history[1]["before"].keys() == history[0]["global_lora"].keys()  # each stage starts from the last
    v = sv.transfer_view(history, 1)
    assert v["groups"] == history[1]["groups"] and v["figure"].axes
    assert sv.transfer_figure(history).axes
    with pytest.raises(ValueError):
        sv.transfer_view(history, len(history))


def test_run_stages_needs_devft_plan():
    from devft_lab.runner.config import load_config
    from devft_lab.runner.run import build

    parts = build(load_config("tiny", ["devft.enabled=false"]), progress=False)
    with pytest.raises(ValueError, match="DevFT plan"):
        sv.run_stages(parts)


def test_runs_available_and_bytes(tmp_path):
    from devft_lab.runner.report import read_run

    done, half = tmp_path / "done", tmp_path / "half"
    for d in (done, half):
        d.mkdir()
        rows = [{"uplink_bytes": 10 * (i + 1), "extra": {"capacity": i + 1}} for i in range(3)]
        (d / "rounds.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (done / "summary.json").write_text("{}")
    assert sv.runs_available([done, half]) == [str(done)]
    run = read_run(done)
    assert sv.bytes_per_round(run) == [10, 20, 30]
    assert sv.bytes_per_round_figure([run]).axes


def test_train_loss_figure_marks_the_untrained_model_and_the_uniform_guess(tmp_path):
    import math

    from devft_lab.runner.report import read_run

    rows = [{"round": i, "uplink_bytes": 1, "extra": {"loss": 2.0 / (i + 1), "capacity": 8}} for i in range(3)]
    (tmp_path / "rounds.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    ax = sv.train_loss_figure([read_run(tmp_path)], untrained=0.85, vocab=49152).axes[0]
    flat = sorted(line.get_ydata()[0] for line in ax.lines if len(set(line.get_ydata())) == 1)
    assert flat == pytest.approx([0.85, math.log(49152)])
    assert len(sv.train_loss_figure([read_run(tmp_path)]).axes[0].lines) == 1  # no references asked: none drawn


def test_stage_layers_and_runs_table(tmp_path):
    from devft_lab.runner.report import read_run

    caps = [4, 4, 8, 8, 30, 30]
    rows = [{"round": i, "uplink_bytes": 1, "extra": {"loss": 1.0, "capacity": c}} for i, c in enumerate(caps)]
    (tmp_path / "rounds.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "summary.json").write_text(json.dumps({"flops_estimate": 4.2e13, "paper_bytes": 4.1e8,
                                                       "initial": {"acc": 35.24}, "final": {"acc": 41.3}}))
    run = read_run(tmp_path)
    assert sv.stage_layers(run) == [4, 8, 30]
    line = sv.runs_table([run]).splitlines()[-1]
    assert line == f"| {tmp_path.name} | 4 → 8 → 30 | 6 | 42.0 | 410 | 35.2 → 41.3 |"
