"""The Flower ClientApp: the workload's local update, and what it keeps, on one SuperNode.

The server names the partition (the client id ``0..N-1`` of the in-process simulation) in every
message: it gives partition ``p`` to the ``p``-th SuperNode in sorted node-id order
(:func:`devft_lab.flower.server_app.assign_nodes`), and the client trains that partition. What a
workload keeps on the client between rounds (FedSA-LoRA's local B, say) lives in the node's
``context.state`` and never leaves the node except when the server collects it (an ``evaluate``
message, :meth:`Workload.collect`).

Only the workload *name* travels in the message; its class comes from
:data:`devft_lab.flower.workload.WORKLOADS`, i.e. from code installed on the client.
"""
from __future__ import annotations

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from devft_lab.flower.records import pack_config, records_to_state, state_to_records, unpack_config
from devft_lab.flower.workload import WorkloadSpec, build_workload

_LOCAL = "devft.local"          # context.state key of the client's kept tensors
_LOCAL_DTYPES = "devft.local.dtypes"
_cache: dict[str, object] = {}  # workload objects by spec (reused while the process lives)

app = ClientApp()


def _workload(spec_json: str):
    """The workload a spec names (imports torch and the workload's code on first use)."""
    if spec_json not in _cache:
        _cache.clear()
        _cache[spec_json] = build_workload(WorkloadSpec.from_json(spec_json))
    return _cache[spec_json]


def _kept(context: Context):
    """The tensors this node kept from its earlier rounds (None before its first round)."""
    if _LOCAL not in context.state.array_records:
        return None
    return records_to_state(context.state.array_records[_LOCAL], context.state.config_records[_LOCAL_DTYPES])


def _reply(msg: Message, reply, pid: int) -> Message:
    arrays, dtypes = state_to_records(reply.state)
    meta = pack_config({"num_examples": reply.num_examples, "metrics": reply.metrics, "partition_id": pid})
    return Message(RecordDict({"arrays": arrays, "dtypes": dtypes, "config": meta}), reply_to=msg)


@app.evaluate()
def collect(msg: Message, context: Context) -> Message:
    """Send what the workload asks of this node's kept state (e.g. FedSA-LoRA's B at a stage end)."""
    cfg = unpack_config(msg.content.config_records["config"])
    pid = int(cfg["partition_id"])
    return _reply(msg, _workload(str(cfg["workload"])).report(pid, cfg, _kept(context)), pid)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round of local training on this node's partition."""
    cfg = unpack_config(msg.content.config_records["config"])
    pid = int(cfg["partition_id"])
    state = records_to_state(msg.content.array_records["arrays"], msg.content.config_records["dtypes"])
    reply = _workload(str(cfg["workload"])).train(pid, int(cfg["round"]), state, cfg, _kept(context))
    if reply.local is not None:
        arrays, dtypes = state_to_records(reply.local)
        context.state[_LOCAL], context.state[_LOCAL_DTYPES] = arrays, dtypes
    return _reply(msg, reply, pid)
