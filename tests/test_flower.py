"""Flower transport: records round trip, simulation engine, and a real SuperLink + SuperNodes.

Properties checked: tensors survive the wire bit-exactly (bfloat16 included) and without
pickle; a Flower run ends with the same global state as the in-process replay of the same
workload; a client that fails or a SuperNode that dies is reported by partition id and the
round aggregates the replies that arrived (``min_fit``); no process outlives the federation.

Times on the shared 2-core CI box (load ~8): records and CLI < 1 s, simulation ~20 s each (Ray start),
deployment 60-80 s each (every ClientApp is a fresh process that imports torch).
"""
from __future__ import annotations

import json
import time

import pytest
import torch

pytest.importorskip("flwr")

from safetensors.torch import load_file  # noqa: E402

from devft_lab.flower.records import records_to_state, state_nbytes, state_to_records  # noqa: E402
from devft_lab.flower.server_app import ServerOptions  # noqa: E402
from devft_lab.flower.workload import WorkloadSpec, run_in_process  # noqa: E402


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- records
def test_records_round_trip_is_bit_exact_for_every_dtype():
    g = torch.Generator().manual_seed(0)
    state = {"a.lora_A.weight": torch.randn(4, 8, generator=g),
             "b": torch.randn(3, 5, generator=g).to(torch.bfloat16),
             "c": torch.randn(2, generator=g).to(torch.float16),
             "d": torch.arange(6, dtype=torch.int64).reshape(2, 3)}
    arrays, dtypes = state_to_records(state)
    back = records_to_state(arrays, dtypes)
    assert _equal(back, state)
    assert list(back) == list(state)
    assert state_nbytes(state) == 4 * 32 + 4 * 15 + 2 * 2 + 8 * 6  # bf16 travels as f32


def test_records_carry_no_pickle():
    arrays, _ = state_to_records({"w": torch.ones(2, 2)})
    for arr in arrays.values():
        assert arr.stype == "numpy.ndarray"
        assert b"\x80\x04" not in arr.data[:16] and arr.data[:6] == b"\x93NUMPY"  # .npy, not pickle


# --------------------------------------------------------------------------- simulation engine
def test_simulation_engine_matches_in_process_replay(tmp_path):
    pytest.importorskip("ray", reason="the simulation engine needs flwr[simulation]")
    from devft_lab.flower.simulate import run_simulation

    spec = WorkloadSpec("dummy", {"num_clients": 3, "num_rounds": 3, "clients_per_round": 2, "seed": 3})
    t0 = time.monotonic()
    report = run_simulation(ServerOptions(spec, str(tmp_path), round_timeout=60))
    print(f"simulation: {time.monotonic() - t0:.1f} s")
    got = load_file(str(tmp_path / "final_state.safetensors"))
    assert _equal(got, run_in_process(spec))
    assert [r["aggregated"] for r in report["rounds"]] == [r["sampled"] for r in report["rounds"]]
    assert report["dropouts"] == []
    # and the comparison can fail: a different seed gives a different state
    assert not _equal(got, run_in_process(WorkloadSpec("dummy", {**spec.settings, "seed": 4})))


def test_simulation_failed_client_is_reported_and_round_aggregates_the_rest(tmp_path):
    pytest.importorskip("ray", reason="the simulation engine needs flwr[simulation]")
    from devft_lab.flower.simulate import run_simulation

    spec = WorkloadSpec("dummy", {"num_clients": 3, "num_rounds": 2, "fail_clients": [1]})
    report = run_simulation(ServerOptions(spec, str(tmp_path), min_fit=2, round_timeout=60))
    assert [d["client"] for d in report["dropouts"]] == [1, 1]
    assert all("failing on purpose" in d["reason"] for d in report["dropouts"])
    assert [r["aggregated"] for r in report["rounds"]] == [[0, 2], [0, 2]]
    got = load_file(str(tmp_path / "final_state.safetensors"))
    assert _equal(got, run_in_process(spec, participants=[[0, 2], [0, 2]]))


