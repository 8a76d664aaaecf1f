"""What runs inside the Flower apps: a *workload* is the federated job minus the transport.

The ServerApp and ClientApp (:mod:`devft_lab.flower.server_app`, :mod:`.client_app`) only
move tensors and JSON settings; every decision about training lives in a :class:`Workload`:

* server side: which clients a round samples (:meth:`Workload.sample`), what each sampled
  client receives (:meth:`Workload.instruction`), how the replies are folded into the global
  state (:meth:`Workload.aggregate`), the final state (:meth:`Workload.result`);
* client side: the local update (:meth:`Workload.train`), a pure function of what the server
  sent, the client's partition id and what the client kept from earlier rounds.

A workload is named by a :class:`WorkloadSpec` (a registered name + JSON settings) that the
server sends with every instruction; the client looks the name up in :data:`WORKLOADS` (code
that is already installed on the client) and never runs anything that came over the wire.

:class:`DummyWorkload` is a deterministic stand-in used to test the transport: each client
pulls the global tensors towards its own seeded target; :func:`run_in_process` replays any
workload without Flower, which is what the equality tests compare against.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import torch

from devft_lab.fl.sampling import sample_clients

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class WorkloadSpec:
    """A registered workload name and its JSON-serialisable settings."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "settings": self.settings}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "WorkloadSpec":
        obj = json.loads(text)
        return cls(str(obj["name"]), dict(obj.get("settings", {})))


@dataclass
class ClientReply:
    """What a client returns: the uploaded tensors, its sample count, metrics, kept state."""

    state: State
    num_examples: int
    metrics: dict[str, Any] = field(default_factory=dict)
    local: State | None = None  # kept on the client for its next round (never uploaded)


class Workload(ABC):
    """The federated job, transport-free. Subclasses register in :data:`WORKLOADS`."""

    name: ClassVar[str]

    def __init__(self, settings: Mapping[str, Any]):
        self.settings = dict(settings)

    @property
    def spec(self) -> WorkloadSpec:
        return WorkloadSpec(self.name, self.settings)

    # ---- shape of the run
    @property
    @abstractmethod
    def num_rounds(self) -> int: ...

    @property
    @abstractmethod
    def num_clients(self) -> int: ...

    def sample(self, rnd: int) -> list[int]:
        """Partition ids that train in round ``rnd`` (default: seeded sampling of fl.sampling)."""
        return sample_clients(self.num_clients, self.settings.get("clients_per_round", self.num_clients),
                              rnd, int(self.settings.get("seed", 0)))

    # ---- server side
    def prepare(self) -> None:
        """Server: build what the rounds need (called once, before the SuperNodes are queried)."""

    @abstractmethod
    def instruction(self, rnd: int, client: int) -> tuple[State, dict[str, Any]]:
        """Tensors and JSON config sent to ``client`` in round ``rnd``."""

    @abstractmethod
    def aggregate(self, rnd: int, replies: Mapping[int, ClientReply]) -> dict[str, Any]:
        """Fold the replies that arrived (keyed by partition id) into the global state."""

    def skip_round(self, rnd: int) -> None:
        """Called instead of :meth:`aggregate` when fewer than the minimum replies arrived."""

    def collect(self, rnd: int) -> tuple[list[int], dict[str, Any]] | None:
        """After round ``rnd``: clients whose kept state the server needs, and the request config.

        The default (``None``) collects nothing. A workload whose aggregate view depends on what
        clients keep (FedSA-LoRA's B at a DevFT stage boundary) names those clients here; they
        answer with :meth:`report` and the server passes the replies to :meth:`collected`.
        """
        return None

    def collected(self, rnd: int, replies: Mapping[int, ClientReply]) -> None:
        """Receive the replies to :meth:`collect` (those that arrived in time)."""

    @abstractmethod
    def result(self) -> State:
        """The global state to report at the end of the run."""

    def summary(self) -> dict[str, Any]:
        """Workload-specific numbers for the run report (JSON-serialisable)."""
        return {}

    # ---- client side
    @abstractmethod
    def train(self, client: int, rnd: int, state: State, config: Mapping[str, Any],
              local: State | None) -> ClientReply:
        """The local update of ``client`` (deterministic given its inputs)."""

    def report(self, client: int, config: Mapping[str, Any], local: State | None) -> ClientReply:
        """Client side of :meth:`collect`: what the client sends from its kept state."""
        raise NotImplementedError(f"workload {self.name!r} collects nothing")


