"""The Flower ServerApp: rounds of send / wait / aggregate around a :class:`Workload`.

Each round the workload samples partition ids; the server maps them to the SuperNodes that
announced those ids (a ``query`` message at start-up; no answer at all is an error, and a
partition without a connected node is asked for again before a round samples it, so a node that
answered late or was restarted joins then), sends each one its instruction as a
``train`` message, and waits at most ``round_timeout`` seconds. Replies that carry an error,
and sampled clients that did not answer in time (a SuperNode that died, a slow link), are
logged by partition id and node id; the round aggregates what arrived if at least
``min_fit`` replies came, else the global state stays as it was (also logged).

After a round the workload may ask for a *collection* (:meth:`Workload.collect`): a
``query.collect`` message to the named clients, whose replies carry what they keep locally
(FedSA-LoRA's B at a DevFT stage end). Misses are logged the same way; they are not training
traffic and are reported apart (``bytes_collected``).

At the end the server writes ``<out_dir>/final_state.safetensors`` (the workload's result)
and ``<out_dir>/run.json`` (per-round log: sampled, aggregated, dropped with reasons, bytes
each way); ``<out_dir>/events.jsonl`` gets one line per round as it happens.

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
from typing import Any, Mapping, Sequence

from flwr.app import Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from safetensors.torch import save_file

from devft_lab.flower.records import (pack_config, records_to_state, state_nbytes,
                                      state_to_records, unpack_config)
from devft_lab.flower.workload import ClientReply, Workload, WorkloadSpec, build_workload

log = logging.getLogger("devft_lab.flower")

#: message type of a collection request (a ``query`` with its own action; see Workload.collect)
COLLECT = f"{MessageType.QUERY}.collect"

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
    aggregated: list[int] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)   # partition id -> reason
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
    try:
        from flwr.common.logger import log as flwr_log
        flwr_log(level, "[devft] " + msg, *args)
    except Exception:  # pragma: no cover - logging must never break a run
        pass


def discover_nodes(grid: Grid, num_nodes: int, timeout: float,
                   known: Mapping[int, int] | None = None) -> dict[int, int]:
    """``{partition id: node id}`` of the connected SuperNodes (waits up to ``timeout`` s for
    ``num_nodes`` of them to connect).

    Each node not in ``known`` (a mapping found before) is asked (``query`` message) which
    partition id its node config gives it, and given ``timeout`` s to answer; one that does not
    is named in a warning and can be asked again later (a simulation's virtual nodes answer only
    once their actor has started, which a busy machine can delay). A node claiming a partition
    whose known node is gone (a restarted SuperNode) takes it over.
    """
    mapping = dict(known or {})
    deadline = time.monotonic() + timeout
    nodes = list(grid.get_node_ids())
    while len(nodes) < num_nodes and time.monotonic() < deadline:
        time.sleep(0.5)
        nodes = list(grid.get_node_ids())
    if len(nodes) < num_nodes:
        _say(logging.WARNING, "only %d of %d SuperNodes connected after %.0f s", len(nodes), num_nodes, timeout)
    known_nodes = set(mapping.values())
    ask = [n for n in nodes if n not in known_nodes]
    if not ask:
        return mapping
    msgs = [Message(RecordDict({"config": pack_config({})}), dst_node_id=n, message_type=MessageType.QUERY)
            for n in ask]
    answered = set()
    for reply in grid.send_and_receive(msgs, timeout=timeout):
        node = reply.metadata.src_node_id
        answered.add(node)
        if reply.has_error():
            _say(logging.WARNING, "node %d did not answer the partition query: %s", node, reply.error.reason)
            continue
        pid = int(unpack_config(reply.content.config_records["config"])["partition_id"])
        if pid in mapping and mapping[pid] in nodes:
            raise RuntimeError(f"partition id {pid} claimed by nodes {mapping[pid]} and {node}")
        if pid in mapping:
            _say(logging.INFO, "partition %d: node %d replaces node %d (gone)", pid, node, mapping[pid])
        mapping[pid] = node
    for node in sorted(set(ask) - answered):
        _say(logging.WARNING, "node %d did not answer the partition query within %.0f s", node, timeout)
    _say(logging.INFO, "SuperNodes by partition id: %s", dict(sorted(mapping.items())))
    return mapping


def map_nodes(grid: Grid, num_nodes: int, timeout: float) -> dict[int, int]:
    """:func:`discover_nodes` at start-up, asked twice before giving up; a clear error when no
    SuperNode answers at all (a run without clients would end with the untrained model)."""
    nodes = discover_nodes(grid, num_nodes, timeout)
    if not nodes:
        nodes = discover_nodes(grid, num_nodes, timeout)
    if not nodes:
        raise RuntimeError(
            f"no SuperNode answered the partition query within {timeout:g} s, twice "
            f"({len(list(grid.get_node_ids()))} connected), so no client can train. Start each SuperNode with "
            "--node-config 'partition-id=<k> num-partitions=<n>', or give slow nodes longer (node-timeout).")
    return nodes


def _instruction_message(workload: Workload, rnd: int, client: int, node: int,
                         opts: ServerOptions) -> tuple[Message, int]:
    state, config = workload.instruction(rnd, client)
    return _message(MessageType.TRAIN, state, config, rnd, client, node, opts), state_nbytes(state)


def _message(kind: str, state: Mapping[str, Any], config: Mapping[str, Any], rnd: int, client: int,
             node: int, opts: ServerOptions) -> Message:
    arrays, dtypes = state_to_records(state)
    content = RecordDict({"arrays": arrays, "dtypes": dtypes,
                          "config": pack_config({**config, "round": rnd, "partition_id": client,
                                                 "workload": opts.spec.to_json()})})
    return Message(content, dst_node_id=node, message_type=kind, group_id=str(rnd),
                   ttl=opts.round_timeout + 30.0)


def _parse_reply(reply: Message) -> ClientReply:
    cfg = unpack_config(reply.content.config_records["config"])
    state = records_to_state(reply.content.array_records["arrays"], reply.content.config_records["dtypes"])
    return ClientReply(state, int(cfg["num_examples"]), dict(cfg.get("metrics", {})))


def _exchange(grid: Grid, msgs: Mapping[int, Message], nodes: Mapping[int, int], clients: Sequence[int],
              timeout: float, dropped: dict[str, str]) -> dict[int, ClientReply]:
    """Send ``msgs`` (by partition id), wait ``timeout`` s; replies by partition id.

    Every client of ``clients`` without a usable reply gets a reason in ``dropped``.
    """
    by_node = {nodes[c]: c for c in msgs}
    replies: dict[int, ClientReply] = {}
    for reply in grid.send_and_receive(list(msgs.values()), timeout=timeout):
        c = by_node.get(reply.metadata.src_node_id)
        if c is None:
            continue
        if reply.has_error():
            dropped[str(c)] = f"error reply: {reply.error.reason}"
            continue
        replies[c] = _parse_reply(reply)
    for c in clients:
        if c not in replies and str(c) not in dropped:
            dropped[str(c)] = f"no reply within {timeout:g} s"
    return replies


def _reachable(grid: Grid, nodes: Mapping[int, int], clients: Sequence[int], dropped: dict[str, str]) -> list[int]:
    """The clients of ``clients`` whose SuperNode is connected (the others noted in ``dropped``)."""
    alive = set(grid.get_node_ids())
    out = []
    for c in clients:
        if c in nodes and nodes[c] in alive:
            out.append(c)
        else:
            dropped[str(c)] = "no connected SuperNode for this partition"
    return out


def run_rounds(grid: Grid, opts: ServerOptions, workload: Workload | None = None) -> dict[str, Any]:
    """Run the whole federated job; write and return the report (see module docstring)."""
    workload = workload or build_workload(opts.spec)
    out = Path(opts.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    events = out / "events.jsonl"
    events.write_text("")
    t0 = time.monotonic()
    workload.prepare()
    nodes = map_nodes(grid, opts.num_nodes or workload.num_clients, opts.node_timeout)
    rounds: list[RoundLog] = []
    for rnd in range(workload.num_rounds):
        t_round = time.monotonic()
        rl = RoundLog(rnd, workload.sample(rnd))
        alive = set(grid.get_node_ids())
        if any(nodes.get(c) not in alive for c in rl.sampled):  # a late or restarted node joins now
            nodes = discover_nodes(grid, 0, opts.node_timeout, known=nodes)
        msgs: dict[int, Message] = {}
        for c in _reachable(grid, nodes, rl.sampled, rl.dropped):
            msgs[c], nbytes = _instruction_message(workload, rnd, c, nodes[c], opts)
            rl.bytes_down += nbytes
        replies = _exchange(grid, msgs, nodes, rl.sampled, opts.round_timeout, rl.dropped)
        rl.bytes_up = sum(state_nbytes(r.state) for r in replies.values())
        for c, why in sorted(rl.dropped.items()):
            _say(logging.WARNING, "round %d: client %s (node %s) dropped: %s", rnd, c,
                 nodes.get(int(c), "-"), why)
        if len(replies) >= opts.min_fit and replies:
            rl.aggregated = sorted(replies)
            rl.metrics = workload.aggregate(rnd, dict(sorted(replies.items())))
        else:
            workload.skip_round(rnd)
            _say(logging.WARNING, "round %d: %d replies < min_fit %d; global state unchanged",
                 rnd, len(replies), opts.min_fit)
        _collect(grid, workload, rnd, nodes, opts, rl)
        rl.seconds = round(time.monotonic() - t_round, 3)
        rounds.append(rl)
        _say(logging.INFO, "round %d: sampled %s, aggregated %s, dropped %s", rnd, rl.sampled,
             rl.aggregated, sorted(int(c) for c in rl.dropped))
        with events.open("a") as fh:
            fh.write(json.dumps(asdict(rl)) + "\n")
    report = {"workload": opts.spec.name, "settings": opts.spec.settings, "nodes": nodes,
              "min_fit": opts.min_fit, "rounds": [asdict(r) for r in rounds],
              "bytes_down": sum(r.bytes_down for r in rounds), "bytes_up": sum(r.bytes_up for r in rounds),
              "bytes_collected": sum(r.bytes_collected for r in rounds),
              "dropouts": [{"round": r.round, "client": int(c), "reason": why}
                           for r in rounds for c, why in sorted(r.dropped.items())],
              "collect_misses": [{"round": r.round, "client": int(c), "reason": why}
                                 for r in rounds for c, why in sorted(r.collect_missed.items())],
              "summary": workload.summary(), "seconds": round(time.monotonic() - t0, 3)}
    _write_result(out, workload, report)
    return report


def _collect(grid: Grid, workload: Workload, rnd: int, nodes: Mapping[int, int], opts: ServerOptions,
             rl: RoundLog) -> None:
    """The workload's collection step after round ``rnd`` (``query.collect`` messages), if it asks."""
    request = workload.collect(rnd)
    if request is None:
        return
    clients, config = request
    msgs = {c: _message(COLLECT, {}, config, rnd, c, nodes[c], opts)
            for c in _reachable(grid, nodes, clients, rl.collect_missed)}
    replies = _exchange(grid, msgs, nodes, clients, opts.round_timeout, rl.collect_missed)
    rl.collected = sorted(replies)
    rl.bytes_collected = sum(state_nbytes(r.state) for r in replies.values())
    for c, why in sorted(rl.collect_missed.items()):
        _say(logging.WARNING, "round %d: client %s (node %s) missed the collection: %s", rnd, c,
             nodes.get(int(c), "-"), why)
    workload.collected(rnd, dict(sorted(replies.items())))


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
    """A ServerApp running :func:`run_rounds`; ``opts`` (simulation) or the run config (deployment)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_rounds(grid, opts or ServerOptions.from_run_config(context.run_config))

    return app


#: the deployed ServerApp (``[tool.flwr.app.components] serverapp``); settings from the run config
app = make_server_app()