# --------------------------------------------------------------------------- deployment engine
def _no_leftovers(fed) -> None:
    import psutil

    ours = [p.popen.pid for p in [fed.link, *fed.nodes]]
    assert not [pid for pid in ours if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    alive = [p for p in psutil.process_iter(["cmdline", "status"])
             if p.info["status"] != psutil.STATUS_ZOMBIE
             and any(str(fed.link_port) in part for part in (p.info["cmdline"] or []))]
    assert not alive, f"processes left behind: {[p.info['cmdline'] for p in alive]}"


@pytest.mark.slow
def test_deployment_with_tls_and_node_auth_matches_in_process_replay(tmp_path):
    """TLS everywhere, SuperNode authentication on: registered nodes train, an intruder stays out."""
    from devft_lab.flower.deploy import LocalFederation

    spec = WorkloadSpec("dummy", {"num_clients": 3, "num_rounds": 2, "clients_per_round": 2, "seed": 1})
    opts = ServerOptions(spec, str(tmp_path / "out"), round_timeout=60, node_timeout=60)
    t0 = time.monotonic()
    with LocalFederation(3, workdir=tmp_path / "fed", tls=True, node_auth=True) as fed:
        intruder = fed.add_node(register=False)  # an unregistered key
        report = fed.run(opts, timeout=180)
    assert "Connection attempt failed" in intruder.log.read_text()  # refused (HTTP 412 on activate-node)
    print(f"deployment (TLS, node auth): {time.monotonic() - t0:.1f} s")
    _no_leftovers(fed)
    assert "Uvicorn running on https://" in (tmp_path / "fed" / "superlink.log").read_text()
    assert report["connected"] == 3 and sorted(int(k) for k in report["nodes"]) == [0, 1, 2]  # intruder out
    got = load_file(str(tmp_path / "out" / "final_state.safetensors"))
    assert _equal(got, run_in_process(spec))
    assert report["dropouts"] == []


@pytest.mark.slow
def test_deployment_killed_supernode_is_reported_and_run_completes(tmp_path):
    from devft_lab.flower.deploy import LocalFederation

    spec = WorkloadSpec("dummy", {"num_clients": 3, "num_rounds": 2, "seed": 2})  # all 3 each round
    opts = ServerOptions(spec, str(tmp_path / "out"), min_fit=2, round_timeout=25, node_timeout=60)
    events = tmp_path / "out" / "events.jsonl"
    t0 = time.monotonic()
    with LocalFederation(3, workdir=tmp_path / "fed") as fed:
        run = fed.submit(opts)
        while not (events.exists() and events.read_text().strip()):  # round 0 done
            assert run.poll() is None, fed.run_log()[-3000:]
            assert time.monotonic() - t0 < 150, "round 0 never finished"
            time.sleep(0.2)
        node_of_2 = json.loads(events.read_text().splitlines()[0])["nodes"]["2"]
        fed.kill_node([fed.node_id(k) for k in range(3)].index(node_of_2))  # the SuperNode of partition 2
        report = fed.wait(run, opts, timeout=150)
        log = fed.run_log()
    print(f"deployment with a dropout: {time.monotonic() - t0:.1f} s")
    _no_leftovers(fed)
    rounds = report["rounds"]
    assert rounds[0]["aggregated"] == [0, 1, 2]
    assert rounds[1]["aggregated"] == [0, 1] and "2" in rounds[1]["dropped"]
    assert {"round": 1, "client": 2} == {k: report["dropouts"][0][k] for k in ("round", "client")}
    assert "round 1: client 2 (node" in log
    assert "dropped: no reply within 25 s" in log or "dropped: no connected SuperNode" in log
    got = load_file(str(tmp_path / "out" / "final_state.safetensors"))
    assert _equal(got, run_in_process(spec, participants=[r["aggregated"] for r in rounds]))
    assert not _equal(got, run_in_process(spec))  # the dropout changed the result
    json.dumps(report)  # the report is plain JSON


# --------------------------------------------------------------------------- CLI
def test_cli_writes_the_app_dir_and_a_run_config_the_server_app_reads(tmp_path):
    import tomli

    from devft_lab.flower.cli import main

    assert main(["app-dir", str(tmp_path / "app")]) == 0
    app = tomli.loads((tmp_path / "app" / "pyproject.toml").read_text())
    assert app["tool"]["flwr"]["app"]["components"] == {"serverapp": "devft_lab.flower.server_app:app",
                                                        "clientapp": "devft_lab.flower.client_app:app"}
    assert sorted(p.name for p in (tmp_path / "app").iterdir()) == ["pyproject.toml"]  # no code to ship
    rc = tmp_path / "run.toml"
    assert main(["run-config", "--config", "tiny", "--set", "devft.stages=2", "--set", "fed.num_rounds=4",
                 "--min-fit", "2", "--out", str(tmp_path / "out"), "-o", str(rc)]) == 0
    opts = ServerOptions.from_run_config(tomli.loads(rc.read_text()))
    assert opts.spec.name == "devft" and opts.min_fit == 2
    assert opts.spec.settings["config"]["devft"]["stages"] == 2
    # flwr run accepts only keys declared in the app's [tool.flwr.app.config]
    assert set(tomli.loads(rc.read_text())) <= set(app["tool"]["flwr"]["app"]["config"])
    assert main(["run-config", "--set", "devft.stagez=2", "--out", str(tmp_path)]) == 2  # bad config: exit 2


# --------------------------------------------------------------------------- partitions on nodes (no Flower runtime)
def test_partitions_go_to_nodes_in_sorted_order_and_stay_there():
    from devft_lab.flower.server_app import assign_nodes

    assert assign_nodes([13, 11, 12], 3) == {0: 11, 1: 12, 2: 13}          # random ids, sorted
    assert assign_nodes([13, 11, 12, 14], 3) == {0: 11, 1: 12, 2: 13}      # a spare node serves nothing
    assert assign_nodes([12, 11], 3) == {0: 11, 1: 12}                     # partition 2 has no node yet
    # a late node joins: it takes the free partition, the others keep theirs (their kept state)
    assert assign_nodes([10, 11, 12], 3, known={0: 11, 1: 12}) == {0: 11, 1: 12, 2: 10}
    # node 11 died and a new node 21 connected: 21 takes partition 0, no other partition moves
    assert assign_nodes([21, 12, 13], 3, known={0: 11, 1: 12, 2: 13}) == {0: 21, 1: 12, 2: 13}
    assert assign_nodes([12, 13], 3, known={0: 11, 1: 12, 2: 13}) == {1: 12, 2: 13}


def test_a_run_without_supernodes_fails_clearly():
    from types import SimpleNamespace

    from devft_lab.flower.server_app import _wait_for_nodes

    with pytest.raises(RuntimeError, match="no SuperNode connected within 0.01 s.*node-timeout"):
        _wait_for_nodes(SimpleNamespace(get_node_ids=lambda: []), 2, timeout=0.01)
    assert _wait_for_nodes(SimpleNamespace(get_node_ids=lambda: [5, 7]), 2, timeout=0.01) == [5, 7]
