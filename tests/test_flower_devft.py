"""DevFT through Flower ends where the in-process simulation ends, bit for bit.

A 2-stage DevFT schedule (capacities 4 -> 8 on the tiny 8-layer model, FedIT) runs three ways:
``devft-lab run`` (:func:`devft_lab.runner.run.start`, the reference), Flower's Simulation Engine, and
a real SuperLink with three SuperNodes on loopback. With the same seeds and the same client
sampling, the final adapters must be equal, and so must the LoRA bytes in each direction. The
clients build the fused submodel themselves, so the dense fused layers that the simulation
counts as ``submodel_delivery_bytes`` never travel. The Flower report must name exactly that
amount as saved.

Times on the shared 2-core CI box (load ~8): reference ~20 s, replay ~25 s, simulation engine ~25-35 s,
deployment ~85-110 s.
"""
from __future__ import annotations

import json
import time

import pytest
import torch

pytest.importorskip("flwr")

from safetensors.torch import load_file  # noqa: E402

from devft_lab.runner.config import load_config, to_dict  # noqa: E402
from devft_lab.flower.server_app import ServerOptions  # noqa: E402
from devft_lab.flower.workload import WorkloadSpec, run_in_process  # noqa: E402
from devft_lab.runner.run import load_adapter, start  # noqa: E402

#: 2 stages of 1 round, 3 clients, 2 sampled per round (FedIT)
TWO_STAGES = ["devft.stages=2", "fed.num_rounds=2", "devft.rounds_per_stage=1", "data.num_clients=3",
              "fed.clients_per_round=2", "eval.holdout=0"]


