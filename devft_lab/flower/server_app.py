"""The Flower ServerApp: Flower's own round loop (``Strategy.start``) around a :class:`Workload`.

:class:`WorkloadStrategy` is a :class:`flwr.serverapp.strategy.FedAvg` whose four hooks hand
every decision to the workload, so a Flower run takes the same steps as the in-process
simulation:

* ``configure_train``: the workload samples the round's partition ids (:mod:`devft_lab.fl.sampling`,
  as the simulation does) and gives each its instruction (for DevFT: the stage plan's stage
  description and the strategy's downlink; a stage change happens here, between rounds);
* ``aggregate_train``: the replies that arrived go to the workload's aggregation
  (:mod:`devft_lab.fl.strategies`: FedIT, FedSA-LoRA, DoFIT, C2A, ...) if at least ``min_fit``
  came, else the global state stays as it was (logged);
* ``configure_evaluate`` / ``aggregate_evaluate``: the workload's *collection* after a round
  (:meth:`Workload.collect`: FedSA-LoRA's client-kept B at a DevFT stage end, which the
  transfer needs). Not training traffic; reported apart as ``bytes_collected``.

Partition ids and SuperNodes. Flower's node ids are random, so partition ``p`` is given to the
``p``-th connected node in sorted node-id order (:func:`assign_nodes`) and the message names the
partition; the client trains the partition it is sent. A partition whose node disconnects is
reported as dropped, and is given to the lowest new node that connects (a restarted SuperNode).

Sampled clients that did not answer in ``round_timeout`` seconds, or answered with an error, are
logged by partition id and node id. At the end the server writes
``<out_dir>/final_state.safetensors`` (the workload's result) and ``<out_dir>/run.json`` (per-round
log: sampled, aggregated, dropped with reasons, bytes each way); ``<out_dir>/events.jsonl`` gets
one line per round as it happens.

Settings come from the run config (``flwr run ... --run-config``) under :data:`RUN_CONFIG_KEYS`
or, for the simulation engine, from :func:`make_server_app`.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log as flwr_log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from safetensors.torch import save_file

from devft_lab.flower.records import (pack_config, records_to_state, state_nbytes,
                                      state_to_records, unpack_config)
from devft_lab.flower.workload import ClientReply, Workload, WorkloadSpec, build_workload

log = logging.getLogger("devft_lab.flower")

#: run-config keys read by the deployed ServerApp (``flwr run --run-config 'key=value ...'``)
RUN_CONFIG_KEYS = ("workload", "out-dir", "min-fit", "round-timeout", "node-timeout", "num-nodes")


@dataclass
class ServerOptions:
    """Transport-level settings of a run (the workload has its own)."""

    spec: WorkloadSpec
    out_dir: str
    min_fit: int = 1              # fewest replies a round aggregates; fewer -> round skipped
    round_timeout: float = 60.0   # seconds to wait for a round's replies
    node_timeout: float = 60.0    # seconds to wait for num_nodes SuperNodes at start-up
    num_nodes: int = 0            # SuperNodes to wait for (0: the workload's num_clients)

    @classmethod
    def from_run_config(cls, cfg: Mapping[str, Any]) -> "ServerOptions":
        missing = [k for k in ("workload", "out-dir") if k not in cfg]
        if missing:
            raise ValueError(f"run config lacks {missing}; pass --run-config 'workload=... out-dir=...'")
        return cls(spec=WorkloadSpec.from_json(str(cfg["workload"])), out_dir=str(cfg["out-dir"]),
                   min_fit=int(cfg.get("min-fit", 1)), round_timeout=float(cfg.get("round-timeout", 60.0)),
                   node_timeout=float(cfg.get("node-timeout", 60.0)), num_nodes=int(cfg.get("num-nodes", 0)))

    def to_run_config(self) -> dict[str, Any]:
        return {"workload": self.spec.to_json(), "out-dir": self.out_dir, "min-fit": self.min_fit,
                "round-timeout": self.round_timeout, "node-timeout": self.node_timeout,
                "num-nodes": self.num_nodes}


@dataclass
class RoundLog:
    round: int
    sampled: list[int]
    nodes: dict[int, int] = field(default_factory=dict)         # partition id -> node id this round
    aggregated: list[int] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)       # partition id -> reason
    bytes_down: int = 0
    bytes_up: int = 0
    seconds: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    collected: list[int] = field(default_factory=list)          # answered Workload.collect
    collect_missed: dict[str, str] = field(default_factory=dict)
    bytes_collected: int = 0  # kept tensors sent for aggregation views only (not training uplink)


def _say(level: int, msg: str, *args: Any) -> None:
    """Log through Flower's logger too, so the line reaches ``flwr run --stream`` / ``flwr log``."""
    log.log(level, msg, *args)
    flwr_log(level, "[devft] " + msg, *args)


