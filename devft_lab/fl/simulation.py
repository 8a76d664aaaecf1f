"""In-process federated simulation: one frozen base model, many clients, any stage plan.

Per round t (global index across stages):

1. sample clients (:func:`devft_lab.fl.sampling.sample_clients`, seeded by t alone);
2. each sampled client starts from ``strategy.client_init(global, its kept state)`` and
   trains the stage model locally (:func:`devft_lab.fl.client.client_update`);
3. the server aggregates the uploads (``strategy.aggregate``, weighted by sample counts);
4. the round's cost goes to the ledger (bytes both ways, FLOPs, time, memory, loss), an
   evaluation runs when due, and the whole state is checkpointed atomically.

Memory: the base model exists once; a client costs only the LoRA tensors it keeps between
rounds (FedSA-LoRA's B; nothing for FedIT). Resume: :meth:`Simulation.resume` reloads the
newest intact checkpoint (two are kept: a damaged newest one is passed over, with a warning,
for the previous one) and continues bit for bit (client seeds depend only on (seed, round,
client), so nothing depends on how often the process was restarted).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from devft_lab.fl.accounting import (Ledger, RoundCost, cuda_peak_mb, num_params, peak_rss_mb, release_free_memory,
                                     rss_mb, tensor_bytes, training_flops)
from devft_lab.fl.checkpoint import CheckpointError, load_newest, save_checkpoint
from devft_lab.fl.client import LocalTraining, client_update
from devft_lab.fl.sampling import sample_clients
from devft_lab.fl.stages import StageModel, StagePlan, end_stage, stage_eval_state, stage_start_state
from devft_lab.fl.strategies import State, Strategy, merge_delta, stacked_delta
from devft_lab.core.train import scheduled_lr

Evaluator = Callable[[torch.nn.Module], dict[str, float]]
KEEP_CHECKPOINTS = 2  # the newest and the previous one, to fall back to if the newest is damaged


@dataclass
class SimulationSettings:
    """Round-level knobs (from the run config)."""

    clients_per_round: int | float
    seed: int
    training: LocalTraining
    lr: float
    lr_min: float = 0.0
    lr_schedule: str = "cosine"
    lr_scope: str = "run"  # run: one decay across all rounds | stage: restarted at each stage
    lr_start: int = 0  # run scope: this run's round 0 is round lr_start of the schedule
    lr_length: int | None = None  # run scope: the schedule's length in rounds (None: this run's rounds)
    eval_every: int = 0  # rounds; 0: at the end of each stage only
    eval_stage_ends: bool = True  # False: at the end of the run only (and every ``eval_every`` rounds)
    checkpoint_every: int = 1  # rounds; the end of every stage is always saved
    config_hash: str | None = None
    lora_scaling: float = 1.0  # alpha / r, for strategies that merge adapters into the base (FLoRA)
    progress: bool = True


@dataclass
class RunState:
    """Everything that changes during a run (and is checkpointed)."""

    round: int = 0  # next global round to run
    stage: int = 0
    stage_round: int = 0  # next round within the stage
    global_state: State = field(default_factory=dict)
    kept: dict[int, State] = field(default_factory=dict)  # per-client local tensors
    samples: dict[int, int] = field(default_factory=dict)  # per-client sample counts seen
    delivered: list[int] = field(default_factory=list)  # clients that hold this stage's submodel
    merged: dict[str, torch.Tensor] = field(default_factory=dict)  # FLoRA: sum of deltas merged into the base
    stage_info: dict[str, Any] = field(default_factory=dict)
    done: bool = False


class Simulation:
    """Runs a :class:`StagePlan` with a :class:`Strategy` over in-memory client shards."""

    def __init__(self, plan: StagePlan, strategy: Strategy, client_data: Sequence[Sequence[Mapping]],
                 settings: SimulationSettings, run_dir: str | os.PathLike, evaluator: Evaluator | None = None,
                 log: Callable[[str], None] | None = None):
        if not client_data or any(len(d) == 0 for d in client_data):
            empty = [i for i, d in enumerate(client_data) if len(d) == 0]
            raise ValueError(f"every client needs data; clients {empty[:10]} have none.")
        if strategy.single_stage and len(plan.stage_rounds()) != 1:
            raise ValueError(f"strategy {strategy.name} {strategy.single_stage}; it runs only a one-stage "
                             "(full-model) plan: set devft.enabled=false.")
        self.plan, self.strategy, self.data = plan, strategy, client_data
        self.s, self.evaluator = settings, evaluator
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.total_rounds = sum(plan.stage_rounds())
        self.state = RunState()
        self.ledger = Ledger(self.run_dir / "rounds.jsonl", self.run_dir / "rounds.csv")
        self.log = log or (lambda msg: None)
        self._stage: StageModel | None = None
        self._previous: StageModel | None = None

    # ------------------------------------------------------------------ resume
    @classmethod
    def resume(cls, plan: StagePlan, strategy: Strategy, client_data, settings: SimulationSettings,
               run_dir, evaluator: Evaluator | None = None, log=None) -> "Simulation":
        """A simulation positioned after the newest checkpoint under ``run_dir``."""
        sim = cls(plan, strategy, client_data, settings, run_dir, evaluator, log)
        ck = load_newest(sim.ckpt_dir, restore_rng=True, expect_config_hash=settings.config_hash,
                         warn=lambda msg: sim.log(f"warning: {msg}"))
        if ck is None:  # killed before the first checkpoint: start from scratch
            for p in (sim.run_dir / "rounds.jsonl", sim.run_dir / "rounds.csv"):
                p.unlink(missing_ok=True)
            sim.ledger = Ledger(sim.run_dir / "rounds.jsonl", sim.run_dir / "rounds.csv")
            return sim
        path = ck.path
        m = ck.meta
        st = sim.state
        try:
            st.round, st.stage, st.stage_round = int(m["round"]), int(m["stage"]), int(m["stage_round"])
            st.done, st.delivered = bool(m.get("done", False)), [int(c) for c in m.get("delivered", [])]
            st.stage_info = dict(m.get("stage_info", {}))
            st.samples = {int(k): int(v) for k, v in m.get("samples", {}).items()}
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path / 'state.json'}: its record is not what a checkpoint writes "
                                  f"({type(e).__name__}: {e}); it was edited. Restore it, or delete {path} to "
                                  "resume from the previous checkpoint.") from None
        st.global_state = dict(ck.tensors.get("global", {}))
        st.kept = {int(g.split("/", 1)[1]): dict(t) for g, t in ck.tensors.items() if g.startswith("client/")}
        st.merged = dict(ck.tensors.get("merged", {}))
        plan.restore(m.get("plan", {}), ck.tensors.get("plan", {}))
        sim.ledger = Ledger.resume(sim.run_dir / "rounds.jsonl", sim.run_dir / "rounds.csv",
                                   m.get("log_position"))
        for note in sim.ledger.rebuilt:  # a round log that was deleted or cut short
            sim.log(f"warning: {note}")
        sim._resumed_stage = st.stage_round > 0  # mid-stage: rebuild the stage exactly as recorded
        sim.log(f"resumed from {path.name}: round {st.round}, stage {st.stage}")
        return sim

    def _checkpoint(self) -> None:
        st = self.state
        plan_meta, plan_tensors = self.plan.export()
        meta = {"round": st.round, "stage": st.stage, "stage_round": st.stage_round, "done": st.done,
                "delivered": st.delivered, "stage_info": st.stage_info,
                "samples": {str(k): v for k, v in st.samples.items()}, "plan": plan_meta,
                "config_hash": self.s.config_hash, "log_position": self.ledger.position(),
                "total_rounds": self.total_rounds}
        tensors = {"global": st.global_state, "plan": plan_tensors, "merged": st.merged}
        tensors.update({f"client/{c}": t for c, t in st.kept.items() if t})
        # keep=2: the previous complete checkpoint stays until this one is written, so a resume
        # can fall back to it if this one is damaged later (load_newest)
        save_checkpoint(self.ckpt_dir, meta, {k: v for k, v in tensors.items() if v}, keep=KEEP_CHECKPOINTS)

    # ------------------------------------------------------------------ helpers
    def _eval_state(self) -> State:
        st = self.state
        return stage_eval_state(self.strategy, st.global_state, st.kept, st.samples)

    def evaluate(self) -> dict[str, float]:
        """Evaluate the full model as it stands now (the plan folds the stage adapter in)."""
        if self.evaluator is None or self._stage is None:
            return {}
        model = self.plan.eval_model(self._stage, self._eval_state())
        return self.evaluator(model)

    def _begin_stage(self, stage: int, resumed: bool) -> None:
        st = self.state
        self._previous, self._stage = self._stage, None
        if self._previous is None and st.stage_info and not resumed:  # resumed at a stage boundary
            self._previous = StageModel(stage - 1, None, {}, 0, 0, dict(st.stage_info))
        sm = self.plan.begin(stage, st.stage_info if resumed else None)
        self._stage = sm
        if resumed and st.merged:  # FLoRA: the base weights carry every merged aggregate so far
            merge_delta(sm.model.state_dict(), st.merged, 1.0, inplace=True)
        if not resumed:
            st.global_state = stage_start_state(self.strategy, sm)
            if stage > 0:
                st.kept = {c: self.plan.carry(k, sm, self._previous) for c, k in st.kept.items()}
            st.stage_info, st.delivered, st.stage_round = dict(sm.info), [], 0
        self.log(f"stage {stage + 1}/{len(self.plan.stage_rounds())}: capacity {sm.info.get('capacity')}, "
                 f"{sm.rounds} rounds")

    # ------------------------------------------------------------------ the run
    def run(self, until_round: int | None = None) -> dict[str, Any]:
        """Run (or continue) to the end, or until global round ``until_round`` (exclusive)."""
        st = self.state
        rounds = self.plan.stage_rounds()
        resumed = getattr(self, "_resumed_stage", False)
        bar = tqdm(total=self.total_rounds, initial=st.round, desc="rounds", unit="round",
                   disable=not self.s.progress or bool(os.environ.get("DEVFT_QUIET")))
        try:
            while not st.done and st.stage < len(rounds):
                if self._stage is None or self._stage.index != st.stage:
                    self._begin_stage(st.stage, resumed)
                    resumed = False
                while st.stage_round < rounds[st.stage]:
                    if until_round is not None and st.round >= until_round:
                        return self.summary()
                    self._one_round()
                    bar.update(1)
                    bar.set_postfix(stage=st.stage + 1, loss=f"{self._last_loss:.3f}")
                end_stage(self.plan, self.strategy, st.stage, st.global_state, st.kept, st.samples)
                st.stage += 1
                st.stage_round = 0
                if st.stage == len(rounds):
                    st.done = True
                self._checkpoint()
        finally:
            bar.close()
        return self.summary()

    def _one_round(self) -> None:
        st, sm, strategy = self.state, self._stage, self.strategy
        t = st.round
        lr = scheduled_lr(t, st.stage_round, sm.rounds, self.total_rounds, self.s.lr, self.s.lr_min,
                          self.s.lr_schedule, self.s.lr_scope, self.s.lr_start, self.s.lr_length)
        clients = sample_clients(len(self.data), self.s.clients_per_round, t, self.s.seed)
        training = LocalTraining(**{**self.s.training.__dict__, "lr": lr})
        cost = RoundCost(round=t, stage=st.stage, num_clients=len(clients))
        uploads, weights, losses, tokens = [], [], [], 0
        t0 = time.perf_counter()
        for c in clients:
            down = strategy.downlink(st.global_state, client=c)
            cost.downlink_bytes += tensor_bytes(down)
            if c not in st.delivered:
                cost.submodel_delivery_bytes += sm.delivery_bytes
                st.delivered.append(c)
            start = strategy.client_init(st.global_state, st.kept.get(c), client=c)
            res = client_update(sm.model, start, self.data[c], strategy, training, client=c, round_idx=t,
                                seed=self.s.seed, global_state=st.global_state)
            cost.uplink_bytes += tensor_bytes(res.upload)
            uploads.append(res.upload)
            weights.append(res.num_samples)
            losses.append(res.stats.loss)
            tokens += res.stats.tokens
            st.samples[c] = res.num_samples
            if res.keep:
                st.kept[c] = res.keep
        cost.train_s = time.perf_counter() - t0
        release_free_memory()  # the steps' freed activations back to the OS (glibc keeps them, fragmented)
        t1 = time.perf_counter()
        st.global_state = strategy.aggregate(st.global_state, uploads, weights, clients=clients)
        if strategy.requires_merge:
            # the participants receive the stacked adapter to merge it (its size grows with K)
            cost.downlink_bytes += tensor_bytes(st.global_state) * len(clients)
            st.global_state = self._merge_round(st.global_state, t)
        cost.aggregate_s = time.perf_counter() - t1
        lora_n = num_params(sm.start)  # the stage's LoRA (the global state may be more: DoFIT, C2A)
        cost.flops_estimate = training_flops(num_params(sm.model) - lora_n, tokens, lora_n, lora_only=True)
        st.round += 1
        st.stage_round += 1
        self._last_loss = sum(losses) / len(losses)
        cost.extra = {"loss": self._last_loss, "lr": lr, "clients": [int(c) for c in clients],
                      "capacity": sm.info.get("capacity")}
        last_of_stage = st.stage_round == sm.rounds
        due = self.s.eval_every and st.round % self.s.eval_every == 0
        last_of_run = st.round == self.total_rounds
        if self.evaluator is not None and ((last_of_stage and self.s.eval_stage_ends) or last_of_run or due):
            t2 = time.perf_counter()
            cost.extra.update(self.evaluate())
            cost.eval_s = time.perf_counter() - t2
        cost.peak_rss_mb = peak_rss_mb()
        cost.extra["rss_mb"] = round(rss_mb())  # resident now; the peak above is the high-water mark
        cost.cuda_peak_mb = cuda_peak_mb()
        self.ledger.record(cost)
        if not last_of_stage and self.s.checkpoint_every and st.round % self.s.checkpoint_every == 0:
            self._checkpoint()

    def _merge_round(self, stacked: State, t: int) -> State:
        """FLoRA: merge ``s * B_stack A_stack`` into the base weights; the next round starts fresh.

        The participants receive the stacked adapter to merge it themselves (counted in
        this round's downlink by the caller).
        """
        delta = {m: self.s.lora_scaling * d for m, d in stacked_delta(stacked).items()}
        merge_delta(self._stage.model.state_dict(), delta, 1.0, inplace=True)
        for m, d in delta.items():
            self.state.merged[m] = self.state.merged[m] + d if m in self.state.merged else d
        template = self._stage.start
        return self.strategy.fresh_adapter(template, t + 1)

    def summary(self) -> dict[str, Any]:
        """Totals so far plus the last evaluation."""
        out = dict(self.ledger.totals())
        out.update({"round": self.state.round, "stage": self.state.stage, "done": self.state.done})
        return out

    _last_loss = float("nan")


def final_state(sim: Simulation) -> State:
    """The run's evaluation adapter as it stands (for tests and exports)."""
    return sim._eval_state()


def dump_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)