def _totals(run_dir) -> dict:
    """The simulation's byte totals (``summary.json``) and its rounds (``rounds.jsonl``) under ``"rounds"``."""
    totals = json.loads((run_dir / "summary.json").read_text())
    totals["rounds"] = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    return totals


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(config, final adapter, ledger totals) of the in-process run (``devft-lab run``)."""
    out = tmp_path_factory.mktemp("reference")
    cfg = load_config("tiny", [*TWO_STAGES, f"out_dir={out}", "name=ref"])
    start(cfg, quiet=True)
    return cfg, load_adapter(out / "ref"), _totals(out / "ref")


def _equal(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _same_rounds(report, totals) -> None:
    """Round by round, Flower's participants and LoRA bytes are the simulation's."""
    assert [r["aggregated"] for r in report["rounds"]] == [r["extra"]["clients"] for r in totals["rounds"]]
    assert [r["bytes_up"] for r in report["rounds"]] == [r["uplink_bytes"] for r in totals["rounds"]]
    assert report["bytes_up"] == totals["uplink_bytes"]


def _check_report(report, cfg, totals) -> None:
    s = report["summary"]
    assert s["stage_capacities"] == [4, 8]
    _same_rounds(report, totals)
    assert [r["bytes_down"] for r in report["rounds"]] == [r["downlink_bytes"] for r in totals["rounds"]]
    assert report["bytes_down"] == totals["downlink_bytes"]  # FedIT: nothing beyond the downlink
    # dense fused layers the clients built themselves = what the simulation ships
    assert s["dense_submodel_bytes_avoided"] == totals["submodel_delivery_bytes"] > 0
    assert 0 < s["stage_package_bytes"] < s["dense_submodel_bytes_avoided"] / 100
    assert s["downlink_saved_bytes"] == s["dense_submodel_bytes_avoided"] - s["stage_package_bytes"]
    assert [r["sampled"] for r in report["rounds"]] == [r["aggregated"] for r in report["rounds"]]


def test_devft_workload_replay_equals_simulation(reference):
    cfg, ref, _ = reference
    got = run_in_process(WorkloadSpec("devft", {"config": to_dict(cfg)}))
    assert _equal(got, ref)
    assert any(float(v.abs().sum()) > 0 for k, v in ref.items() if "lora_B" in k)  # it trained (B starts at 0)


def test_devft_on_flower_simulation_engine_equals_simulation(reference, tmp_path):
    pytest.importorskip("ray", reason="the simulation engine needs flwr[simulation]")
    from devft_lab.flower.simulate import run_simulation

    cfg, ref, totals = reference
    t0 = time.monotonic()
    report = run_simulation(ServerOptions(WorkloadSpec("devft", {"config": to_dict(cfg)}),
                                          str(tmp_path / "flower"), round_timeout=300))
    print(f"DevFT on the simulation engine: {time.monotonic() - t0:.1f} s")
    assert _equal(load_file(str(tmp_path / "flower" / "final_state.safetensors")), ref)
    _check_report(report, cfg, totals)


@pytest.mark.slow
def test_devft_on_superlink_and_supernodes_equals_simulation(reference, tmp_path):
    from devft_lab.flower.deploy import LocalFederation

    cfg, ref, totals = reference
    opts = ServerOptions(WorkloadSpec("devft", {"config": to_dict(cfg)}), str(tmp_path / "flower"),
                         min_fit=2, round_timeout=240, node_timeout=120)
    t0 = time.monotonic()
    with LocalFederation(3, workdir=tmp_path / "fed") as fed:
        report = fed.run(opts, timeout=400)
    print(f"DevFT on SuperLink + 3 SuperNodes: {time.monotonic() - t0:.1f} s")
    assert _equal(load_file(str(tmp_path / "flower" / "final_state.safetensors")), ref)
    _check_report(report, cfg, totals)


def test_fedsa_lora_devft_on_flower_simulation_engine_equals_simulation(tmp_path):
    """FedSA-LoRA keeps B on the clients: carried through the stage change on the client, and
    collected at each stage end for the transfer, as the simulation does in memory."""
    pytest.importorskip("ray", reason="the simulation engine needs flwr[simulation]")
    from devft_lab.flower.simulate import run_simulation

    cfg = load_config("tiny", [*TWO_STAGES, "fed.strategy=fedsa-lora", f"out_dir={tmp_path}", "name=ref"])
    start(cfg, quiet=True)
    ref = load_adapter(tmp_path / "ref")
    report = run_simulation(ServerOptions(WorkloadSpec("devft", {"config": to_dict(cfg)}),
                                          str(tmp_path / "flower"), round_timeout=300))
    assert _equal(load_file(str(tmp_path / "flower" / "final_state.safetensors")), ref)
    rounds = report["rounds"]
    assert [r["collected"] for r in rounds] == [r["aggregated"] for r in rounds] == [[0, 1], [0, 1]]
    _same_rounds(report, _totals(tmp_path / "ref"))
    assert report["bytes_collected"] > 0 and report["collect_misses"] == []
    assert any("lora_B" in k and float(v.abs().sum()) > 0 for k, v in ref.items())  # trained Bs, averaged


#: one stage (the full model), 2 rounds, 3 clients, 2 sampled per round
ONE_STAGE = ["devft.enabled=false", "fed.num_rounds=2", "data.num_clients=3", "fed.clients_per_round=2",
             "eval.holdout=0"]


@pytest.mark.parametrize("strategy", ["dofit", "c2a"])
def test_dofit_and_c2a_on_flower_simulation_engine_equal_simulation(strategy, tmp_path):
    """DoFIT sends each client its domain's adapter and aggregates by domain; C2A's clients
    generate their adapters from their own embeddings and send the hypernetwork back. Both need
    the client's identity, which Flower carries as the partition id: the replay and the
    simulation engine end where the simulation ends, with the same bytes each way."""
    pytest.importorskip("ray", reason="the simulation engine needs flwr[simulation]")
    from devft_lab.flower.simulate import run_simulation

    cfg = load_config("tiny", [*ONE_STAGE, f"fed.strategy={strategy}", f"out_dir={tmp_path}", "name=ref"])
    start(cfg, quiet=True)
    ref, totals = load_adapter(tmp_path / "ref"), _totals(tmp_path / "ref")
    assert any("lora_B" in k and float(v.abs().sum()) > 0 for k, v in ref.items())  # it trained
    assert _equal(run_in_process(WorkloadSpec("devft", {"config": to_dict(cfg)})), ref)
    report = run_simulation(ServerOptions(WorkloadSpec("devft", {"config": to_dict(cfg)}),
                                          str(tmp_path / "flower"), round_timeout=300))
    assert _equal(load_file(str(tmp_path / "flower" / "final_state.safetensors")), ref)
    _same_rounds(report, totals)
    assert report["bytes_down"] == totals["downlink_bytes"]
    assert [r["sampled"] for r in report["rounds"]] == [r["aggregated"] for r in report["rounds"]]