def assign_nodes(alive: Iterable[int], num_partitions: int, known: Mapping[int, int] | None = None) -> dict[int, int]:
    """``{partition id: node id}``: partition ``p`` on the ``p``-th connected node in sorted order.

    Deterministic given the node ids. With ``known`` (the mapping of the rounds before), a
    partition keeps its node while that node is connected; the partitions of nodes that are gone
    go, in order, to the lowest connected nodes that serve none (a restarted SuperNode).
    """
    alive = sorted(set(alive))
    mapping = {p: n for p, n in (known or {}).items() if n in alive}
    free = iter(n for n in alive if n not in set(mapping.values()))
    for p in range(num_partitions):
        if p not in mapping:
            node = next(free, None)
            if node is None:
                break
            mapping[p] = node
    return dict(sorted(mapping.items()))


def _wait_for_nodes(grid: Grid, num_nodes: int, timeout: float) -> list[int]:
    """The connected node ids, after waiting up to ``timeout`` s for ``num_nodes`` of them."""
    deadline = time.monotonic() + timeout
    nodes = list(grid.get_node_ids())
    while len(nodes) < num_nodes and time.monotonic() < deadline:
        time.sleep(0.5)
        nodes = list(grid.get_node_ids())
    if not nodes:
        raise RuntimeError(f"no SuperNode connected within {timeout:g} s, so no client can train. Start the "
                           "SuperNodes with --superlink <this SuperLink>, or give slow nodes longer (node-timeout).")
    if len(nodes) < num_nodes:
        _say(logging.WARNING, "only %d of %d SuperNodes connected after %.0f s", len(nodes), num_nodes, timeout)
    return nodes


def _message(kind: str, state: Mapping[str, Any], config: Mapping[str, Any], rnd: int, client: int,
             node: int, opts: ServerOptions) -> Message:
    arrays, dtypes = state_to_records(state)
    content = RecordDict({"arrays": arrays, "dtypes": dtypes,
                          "config": pack_config({**config, "round": rnd, "partition_id": client,
                                                 "workload": opts.spec.to_json()})})
    return Message(content, dst_node_id=node, message_type=kind, group_id=str(rnd),
                   ttl=opts.round_timeout + 30.0)  # a node that was away must not train a stale round


