"""A run from a config: model, data, clients, plan, strategy -> a run folder of logs.

``start(cfg)`` validates everything *before* it writes anything (a bad config leaves no
half-written run folder), then trains; ``resume(run_dir)`` continues a killed run from its
newest checkpoint with the config saved in the folder. A run folder holds::

    config.yaml      the resolved config (what ``resume`` reads)
    meta.json        config hash, model, stage capacities, machine, command
    rounds.jsonl     one row per round: bytes, FLOPs, time, memory, loss, evaluations
    rounds.csv       the same as a table
    checkpoints/     the two newest complete states (atomic; safetensors + JSON; resume falls back
                     to the older one, with a warning, if the newest is damaged)
    summary.json     totals and final metrics, written when the run ends
    stages.jsonl     devft.probe_loss: sub/full model probe loss at each stage's start and end
    initial_items.jsonl, final_items.jsonl   every scored item before / after training (pairs runs)
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors.torch import load_file, save_file

from devft_lab.runner.report import json_object
from devft_lab.runner.config import (ConfigError, RunConfig, clients_per_round_count, config_hash, load_config,
                                    stage_rounds, to_yaml, validate_against_model)
from devft_lab.fl.client import LocalTraining, get_lora_state
from devft_lab.fl.simulation import Simulation, SimulationSettings, dump_json, final_state
from devft_lab.core.lora import to_flat, to_layers
from devft_lab.core.device import AUTO as AUTO_DTYPE, DTYPES as TORCH_DTYPES
from devft_lab.core.dropout import mask_sampler
from devft_lab.core.train import IGNORE, PACK_LAYOUT, Compute, collate, encode_examples, mean_response_loss
from devft_lab.fl.stages import FullModelPlan, StagePlan
from devft_lab.fl.strategies import STRATEGIES, Strategy, client_profiles, from_config
from devft_lab import __version__
from devft_lab.core.attention import choose_attention
from devft_lab.core.compiled import compile_available
from devft_lab.core.device import autocast_context, compute_dtype
from devft_lab.core import evaluate as scorer  # scorer.scorer_digest() read when a key is made
from devft_lab.core.evaluate import evaluate_suites
from devft_lab.core.layers import num_layers
from devft_lab.core.models import cache_dir, load_model
from devft_lab.data import DataError, load_examples
from devft_lab.data.lab import coverage, expand_suites, is_suite_file, load_suite, suite_cap, suite_name
from devft_lab.data.partition import feasible_split, partition
from devft_lab.method.submodel import default_lora_config, init_global_lora
from devft_lab.plans.devft import DevFTPlan
from devft_lab.plans.hooks import default_hooks
from devft_lab.plans.progfed import ProgFedPlan

LOG_NAME = "run.log"


class RunError(RuntimeError):
    """A run cannot start or continue; the message says why and what to do."""


@dataclass
class Parts:
    """Everything a simulation needs, built from a config."""

    cfg: RunConfig
    model: torch.nn.Module
    tokenizer: Any
    plan: StagePlan
    strategy: Strategy
    client_data: list[list[dict]]
    settings: SimulationSettings
    evaluator: Callable | None
    capacities: list[int]
    categories: list[str]
    parts: list[list[int]]
    compute: dict[str, Any] = field(default_factory=dict)  # compute dtype and the probe behind it


def machine() -> str:
    """One line describing where a run ran."""
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.machine()} {os.cpu_count()} CPU threads, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), {dev}, Python {platform.python_version()}")


def lora_config_of(cfg: RunConfig):
    """The PEFT LoraConfig of a run."""
    lo = cfg.lora
    return default_lora_config(r=lo.r, alpha=lo.alpha, dropout=lo.dropout, target_modules=list(lo.target_modules))


def device_of(cfg: RunConfig) -> str:
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.device


def _dtype(cfg: RunConfig):
    return None if cfg.model.dtype == AUTO_DTYPE else TORCH_DTYPES[cfg.model.dtype]


def build_plan(cfg: RunConfig, model: torch.nn.Module, capacities: Sequence[int],
               probe_batches: Sequence[dict] | None = None, probe_dtype: str | None = None) -> StagePlan:
    """The stage plan a config asks for: DevFT, ProgFed, or the whole model (one stage).

    ``probe_batches`` (collated examples, see :func:`probe_set`) feed DevFT's stage loss probe
    (``devft.probe_loss``) and the functional similarity (``devft.similarity=function``)."""
    lcfg = lora_config_of(cfg)
    rounds = stage_rounds(cfg)
    seed = cfg.train.seed
    if not cfg.devft.enabled:
        from peft import get_peft_model  # optional/heavy: peft

        init = init_global_lora(model, lcfg, seed)
        peft_model = get_peft_model(model, lcfg)
        prefix = to_layers(get_lora_state(peft_model))[1]
        return FullModelPlan(peft_model, to_flat(init, prefix), rounds[0])
    if cfg.devft.plan == "progfed":
        return ProgFedPlan(model, lcfg, capacities, rounds, seed=seed)

    d = cfg.devft
    probing = d.probe_loss or d.similarity == "function"
    return DevFTPlan(model, lcfg, capacities, rounds, d, seed=seed, probe_batches=probe_batches if probing else None,
                     hooks=default_hooks(d, probe_batches, probe_dtype))


def probe_set(cfg: RunConfig, held: Sequence[dict], pool: Sequence[dict], pad_id: int,
              batch_size: int = 8) -> list[dict[str, torch.Tensor]]:
    """The fixed probe batches of ``devft.probe_loss`` / ``devft.similarity=function``:
    ``devft.probe_examples`` held-out examples (``eval.holdout``), else training-pool examples,
    evenly spaced through the set (so a pool stored task by task gives every task), encoded,
    right-padded in batches of ``batch_size``."""
    src = [e for e in (held or pool) if any(l != IGNORE for l in e["labels"])]
    n = min(cfg.devft.probe_examples, len(src))
    chosen = [src[(i * len(src)) // n] for i in range(n)] if n else []
    if not chosen:
        raise ConfigError("devft.probe_loss / devft.similarity=function need probe examples with response "
                          "tokens; the data has none (check data.source and train.seq_len)")
    return [collate(chosen[i:i + batch_size], pad_id) for i in range(0, len(chosen), batch_size)]


def resolve_compute(cfg: RunConfig, model: torch.nn.Module,
                    recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"dtype", "probe", "attention", "attention_probe", ...}``: the compute dtype and the
    training attention kernel of a run. A resumed run reuses what its meta.json recorded (so it
    continues bit for bit); a new one asks the device probes for ``model.dtype = auto`` and
    ``train.attention = auto``."""
    if recorded and recorded.get("dtype"):
        out = {**recorded, "reused": True}
        if cfg.train.attention != "auto":
            out["attention"] = cfg.train.attention
        if "attention" not in out:
            raise RunError("meta.json records no attention kernel: the run was started by older code; resume it "
                           "with the code at the git tag results-frozen-2026-12-07 (results/FROZEN.md) or set "
                           "train.attention in its config.yaml")
        return out
    dtype, probe = compute_dtype(cfg.model.dtype, device_of(cfg))
    attention, attention_probe = choose_attention(cfg.train.attention, dtype, model, device_of(cfg))
    return {"dtype": dtype, "requested": cfg.model.dtype, "probe": probe, "attention": attention,
            "attention_probe": attention_probe}


