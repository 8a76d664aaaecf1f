"""Run a workload under Flower's Simulation Engine (virtual SuperNodes, Ray backend).

The same ServerApp/ClientApp as the deployment; the settings reach the ServerApp through a
closure (:func:`devft_lab.flower.server_app.make_server_app`) because
``flwr.simulation.run_simulation`` passes no run config. The server gives each virtual
SuperNode its partition (:func:`devft_lab.flower.server_app.assign_nodes`). Needs
``flwr[simulation]`` (Ray).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from devft_lab.flower.client_app import app as client_app
from devft_lab.flower.server_app import ServerOptions, make_server_app
from devft_lab.flower.workload import build_workload


def run_simulation(opts: ServerOptions, num_supernodes: int | None = None, num_cpus: int = 1,
                   verbose: bool = False) -> dict[str, Any]:
    """Run to the end in this process; returns the report the ServerApp wrote (``run.json``).

    ``num_cpus`` caps Ray (the whole simulation) and each virtual client gets one CPU share
    of it, so clients run one after the other on small machines.
    """
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import flwr.simulation  # optional/heavy: flwr

    n = num_supernodes or build_workload(opts.spec).num_clients
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": num_cpus, "num_gpus": 0, "include_dashboard": False,
                             "logging_level": "error", "log_to_driver": verbose}}
    flwr.simulation.run_simulation(server_app=make_server_app(opts), client_app=client_app,
                                   num_supernodes=n, backend_config=backend, verbose_logging=verbose)
    report = Path(opts.out_dir) / "run.json"
    if not report.exists():
        raise RuntimeError(f"simulation ended without writing {report}; see the log above")
    return json.loads(report.read_text())