class WorkloadStrategy(FedAvg):
    """FedAvg's message flow with a :class:`Workload` deciding sampling, payloads and aggregation.

    Flower's ``server_round`` counts from 1; the workload's round ``rnd`` from 0.
    """

    def __init__(self, workload: Workload, opts: ServerOptions):
        super().__init__()
        self.workload, self.opts = workload, opts
        self.nodes: dict[int, int] = {}   # partition id -> node id
        self.connected = 0                # SuperNodes connected in the last round
        self.rounds: list[RoundLog] = []
        self._t0 = 0.0
        self._collect: tuple[list[int], dict[str, Any]] | None = None  # this round's collection request

    def summary(self) -> None:
        _say(logging.INFO, "workload %r: %d rounds over %d partitions, min_fit %d", self.opts.spec.name,
             self.workload.num_rounds, self.workload.num_clients, self.opts.min_fit)

    # ---- one round of training
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Sample partition ids (the workload's seeded sampling) and send each its instruction."""
        rnd, self._t0 = server_round - 1, time.monotonic()
        if not self.nodes:
            alive = _wait_for_nodes(grid, self.opts.num_nodes or self.workload.num_clients, self.opts.node_timeout)
        else:
            alive = list(grid.get_node_ids())
        self.nodes = assign_nodes(alive, self.workload.num_clients, self.nodes)
        self.connected = len(set(alive))
        rl = RoundLog(rnd, self.workload.sample(rnd), nodes=dict(self.nodes))
        self.rounds.append(rl)
        msgs = []
        for c in rl.sampled:
            if c not in self.nodes:
                rl.dropped[str(c)] = "no connected SuperNode for this partition"
                continue
            state, cfg = self.workload.instruction(rnd, c)
            msgs.append(_message(MessageType.TRAIN, state, cfg, rnd, c, self.nodes[c], self.opts))
            rl.bytes_down += state_nbytes(state)
        return msgs

    def _replies(self, replies: Iterable[Message], clients: list[int],
                 dropped: dict[str, str]) -> dict[int, ClientReply]:
        """Usable replies by partition id; every client of ``clients`` without one gets a reason in ``dropped``."""
        by_node = {n: p for p, n in self.nodes.items()}
        out: dict[int, ClientReply] = {}
        for reply in replies:
            c = by_node.get(reply.metadata.src_node_id)
            if c is None:
                continue
            if reply.has_error():
                dropped[str(c)] = f"error reply: {reply.error.reason}"
                continue
            cfg = unpack_config(reply.content.config_records["config"])
            state = records_to_state(reply.content.array_records["arrays"], reply.content.config_records["dtypes"])
            out[c] = ClientReply(state, int(cfg["num_examples"]), dict(cfg.get("metrics", {})))
        for c in clients:
            if c not in out and str(c) not in dropped:
                dropped[str(c)] = f"no reply within {self.opts.round_timeout:g} s"
        return dict(sorted(out.items()))

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The workload's aggregation (fl.strategies) over the replies that arrived, if ``min_fit`` did."""
        rl = self.rounds[-1]
        got = self._replies(replies, rl.sampled, rl.dropped)
        rl.bytes_up = sum(state_nbytes(r.state) for r in got.values())
        for c, why in sorted(rl.dropped.items()):
            _say(logging.WARNING, "round %d: client %s (node %s) dropped: %s", rl.round, c,
                 self.nodes.get(int(c), "-"), why)
        if got and len(got) >= self.opts.min_fit:
            rl.aggregated = sorted(got)
            rl.metrics = self.workload.aggregate(rl.round, got)
        else:
            self.workload.skip_round(rl.round)
            _say(logging.WARNING, "round %d: %d replies < min_fit %d; global state unchanged",
                 rl.round, len(got), self.opts.min_fit)
        numbers = {k: v for k, v in rl.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return None, MetricRecord(numbers) if numbers else None  # the global state stays in the workload

    # ---- the collection after a round (an evaluate message)
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Ask the clients the workload names (:meth:`Workload.collect`) for their kept tensors."""
        rl = self.rounds[-1]
        self._collect = self.workload.collect(rl.round)
        if self._collect is None:
            return []
        clients, cfg = self._collect
        alive = set(grid.get_node_ids())
        msgs = []
        for c in clients:
            if self.nodes.get(c) in alive:
                msgs.append(_message(MessageType.EVALUATE, {}, cfg, rl.round, c, self.nodes[c], self.opts))
            else:
                rl.collect_missed[str(c)] = "no connected SuperNode for this partition"
        return msgs

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Hand the collected tensors to the workload; close the round's log (the round ends here)."""
        rl = self.rounds[-1]
        if self._collect is not None:
            got = self._replies(replies, self._collect[0], rl.collect_missed)
            rl.collected = sorted(got)
            rl.bytes_collected = sum(state_nbytes(r.state) for r in got.values())
            for c, why in sorted(rl.collect_missed.items()):
                _say(logging.WARNING, "round %d: client %s (node %s) missed the collection: %s", rl.round, c,
                     self.nodes.get(int(c), "-"), why)
            self.workload.collected(rl.round, got)
        rl.seconds = round(time.monotonic() - self._t0, 3)
        _say(logging.INFO, "round %d: sampled %s, aggregated %s, dropped %s", rl.round, rl.sampled,
             rl.aggregated, sorted(int(c) for c in rl.dropped))
        with (Path(self.opts.out_dir) / "events.jsonl").open("a") as fh:
            fh.write(json.dumps(asdict(rl)) + "\n")
        return None

    def report(self, seconds: float) -> dict[str, Any]:
        """The run's report (``run.json``)."""
        rounds = self.rounds
        return {"workload": self.opts.spec.name, "settings": self.opts.spec.settings, "nodes": self.nodes,
                "connected": self.connected,
                "min_fit": self.opts.min_fit, "rounds": [asdict(r) for r in rounds],
                "bytes_down": sum(r.bytes_down for r in rounds), "bytes_up": sum(r.bytes_up for r in rounds),
                "bytes_collected": sum(r.bytes_collected for r in rounds),
                "dropouts": [{"round": r.round, "client": int(c), "reason": why}
                             for r in rounds for c, why in sorted(r.dropped.items())],
                "collect_misses": [{"round": r.round, "client": int(c), "reason": why}
                                   for r in rounds for c, why in sorted(r.collect_missed.items())],
                "summary": self.workload.summary(), "seconds": round(seconds, 3)}


def run_workload(grid: Grid, opts: ServerOptions, workload: Workload | None = None) -> dict[str, Any]:
    """The whole federated job with ``Strategy.start``; write and return the report (module docstring)."""
    workload = workload or build_workload(opts.spec)
    out = Path(opts.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "events.jsonl").write_text("")
    t0 = time.monotonic()
    workload.prepare()
    strategy = WorkloadStrategy(workload, opts)
    strategy.start(grid, ArrayRecord(), num_rounds=workload.num_rounds, timeout=opts.round_timeout)
    report = strategy.report(time.monotonic() - t0)
    _write_result(out, workload, report)
    return report


def _write_result(out: Path, workload: Workload, report: dict[str, Any]) -> None:
    """``final_state.safetensors`` then ``run.json``, each written atomically (rename)."""
    tmp = out / "final_state.safetensors.tmp"
    save_file({k: v.contiguous() for k, v in workload.result().items()}, str(tmp))
    os.replace(tmp, out / "final_state.safetensors")
    tmp = out / "run.json.tmp"
    tmp.write_text(json.dumps(report, indent=1, sort_keys=True, default=str))
    os.replace(tmp, out / "run.json")
    _say(logging.INFO, "wrote %s", out / "run.json")


def make_server_app(opts: ServerOptions | None = None) -> ServerApp:
    """A ServerApp running :func:`run_workload`; ``opts`` (simulation) or the run config (deployment)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_workload(grid, opts or ServerOptions.from_run_config(context.run_config))

    return app


#: the deployed ServerApp (``[tool.flwr.app.components] serverapp``); settings from the run config
app = make_server_app()