def make_evaluator(cfg: RunConfig, tokenizer, holdout: list[dict], compute_dtype: str = "float32") -> Callable | None:
    """Held-out response loss (``eval.holdout`` examples) and benchmark suites (``eval.suites``),
    computed in ``compute_dtype`` (autocast)."""
    if not holdout and not cfg.eval.suites:
        return None

    @torch.no_grad()
    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        with autocast_context(_device_of_model(model), compute_dtype):
            return _evaluate(model)

    def _evaluate(model: torch.nn.Module) -> dict[str, float]:
        was = model.training
        model.eval()
        out: dict[str, float] = {}
        if holdout:  # already under autocast in compute_dtype
            out["eval_loss"] = mean_response_loss(
                model, [collate(holdout[i:i + 8], tokenizer.pad_token_id or 0) for i in range(0, len(holdout), 8)])
        if cfg.eval.suites:
            res = evaluate_suites(model, tokenizer, list(cfg.eval.suites), max_per_task=cfg.eval.max_per_task,
                                  max_per_file=cfg.eval.max_per_file, seed=cfg.train.seed,
                                  template=cfg.data.template)

            evaluate.last_items = [item_row(r) for r in res["items"]]  # kept by _run beside the summary
            out["acc"] = float(res["avg"])
            if "answer_nll" in res:  # the correct answers' loss per token, on the same items
                out["answer_nll"] = float(res["answer_nll"])
            for spec, v in res.get("suites", {}).items():  # a file suite under its stem
                out[f"acc_{suite_name(spec)}"] = float(v["acc"])  # mean over tasks (lab suites: as committed)
                if is_suite_file(spec):  # your file: the plain share of its items answered correctly too
                    hits = [r["correct"] for r in res["items"] if r["suite"] == spec]
                    out[f"correct_{suite_name(spec)}"] = 100.0 * sum(hits) / len(hits)
        model.train(was)
        return out

    evaluate.fingerprint = _eval_fingerprint(cfg, holdout)  # what it scores (see base_eval_cache)
    evaluate.last_items = []
    return evaluate