# --------------------------------------------------------------------------- dummy workload
class DummyWorkload(Workload):
    """Clients pull a small tensor dict towards a seeded per-client target.

    Settings: ``num_clients`` (3), ``clients_per_round`` (all), ``num_rounds`` (3), ``seed``
    (0), ``local_steps`` (2), ``lr`` (0.5), ``fail_clients`` (partition ids whose update raises;
    to test error replies). Client ``p`` holds ``8 + 4 p`` examples; aggregation is the
    sample-weighted mean in float64.
    """

    name = "dummy"

    def __init__(self, settings: Mapping[str, Any]):
        super().__init__(settings)
        s = self.settings
        self._clients = int(s.get("num_clients", 3))
        self._rounds = int(s.get("num_rounds", 3))
        g = torch.Generator().manual_seed(int(s.get("seed", 0)))
        self.global_state: State = {"layer.weight": torch.randn(4, 3, generator=g),
                                    "layer.bias": torch.randn(3, generator=g)}

    @property
    def num_rounds(self) -> int:
        return self._rounds

    @property
    def num_clients(self) -> int:
        return self._clients

    def instruction(self, rnd: int, client: int) -> tuple[State, dict[str, Any]]:
        return {k: v.clone() for k, v in self.global_state.items()}, {"round": rnd}

    def aggregate(self, rnd: int, replies: Mapping[int, ClientReply]) -> dict[str, Any]:
        total = sum(r.num_examples for r in replies.values())
        self.global_state = {
            k: sum(r.state[k].double() * (r.num_examples / total) for r in replies.values()).to(v.dtype)
            for k, v in self.global_state.items()}
        return {"examples": total}

    def result(self) -> State:
        return {k: v.clone() for k, v in self.global_state.items()}

    def _target(self, client: int) -> State:
        g = torch.Generator().manual_seed(10_000 + 97 * int(self.settings.get("seed", 0)) + client)
        return {"layer.weight": torch.randn(4, 3, generator=g), "layer.bias": torch.randn(3, generator=g)}

    def train(self, client: int, rnd: int, state: State, config: Mapping[str, Any],
              local: State | None) -> ClientReply:
        if client in set(self.settings.get("fail_clients", [])):
            raise RuntimeError(f"client {client}: failing on purpose (fail_clients)")
        lr, steps = float(self.settings.get("lr", 0.5)), int(self.settings.get("local_steps", 2))
        target, out = self._target(client), {k: v.clone() for k, v in state.items()}
        for _ in range(steps):
            out = {k: v - lr * (v - target[k]) for k, v in out.items()}
        seen = 1 if local is None else int(local["rounds_seen"].item()) + 1
        return ClientReply(out, 8 + 4 * client, {"rounds_seen": seen},
                           local={"rounds_seen": torch.tensor(seen)})


WORKLOADS: dict[str, type[Workload]] = {DummyWorkload.name: DummyWorkload}


def register(cls: type[Workload]) -> type[Workload]:
    """Class decorator: make ``cls`` reachable by name from a :class:`WorkloadSpec`."""
    WORKLOADS[cls.name] = cls
    return cls


def build_workload(spec: WorkloadSpec) -> Workload:
    """The workload a spec names (only registered classes; unknown names are an error)."""
    if spec.name not in WORKLOADS:
        _load_builtin_workloads()
    if spec.name not in WORKLOADS:
        raise ValueError(f"unknown workload {spec.name!r}; registered: {sorted(WORKLOADS)}")
    return WORKLOADS[spec.name](spec.settings)


def _load_builtin_workloads() -> None:
    """Import the modules that register the heavier workloads (lazily: they pull in torch models)."""
    try:
        import devft_lab.flower.devft_workload  # noqa: F401  optional/heavy: devft_lab.flower.devft_workload (torch models; imported lazily to register "devft", it imports this module)
    except ImportError:
        pass


def run_in_process(spec: WorkloadSpec, participants: Sequence[Sequence[int]] | None = None) -> State:
    """Replay a workload without Flower: server and clients in one loop.

    ``participants[r]`` overrides who replied in round ``r`` (e.g. what a Flower run logged
    after a dropout); by default every sampled client replies. An empty round is skipped.
    """
    server, client_side = build_workload(spec), build_workload(spec)
    kept: dict[int, State | None] = {}
    for rnd in range(server.num_rounds):
        who = server.sample(rnd) if participants is None else list(participants[rnd])
        replies = {}
        for c in who:
            state, config = server.instruction(rnd, c)
            reply = client_side.train(c, rnd, state, config, kept.get(c))
            kept[c] = reply.local
            replies[c] = reply
        if replies:
            server.aggregate(rnd, replies)
        else:
            server.skip_round(rnd)
        request = server.collect(rnd)
        if request is not None:
            clients, config = request
            server.collected(rnd, {c: client_side.report(c, config, kept.get(c)) for c in clients})
    return server.result()