def item_row(r: dict[str, Any]) -> dict[str, Any]:
    """One scored item as kept in a run folder (``initial_items.jsonl``, ``final_items.jsonl``):
    enough to pair two runs item by item (:func:`devft_lab.stats.paired_bootstrap`)."""
    return {k: r[k] for k in ("suite", "id", "task", "pred", "correct", "correct_norm", "answer_nll") if k in r}


def write_items(path: Path, rows: list[dict[str, Any]]) -> None:
    """Per-item rows as JSON lines, written atomically."""
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)


def read_items(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows written by :func:`write_items` (empty if the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _eval_fingerprint(cfg: RunConfig, holdout: list[dict]) -> str:
    """SHA-256 of the held-out examples' tokens and of every evaluation item."""
    h = hashlib.sha256(json.dumps([[e["input_ids"], e["labels"]] for e in holdout]).encode())
    for name in expand_suites(list(cfg.eval.suites)) if cfg.eval.suites else []:
        cap = suite_cap(name, cfg.eval.max_per_task, cfg.eval.max_per_file)
        items = load_suite(name, max_per_task=cap, seed=cfg.train.seed)
        # a file suite also reports correct_<name>: keyed apart from caches made before it did
        extra = ["correct"] if is_suite_file(name) else []
        h.update(json.dumps([name, items, *extra], sort_keys=True, default=str).encode())
    return h.hexdigest()


def scoring(cfg: RunConfig) -> dict[str, str]:
    """One line per evaluation suite: how many of its items a run scores, the config key that
    capped it (nothing is left out silently), and for your own file what its two scores mean."""
    out = {}
    for spec in expand_suites(list(cfg.eval.suites)) if cfg.eval.suites else []:
        c = coverage(spec, suite_cap(spec, cfg.eval.max_per_task, cfg.eval.max_per_file), cfg.train.seed)
        tasks = f"{c['tasks']} task{'s' if c['tasks'] != 1 else ''}"
        line = f"scored {c['items']} of {c['of']} items, {tasks}"
        line += f": {c['cap']}" if c["cap"] else (", the whole file" if is_suite_file(spec) else "")
        if is_suite_file(spec):
            n = suite_name(spec)
            line += (f"; acc_{n} = mean of the accuracies of its {tasks}, "
                     f"correct_{n} = % of its scored items answered correctly")
        out[suite_name(spec)] = line
    return out


def _device_of_model(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def build(cfg: RunConfig, progress: bool = True, compute: dict[str, Any] | None = None) -> Parts:
    """Load the model and data, partition, encode, and make the plan; writes nothing.

    ``compute``: the compute dtype recorded by an earlier start (see :func:`resolve_compute`)."""
    if cfg.model.quantization != "none" and cfg.devft.enabled:
        raise ConfigError(f"model.quantization={cfg.model.quantization} with DevFT/ProgFed stages is not supported "
                          "yet (fusing layers needs dense base weights); set model.quantization=none, or "
                          "devft.enabled=false for a quantized full-model baseline.")
    model, tok = load_model(cfg.model.name, device=device_of(cfg), dtype=_dtype(cfg),
                            quantization=cfg.model.quantization)
    capacities = validate_against_model(cfg, num_layers(model))
    strategy = from_config(cfg.fed)
    if cfg.devft.enabled and strategy.single_stage:
        staged = ", ".join(n for n, c in STRATEGIES.items() if not c.single_stage)
        raise ConfigError(f"fed.strategy = {strategy.name} {strategy.single_stage}, so staged plans (DevFT, "
                          f"ProgFed) cannot run it; set devft.enabled=false, or use {staged}.")
    examples = load_examples(cfg.data.source, cfg.data.split, cfg.data.max_samples, cfg.train.seed)
    holdout_n = cfg.eval.holdout
    if holdout_n >= len(examples):
        raise ConfigError(f"eval.holdout = {holdout_n} leaves no training data ({len(examples)} examples); "
                          "lower eval.holdout")
    gen = torch.Generator().manual_seed(cfg.train.seed)
    order = torch.randperm(len(examples), generator=gen).tolist()
    held = [examples[i] for i in sorted(order[:holdout_n])]
    pool = [examples[i] for i in sorted(order[holdout_n:])]
    categories = [str(e.get("category", "default")) for e in pool]
    try:
        parts = partition(categories, cfg.data.partitioner, cfg.data.num_clients, seed=cfg.train.seed,
                          min_samples=cfg.data.min_samples, **dict(cfg.data.partitioner_params))
    except DataError as e:
        raise ConfigError(f"data: {e}{split_suggestion(categories, cfg)}") from None
    encoded = encode_examples(tok, pool, cfg.data.template, cfg.train.seq_len)
    client_data = [[encoded[i] for i in p] for p in parts]
    # what DoFIT (domains) and C2A (client embeddings) know of each client; the others ignore it
    strategy.bind_clients(client_profiles(parts, categories, client_data), model.get_input_embeddings())
    compute = resolve_compute(cfg, model, compute)
    held_encoded = encode_examples(tok, held, cfg.data.template, cfg.train.seq_len)
    evaluator = make_evaluator(cfg, tok, held_encoded, compute["dtype"])
    d = cfg.devft
    probe = (probe_set(cfg, held_encoded, encoded, tok.pad_token_id or 0)
             if d.enabled and (d.probe_loss or d.similarity == "function") else None)
    plan = build_plan(cfg, model, capacities, probe, compute["dtype"])
    t = cfg.train
    settings = SimulationSettings(
        clients_per_round=cfg.fed.clients_per_round, seed=t.seed,
        training=LocalTraining(steps=t.local_steps, batch_size=t.batch_size, lr=t.lr, grad_accum=t.grad_accum,
                               max_grad_norm=t.max_grad_norm,
                               compute=Compute(packing=t.packing, dtype=compute["dtype"],
                                               attention=compute["attention"], compile=t.compile,
                                               pad_id=tok.pad_token_id or 0)),
        lr=t.lr, lr_min=t.lr_min, lr_schedule=t.schedule, lr_scope=t.schedule_scope, lr_start=t.schedule_start,
        lr_length=t.schedule_rounds, eval_every=cfg.eval.every_n_rounds,
        eval_stage_ends=cfg.eval.stage_ends,
        config_hash=config_hash(cfg), progress=progress, lora_scaling=cfg.lora.alpha / cfg.lora.r)
    return Parts(cfg, model, tok, plan, strategy, client_data, settings, evaluator, capacities, categories, parts,
                 compute)


def split_suggestion(categories: list[str], cfg: RunConfig) -> str:
    """What to lower when the pool cannot give every client ``data.min_samples`` examples:
    the most clients that work and the largest min_samples that works (same seed, partitioner)."""
    da = cfg.data
    clients, min_samples = feasible_split(categories, da.partitioner, da.num_clients, seed=cfg.train.seed,
                                          min_samples=da.min_samples, **dict(da.partitioner_params))
    fixes = []
    if clients:
        fixes.append(f"data.num_clients={clients}")
    if min_samples and min_samples != da.min_samples:
        fixes.append(f"data.min_samples={min_samples}")
    if da.partitioner != "iid":
        iid, _ = feasible_split(categories, "iid", da.num_clients, seed=cfg.train.seed, min_samples=da.min_samples)
        if iid and iid > (clients or 0):
            fixes.append(f"data.partitioner=iid with data.num_clients={iid}"
                         + (" (the pool has one category: nothing to skew over)"
                            if len(set(categories)) == 1 else ""))
    if not fixes:
        return "\nNo number of clients works with this pool; use more data (data.source)."
    fix = " or ".join(fixes)
    per = clients_per_round_count(cfg.fed, clients or da.num_clients)
    note = (f" (fed.clients_per_round = {cfg.fed.clients_per_round} must then be at most {clients})"
            if clients and isinstance(cfg.fed.clients_per_round, int) and per > clients else "")
    return (f"\nThe pool has {len(categories)} training examples: set {fix}{note}, "
            "or use more data (data.source).")


def run_dir_of(cfg: RunConfig) -> Path:
    return Path(cfg.out_dir) / cfg.name


def _logger(run_dir: Path, quiet: bool) -> Callable[[str], None]:
    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        with open(run_dir / LOG_NAME, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        if not quiet:
            print(line, flush=True)

    return log


def start(cfg: RunConfig, force: bool = False, quiet: bool = False, command: str | None = None) -> dict[str, Any]:
    """Start a run in ``out_dir/name`` (refuses to overwrite a run unless ``force``)."""
    run_dir = run_dir_of(cfg)
    if run_dir.exists() and any(run_dir.iterdir()) and not force:
        raise RunError(f"{run_dir} already holds a run; continue it with `devft-lab resume {run_dir}`, "
                       "pick another name (name=...), or pass --force to start over.")
    parts = build(cfg, progress=not quiet)  # everything is validated before the folder is touched
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg), encoding="utf-8")
    dump_json(run_dir / "meta.json", {
        "config_hash": config_hash(cfg), "model": cfg.model.name, "capacities": parts.capacities,
        "stage_rounds": stage_rounds(cfg), "num_clients": len(parts.client_data),
        "client_sizes": [len(d) for d in parts.client_data], "machine": machine(),
        "compute_dtype": parts.compute, "compiled_layers": _compiles(cfg),
        "lora_dropout_masks": mask_sampler(device_of(cfg)),
        "packing_layout": PACK_LAYOUT if cfg.train.packing else "padded",
        "command": command or " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    return _run(parts, run_dir, quiet, resume=False)


def _compiles(cfg: RunConfig) -> bool:
    """Whether this run's training steps run compiled decoder layers (``train.compile`` and a
    machine that can compile)."""
    return bool(cfg.train.compile and compile_available()[0])


def finished_run(cfg: RunConfig) -> dict[str, Any] | None:
    """The summary of a finished run of exactly ``cfg`` (same training config hash and the same
    evaluation) in ``out_dir/name``, or None."""
    run_dir = run_dir_of(cfg)
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        saved = load_config(run_dir / "config.yaml")
    except (OSError, ValueError):
        return None
    same = config_hash(saved) == config_hash(cfg) and saved.eval == cfg.eval
    return summary if same and summary.get("done") else None


def start_or_reuse(cfg: RunConfig, quiet: bool = False) -> tuple[dict[str, Any], bool]:
    """``(summary, reused)``: read a finished run of the same config (e.g. the one ``make demo``
    left) instead of training it again; otherwise start it (replacing what is there)."""
    summary = finished_run(cfg)
    if summary is not None:
        return summary, True
    return start(cfg, force=True, quiet=quiet), False


def resume(run_dir: str | os.PathLike, quiet: bool = False) -> dict[str, Any]:
    """Continue a run from its newest checkpoint (with the config saved in the folder)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise RunError(f"{run_dir} is not a run folder (no config.yaml); start one with `devft-lab run CONFIG`.")
    try:
        cfg = load_config(run_dir / "config.yaml")
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg if str(run_dir) in msg else f"{run_dir / 'config.yaml'}: {msg}") from None
    meta = read_json_record(run_dir / "meta.json") if (run_dir / "meta.json").exists() else {}
    parts = build(cfg, progress=not quiet, compute=meta.get("compute_dtype"))
    return _run(parts, run_dir, quiet, resume=True)


def read_json_record(path: Path) -> dict[str, Any]:
    """A JSON object a run folder keeps (meta.json, summary.json), or a :class:`RunError` naming it."""
    return json_object(path, "it was edited or cut short. Restore it, or start the run again "
                             "(devft-lab run CONFIG --force).", RunError)


def base_eval_cache(cfg: RunConfig, compute_dtype: str, fingerprint: str) -> Path:
    """Where the untrained model's evaluation is kept: one file per model, compute dtype, and
    what is scored (``fingerprint``: the held-out examples and items, see make_evaluator). The
    method, LoRA and federation settings do not change it, since every adapter starts at B = 0,
    so runs that differ only in method share it. A local model's files enter the key by size and
    modification time, and the scorer's source (:func:`devft_lab.core.evaluate.scorer_digest`)
    enters it too."""
    local = Path(cfg.model.name).expanduser()  # a local folder or file: changed weights, new key
    files = sorted(local.rglob("*") if local.is_dir() else [local]) if local.exists() else []
    weights = [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()]
    key = {"v": __version__, "scorer": scorer.scorer_digest(), "model": asdict(cfg.model), "weights": weights, "dtype": compute_dtype,
           "what": fingerprint, "template": cfg.data.template, "device": str(device_of(cfg))}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return cache_dir() / "base_eval" / f"{cfg.model.name.replace('/', '_')}-{digest}.json"


def _run(parts: Parts, run_dir: Path, quiet: bool, resume: bool) -> dict[str, Any]:
    t_run, t_cpu = time.perf_counter(), time.process_time()
    log = _logger(run_dir, quiet)
    make = Simulation.resume if resume else Simulation
    sim = make(parts.plan, parts.strategy, parts.client_data, parts.settings, run_dir, parts.evaluator, log)
    if sim.state.done:
        log("run already complete")
    elif not resume or sim.state.round == 0:
        log(f"{parts.cfg.model.name}: {len(parts.client_data)} clients, stages {parts.capacities} layers, "
            f"rounds {parts.plan.stage_rounds()}, strategy {parts.strategy.name}")
        for suite, line in scoring(parts.cfg).items():
            log(f"evaluation {suite}: {line}")
        if parts.evaluator is not None and sim.ledger.position().get("rounds", 0) == 0:
            t0 = time.perf_counter()
            cached = base_eval_cache(parts.cfg, parts.compute.get("dtype", "float32"), getattr(parts.evaluator, "fingerprint", ""))
            cached.parent.mkdir(parents=True, exist_ok=True)
            base = json.loads(cached.read_text()) if cached.exists() else {}
            items = base.pop("items", None)
            if base and (items is not None or not parts.cfg.eval.suites):  # scored before: same model and items
                log(f"before training (cached, {cached}): {_fmt(base)}")
            else:
                base = parts.evaluator(parts.model)  # every adapter starts with B = 0: the base model
                items = list(getattr(parts.evaluator, "last_items", []))
                dump_json(cached, {**base, "items": items})
                log(f"before training: {_fmt(base)}")
            dump_json(run_dir / "initial_eval.json", {**base, "eval_s": time.perf_counter() - t0})
            if items:
                write_items(run_dir / "initial_items.jsonl", items)
    was_done = sim.state.done
    summary = sim.run()
    if sim.state.done:
        export_adapter(parts, final_state(sim), run_dir / "adapter")
        if getattr(parts.evaluator, "last_items", None):  # the final evaluation, item by item
            write_items(run_dir / "final_items.jsonl", parts.evaluator.last_items)
    probes = getattr(parts.plan, "stage_records", lambda: [])()
    if probes:  # DevFT's stage loss probe (devft.probe_loss): one row per stage start and end
        write_items(run_dir / "stages.jsonl", probes)
    last = {}
    for row in sim.ledger.rows:
        last.update({k: v for k, v in row["extra"].items()
                     if k in ("eval_loss", "answer_nll") or k.startswith(("acc", "correct_"))})
    summary["final"] = last
    scored = scoring(parts.cfg)
    if scored:  # how much of each suite was scored, and what a file's two scores mean
        summary["scored"] = scored
    summary["capacities"] = parts.capacities
    if probes:
        summary["stage_probes"] = probes
    if (run_dir / "initial_eval.json").exists():
        summary["initial"] = json.loads((run_dir / "initial_eval.json").read_text())
    summary["wall_s"] = round(time.perf_counter() - t_run, 1)  # this sitting (a resume counts from itself)
    summary["cpu_s"] = round(time.process_time() - t_cpu, 1)  # CPU time of this sitting, all threads (loading excluded)
    dump_json(run_dir / "summary.json", summary)
    meta_path = run_dir / "meta.json"
    if meta_path.exists() and sim.state.done and not was_done:  # the measured run time, beside the machine it ran on
        meta = json.loads(meta_path.read_text())
        meta.setdefault("wall_s_sittings", []).append(summary["wall_s"])
        meta["wall_s"] = round(sum(meta["wall_s_sittings"]), 1)
        meta.setdefault("cpu_s_sittings", []).append(summary["cpu_s"])
        meta["cpu_s"] = round(sum(meta["cpu_s_sittings"]), 1)
        dump_json(meta_path, meta)
    log(f"done: {_fmt(last)} | {sim.ledger.summary()}")
    return summary


def export_adapter(parts: Parts, state: dict[str, torch.Tensor], folder: Path) -> Path:
    """The final full-model adapter in PEFT's format (``PeftModel.from_pretrained`` loads it)."""
    folder.mkdir(parents=True, exist_ok=True)
    lcfg = lora_config_of(parts.cfg)
    lcfg.base_model_name_or_path = parts.cfg.model.name
    lcfg.save_pretrained(str(folder))
    tmp = folder / ".adapter_model.safetensors.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp))
    os.replace(tmp, folder / "adapter_model.safetensors")
    return folder


def load_adapter(run_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The final adapter tensors of a finished run."""
    path = Path(run_dir) / "adapter" / "adapter_model.safetensors"
    if not path.exists():
        raise RunError(f"{path} does not exist: the run has not finished (devft-lab resume {run_dir}).")
    return load_file(str(path))


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()) or "no metrics"
