"""Run configuration: one dataclass tree, loaded from YAML, overridden from the command line.

A run is described by a :class:`RunConfig`::

    RunConfig
      model   ModelConfig    which LLM, dtype, quantization
      lora    LoraConfig     rank r, alpha, dropout, target modules
      data    DataConfig     instruction data source, partitioner, number of clients
      train   TrainConfig    local steps, batch, learning-rate schedule, seed
      fed     FedConfig      rounds, clients per round, strategy (FedIT, FFA-LoRA, ...)
      devft   DevFTConfig    stages, capacity growth, grouping (DGLG), fusion (DBLF), beta
      eval    EvalConfig     how often and on which suites to evaluate

Load one with :func:`load_config`::

    cfg = load_config("tiny")                                   # shipped devft_lab/runner/configs/tiny.yaml
    cfg = load_config("my_run.yaml", ["fed.strategy=fedsa-lora", "devft.beta=0.15"])

Overrides are ``dotted.key=value``; the value is parsed with ``yaml.safe_load`` (so
``true``, ``0.1``, ``[q_proj, v_proj]`` and ``null`` mean what they look like). The field
annotations are the rules: pydantic checks each value's type, range (``Count``: >= 1, ...) and
choice (``Literal[<a registry's names>]``, the registry in ``method``, ``data``, ``core`` or
``plans`` that implements them); :func:`validate` adds what ties fields together. Every
mistake raises :class:`ConfigError` (a ``ValueError``) whose message names the field, the
value given and the fix; the CLI maps it to exit code 2. Nothing is taken silently: a YAML key given twice
(:class:`UniqueKeyLoader`), an empty file, a file that is not UTF-8 and a float that is not
finite (``inf``, ``nan``; :func:`check_finite`) are all refused.

Choices made where the paper is silent (see ``docs/method.md``, "open"):

* ``fed.num_rounds`` is the total; with DevFT on, ``devft.rounds_per_stage`` (an int or a
  list, one entry per stage) splits it. Leave ``rounds_per_stage`` null to split
  ``num_rounds`` evenly (later stages take the remainder). If both are given they must agree;
  :func:`load_config` with an override of ``fed.num_rounds`` alone re-splits evenly.
* ``devft.capacities`` null means geometric growth ending at the full model
  (``devft_lab.method.schedule.stage_capacities``: ``round(L / growth**(S - s))``, made
  strictly increasing); it can only be checked against a model with
  :func:`validate_against_model`.
* ``fed.clients_per_round`` is a count (int >= 1) or a fraction (float in (0, 1]).
* :func:`config_hash` ignores ``name``, ``out_dir``, ``device`` and ``eval``: the fields
  that do not change what is trained, so a run can be resumed elsewhere.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Mapping, Union

import pydantic
import yaml
from annotated_types import Ge, Gt, Le, Lt

from devft_lab.core.attention import KERNELS as ATTENTION_KERNELS
from devft_lab.core.choices import ConfigError
from devft_lab.core.device import AUTO as AUTO_DTYPE, DTYPES as TORCH_DTYPES
from devft_lab.core.choices import closest as _closest
from devft_lab.core.choices import not_one_of
from devft_lab.core.train import LR_SCOPES, scheduled_lr
from devft_lab.data.lab import expand_suites, is_suite_file, read_user_items
from devft_lab.data.partition import PARTITIONERS
from devft_lab.data.records import DataError
from devft_lab.data.templates import TEMPLATES
from devft_lab.fl.strategies import STRATEGY_ALIASES, STRATEGY_PARAMS, canonical_strategy, get_strategy  # noqa: F401
from devft_lab.method.fusion import ANCHOR_RULES, FUSION_METHODS
from devft_lab.method.grouping import METHODS as GROUPINGS
from devft_lab.method.grouping import NEGATIVES as AFFINITIES
from devft_lab.method.schedule import stage_capacities, validate_capacities
from devft_lab.method.similarity import SIMILARITIES
from devft_lab.method.transfer import TRANSFER_RULES
from devft_lab.plans import PLANS as PLAN_CLASSES

# A field that names a choice is typed ``Literal[<the registry's names>]``: the registry that
# implements the names owns the list (one owner per rule), the type checks it, and
# :func:`_error` turns a miss into core.choices' message (the choices and a did-you-mean).
# fed.strategy is a str: fl.strategies resolves its aliases and checks its parameters.
SCHEDULES = ("cosine", "linear", "constant")  # devft_lab.core.train.round_lr
PLANS = tuple(PLAN_CLASSES)
PARTITIONER_NAMES = tuple(PARTITIONERS)  # devft_lab.data.partition
TRANSFERS = tuple(TRANSFER_RULES)  # devft_lab.method.transfer: name -> rule
DTYPES = (AUTO_DTYPE, *TORCH_DTYPES)
QUANTIZATIONS = ("none", "int4", "int8")  # devft_lab.core.models
ATTENTIONS = ("auto", *ATTENTION_KERNELS)
# Ranges, checked by pydantic from the annotations (a miss says the bound and the default).
Count = Annotated[int, Ge(1)]
NonNegative = Annotated[int, Ge(0)]
Positive = Annotated[float, Gt(0)]
Flag = Annotated[bool, pydantic.Strict()]  # true or false, not 1 or "yes"
SEED_MAX = 2**32 - 1  # numpy's seeds: 0 .. 2**32 - 1
# ConfigError, STRATEGY_ALIASES, STRATEGY_PARAMS and canonical_strategy are re-exported from here.


# --------------------------------------------------------------------------- dataclasses
@dataclass
class ModelConfig:
    name: str = "tiny-llama"  # a devft_lab preset, a hub id or a local folder
    dtype: Literal[DTYPES] = "auto"  # auto: fp32 weights, compute dtype probed (devft_lab.core.device) | float32 | bfloat16 | float16
    quantization: Literal[QUANTIZATIONS] = "none"  # none | int4 | int8 (the paper loads INT4)
    revision: str | None = None


@dataclass
class LoraConfig:
    r: Count = 32  # the inner dimension of B @ A
    alpha: Positive = 64.0
    dropout: Annotated[float, Ge(0), Lt(1)] = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class DataConfig:
    source: str = "vicgalle/alpaca-gpt4"  # a datasets id, a local file, or a builtin name
    split: str = "train"
    partitioner: Literal[PARTITIONER_NAMES] = "iid"  # e.g. iid | dirichlet | shards (devft_lab.data.partition)
    partitioner_params: dict[str, Any] = field(default_factory=dict)  # e.g. {alpha: 0.5}
    num_clients: Count = 20
    min_samples: NonNegative = 1  # every client gets at least this many examples
    max_samples: int | None = None  # cap on the examples used in total (None: all)
    template: Literal[TEMPLATES] = "chat"  # chat (the model's template) | alpaca | plain  (devft_lab.data.templates)


@dataclass
class TrainConfig:
    local_steps: Count = 10
    batch_size: Count = 16
    grad_accum: Count = 1
    lr: Positive = 5e-5
    lr_min: Annotated[float, Ge(0)] = 1e-6
    schedule: Literal[SCHEDULES] = "cosine"  # cosine | linear | constant, across rounds
    schedule_scope: Literal[LR_SCOPES] = "run"  # run: one decay across all rounds | stage: restarted at each stage (DevFT)
    schedule_rounds: Count | None = None  # run scope: the decay's length in rounds (null: the run's rounds)
    schedule_start: NonNegative = 0  # run scope: the run's first round sits at this round of the decay
    max_grad_norm: Positive | None = 1.0
    seq_len: Count = 512
    packing: Flag = True  # lay examples end to end (no padding); false: right-padded batches
    compile: Flag = False  # torch.compile the decoder layers while training (speed only; not hashed)
    attention: Literal[ATTENTIONS] = "auto"  # training's attention kernel: auto (probed) | sdpa | eager (speed only; not hashed)
    seed: Annotated[int, Ge(0), Le(SEED_MAX)] = 42


@dataclass
class FedConfig:
    num_rounds: Count = 200  # total over all stages
    clients_per_round: Union[int, float] = 2  # count (int) or fraction (float in (0, 1])
    strategy: str = "fedit"
    strategy_params: dict[str, Any] = field(default_factory=dict)  # e.g. {mu: 0.01}
    min_fit: Count = 1  # Flower: fewest client replies a round aggregates (stragglers are dropped)
    round_timeout: Positive = 120.0  # Flower: seconds a round waits for replies


@dataclass
class DevFTConfig:
    enabled: Flag = True
    plan: Literal[PLANS] = "devft"  # devft (fused groups) | progfed (a growing prefix, the ProgFed baseline)
    stages: Count = 4  # the paper uses 4
    growth: Annotated[float, Gt(1)] = 2.0  # the paper doubles: 2
    capacities: list[int] | None = None  # None: ~ L / growth**(S - s), see method.schedule
    rounds_per_stage: Union[int, list[int], None] = None  # None: split fed.num_rounds evenly
    beta: Annotated[float, Gt(0), Le(1)] = 0.1  # paper: 0.1, 0.15 for 13B; LaCo = 1
    grouping: Literal[GROUPINGS] = "spectral"  # spectral (DGLG) | contiguous | even | random
    affinity: Literal[AFFINITIES] = "clip"  # how negative similarities enter the graph: clip | shift
    fusion: Literal[FUSION_METHODS] = "dblf"  # dblf | r-one | sum | mean | laco
    anchor: Literal[ANCHOR_RULES] = "first"
    transfer: Literal[TRANSFERS] = "copy"  # knowledge transfer: copy (paper) | copy-scaled | anchor-only | increment
    similarity: Literal[SIMILARITIES] = "parameters"  # DGLG's W: parameters (paper) | function (residual updates on a probe set)
    probe_loss: Flag = False  # record sub/full model loss on a probe set at each stage's start and end
    probe_examples: Count = 16  # size of that probe set (also the one similarity=function runs)


@dataclass
class EvalConfig:
    every_n_rounds: NonNegative = 0  # 0: only at the end of each stage and of the run
    stage_ends: Flag = True  # false: skip the evaluations at the ends of the stages before the last
    suites: list[str] = field(default_factory=list)  # lab suite names and/or your own .jsonl files
    max_per_task: Count | None = None  # lab suites: at most this many items per task (None: all)
    max_per_file: Count | None = None  # your own .jsonl suites: at most this many items per task (None: the whole file)
    holdout: NonNegative = 0  # pool examples kept out of training for a held-out loss (0: none)


@dataclass
class RunConfig:
    name: str = "run"
    out_dir: str = "runs"
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fed: FedConfig = field(default_factory=FedConfig)
    devft: DevFTConfig = field(default_factory=DevFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# --------------------------------------------------------------------------- building
def _unknown_key(path: str, key: str, valid: Iterable[str]) -> ConfigError:
    valid = list(valid)
    where = f"{path}.{key}" if path else key
    return ConfigError(
        f"unknown config key {where!r}.{_closest(key, valid)} "
        f"Valid keys{' of ' + path if path else ''}: {', '.join(valid)}."
    )


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) in (Union, type(int | None)):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is not None:
        return f"{typing.get_origin(tp).__name__}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    return getattr(tp, "__name__", str(tp))


def _field_at(cls: type, loc: tuple) -> tuple[list[str], Any, type | None]:
    """The dotted field path a pydantic error ``loc`` points at, its annotation, and the dataclass
    holding it (a union's member tags and what follows them are dropped)."""
    parts: list[str] = []
    tp: Any = cls
    owner = None
    for part in loc:
        if isinstance(part, str) and dataclasses.is_dataclass(tp) and part in {f.name for f in dataclasses.fields(tp)}:
            owner, tp = tp, typing.get_type_hints(tp)[part]
            parts.append(part)
        elif isinstance(part, int) and parts and typing.get_origin(tp) is list:
            tp = typing.get_args(tp)[0]
            parts[-1] += f"[{part}]"
        else:
            break
    return parts, tp, owner


_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _error(cls: type, err: dict[str, Any], path: str) -> ConfigError:
    """A pydantic error as a :class:`ConfigError`: the field, the value given and the fix."""
    parts, tp, owner = _field_at(cls, tuple(err["loc"]))
    where = ".".join(([path] if path else []) + parts)
    value = err["input"]
    if err["type"] == "unexpected_keyword_argument":
        return _unknown_key(where, str(err["loc"][-1]), [f.name for f in dataclasses.fields(tp)])
    try:
        number = float(value) if isinstance(value, (str, float)) else None
    except ValueError:
        number = None
    if number is not None and not math.isfinite(number):
        return _not_finite(where, number)
    if err["type"] == "literal_error":
        return not_one_of(where, value, typing.get_args(tp))
    bound = next((k for k in _BOUNDS if k in (err.get("ctx") or {})), None)
    if bound:
        limit = err["ctx"][bound]
        limit = int(limit) if isinstance(limit, float) and limit.is_integer() else limit  # 0, not 0.0
        default = _default(owner, parts[-1]) if owner else None
        return ConfigError(f"{where} = {value!r} must be {_BOUNDS[bound]} {limit}; set {where} to a value "
                           f"{_BOUNDS[bound]} {limit}" + (f" (default {default})" if default is not None else ""))
    if dataclasses.is_dataclass(tp):
        return ConfigError(f"{where} = {value!r} should be a section (a mapping with keys "
                           f"{', '.join(f.name for f in dataclasses.fields(tp))}); fix it in the YAML file")
    fix = "fix the list entry" if where.endswith("]") else f"fix the value in the YAML file or pass {where}=<value>"
    return ConfigError(f"{where} = {value!r} should be {_type_name(tp)}; {fix}.")


def _default(cls: type, name: str) -> Any:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return None if f.default is dataclasses.MISSING else f.default


_ADAPTERS: dict[type, pydantic.TypeAdapter] = {}


def build_dataclass(cls: type, data: Mapping[str, Any] | None, path: str = ""):
    """Any config dataclass from a dict, validated by pydantic against the field annotations
    (types, ranges, the registries' choices; YAML 1.1's string ``5e-4`` becomes the float the
    field wants), or a :class:`ConfigError` naming the first field that is wrong and the fix."""
    if cls not in _ADAPTERS:
        _ADAPTERS[cls] = pydantic.TypeAdapter(cls)
    try:
        return _ADAPTERS[cls].validate_python(dict(data or {}))
    except pydantic.ValidationError as e:
        raise _error(cls, e.errors()[0], path) from None


def from_dict(data: Mapping[str, Any] | None, validate_: bool = True) -> RunConfig:
    """Build (and by default validate) a :class:`RunConfig` from a nested dict."""
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"a run config must be a mapping of sections, got {type(data).__name__}")
    cfg = build_dataclass(RunConfig, data)
    if validate_:
        validate(cfg)
    return cfg


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Plain nested dict of the resolved config (write it next to the run's outputs)."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def config_hash(cfg: RunConfig) -> str:
    """SHA-256 (16 hex digits) of what determines training; ignores name, out_dir, device, eval,
    the Flower transport settings (fed.min_fit, fed.round_timeout), train.compile and
    train.attention (the same maths by other kernels; recorded in meta.json) and the stage loss probe
    (devft.probe_loss; devft.probe_examples unless devft.similarity=function groups with it)."""
    d = to_dict(cfg)
    for k in ("name", "out_dir", "device", "eval"):
        d.pop(k, None)
    for k in ("min_fit", "round_timeout"):
        d["fed"].pop(k, None)
    d["train"].pop("compile", None)
    d["train"].pop("attention", None)
    dv = d["devft"]
    if dv.get("similarity") != "function":
        dv.pop("probe_examples", None)
    dv.pop("probe_loss", None)
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def saved_config_hash(run_dir: str | Path) -> str:
    """:func:`config_hash` of the config a run folder saved (``config.yaml``), by today's rule.

    A run folder is matched by this, not by the hash its ``meta.json`` recorded: that one is the
    rule of the code that wrote it (``results/FROZEN.md``). A key the file lacks takes its default.
    Raises :class:`ConfigError` if the file is not a run config."""
    return config_hash(load_config(Path(run_dir) / "config.yaml", validate_=False))


# --------------------------------------------------------------------------- overrides
def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(
            f"override {item!r} has no '='; write it as dotted.key=value, e.g. fed.strategy=fedsa-lora"
        )
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key; write it as dotted.key=value")
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({e})") from None
    return key.split("."), value


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of the raw config dict with ``dotted.key=value`` overrides applied.

    Keys are checked against the dataclasses (unknown -> :class:`ConfigError` with the
    valid keys and the closest match). Below a ``dict`` field (``strategy_params``,
    ``partitioner_params``) any key is allowed.
    """
    out = json.loads(json.dumps(dict(data or {}), default=str))  # deep copy of plain data
    if isinstance(overrides, Mapping):
        items = [(str(k).split("."), v) for k, v in overrides.items()]
    else:
        items = [_parse_override(o) for o in overrides]
    for parts, value in items:
        cls: Any = RunConfig
        node = out
        for depth, part in enumerate(parts):
            path = ".".join(parts[:depth])
            last = depth == len(parts) - 1
            if cls is not None:
                names = [f.name for f in dataclasses.fields(cls)]
                if part not in names:
                    raise _unknown_key(path, part, names)
                tp = typing.get_type_hints(cls)[part]
                cls = tp if dataclasses.is_dataclass(tp) else None
                free = typing.get_origin(tp) is dict
            elif not free:
                raise ConfigError(f"override key {'.'.join(parts)!r}: {path!r} is not a section")
            if last:
                node[part] = value
            else:
                if cls is None and not free:
                    raise ConfigError(
                        f"override key {'.'.join(parts)!r}: {'.'.join(parts[: depth + 1])!r} "
                        "is a value, not a section; drop the part after it"
                    )
                child = node.get(part)
                if not isinstance(child, dict):
                    child = {}
                    node[part] = child
                node = child
    return out


# --------------------------------------------------------------------------- loading
# YAML files in devft_lab/runner/configs that configure other jobs, not a federated run
OTHER_JOB_CONFIGS = ("lab_signal",)  # devft_lab.experiments.lab_signal.SignalConfig


def shipped_configs() -> list[str]:
    """Names of the run configs shipped in ``devft_lab/runner/configs``."""
    folder = resources.files("devft_lab.runner") / "configs"
    names = (p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))
    return sorted(n for n in names if n not in OTHER_JOB_CONFIGS)


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping gives one key twice (YAML itself keeps the last silently)."""


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with a repeated key, naming both lines."""


def _construct_unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: construct_mapping says so
            break
        line = key_node.start_mark.line + 1
        if first is not None:
            raise DuplicateKeyError(f"key {key!r} is given twice (line {first} and line {line}); "
                                    "keep one of them (YAML would silently use the last)")
        seen[key] = line
    return loader.construct_mapping(node, deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def yaml_load(text: str) -> Any:
    """``yaml.safe_load`` that refuses repeated keys (:class:`DuplicateKeyError`)."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def _read_yaml(text: str, origin: str) -> dict[str, Any]:
    try:
        data = yaml_load(text)
    except DuplicateKeyError as e:
        raise ConfigError(f"{origin}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{origin} is not valid YAML: {e}") from None
    if data is None or data == {}:
        raise ConfigError(f"{origin} is empty; a run config lists its sections (model:, data:, fed:, ...). "
                          "Start from a shipped one: devft-lab config show tiny > my_run.yaml")
    if not isinstance(data, dict):
        raise ConfigError(f"{origin} must hold a mapping of sections (model:, lora:, ...)")
    return data


def _read_text(path: Path) -> str:
    """A config file's text: UTF-8 (a byte-order mark is allowed), else a :class:`ConfigError`."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                          "save it as UTF-8 and run again") from None
    except OSError as e:
        raise ConfigError(f"{path} cannot be read ({e.strerror}); check the path and its permissions") from None


def load_raw(name_or_path: str | Path) -> dict[str, Any]:
    """The raw dict of a shipped config (by name) or a YAML file (by path)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists() or "/" in str(name_or_path):
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist; pass a YAML path or one of: "
                              f"{', '.join(shipped_configs())}")
        return _read_yaml(_read_text(p), str(p))
    name = str(name_or_path)
    res = resources.files("devft_lab.runner") / "configs" / f"{name}.yaml"
    if not res.is_file():
        shipped = shipped_configs()
        raise ConfigError(
            f"no shipped config named {name!r}.{_closest(name, shipped)} "
            f"Shipped: {', '.join(shipped)}; or pass a path to a .yaml file."
        )
    return _read_yaml(res.read_text(), f"devft_lab/runner/configs/{name}.yaml")


def load_config(
    name_or_path: str | Path,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    validate_: bool = True,
) -> RunConfig:
    """Load a shipped config by name (``"tiny"``) or a YAML file by path, apply overrides, validate.

    Overriding ``fed.num_rounds`` alone sizes the schedule from it: when the file's
    ``devft.rounds_per_stage`` no longer sums to the new total, it is reset to null (the
    stages split ``fed.num_rounds`` evenly, see :func:`stage_rounds`). Override both to
    choose the split yourself.
    """
    raw = apply_overrides(load_raw(name_or_path), overrides)
    keys = ({str(k) for k in overrides} if isinstance(overrides, Mapping)
            else {str(o).split("=", 1)[0].strip() for o in overrides})
    if "fed.num_rounds" in keys and "devft.rounds_per_stage" not in keys:
        cfg = from_dict(raw, validate_=False)
        d = cfg.devft
        if d.enabled and d.rounds_per_stage is not None and _sized(d.rounds_per_stage, d.stages) != cfg.fed.num_rounds:
            raw.setdefault("devft", {})["rounds_per_stage"] = None
    return from_dict(raw, validate_=validate_)


def _sized(rps: int | list[int], stages: int) -> int | None:
    """Total rounds of a ``rounds_per_stage`` value (None when it is malformed)."""
    try:
        return rps * stages if isinstance(rps, int) else sum(int(r) for r in rps)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- validation
def _non_finite(value: Any, where: str) -> Iterable[tuple[str, float]]:
    """``(field, value)`` of every NaN or infinite float in a config (dataclasses, dicts, lists)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            yield where, value
    elif dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            yield from _non_finite(getattr(value, f.name), f"{where}.{f.name}" if where else f.name)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _non_finite(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _non_finite(v, f"{where}[{i}]")


def _not_finite(where: str, value: float) -> ConfigError:
    default: Any = RunConfig()
    for part in where.split("."):
        default = getattr(default, part, None) if dataclasses.is_dataclass(default) else None
    hint = f" (default {default})" if isinstance(default, (int, float)) and not isinstance(default, bool) else ""
    off = "; null turns clipping off" if where == "train.max_grad_norm" else ""
    return ConfigError(f"{where} = {value} is not a finite number; set {where} to a finite value{hint}{off}")


def check_finite(cfg: RunConfig) -> None:
    """Every float of the config is a finite number (``inf``/``nan`` train NaN or nothing at all):
    a :class:`ConfigError` names the first field that is not, and its default."""
    for where, value in _non_finite(cfg, ""):
        raise _not_finite(where, value)


def stage_rounds(cfg: RunConfig) -> list[int]:
    """Rounds of each stage (one entry when DevFT is off)."""
    f, d = cfg.fed, cfg.devft
    if not d.enabled:
        return [f.num_rounds]
    rps = d.rounds_per_stage
    if rps is None:
        base, extra = divmod(f.num_rounds, d.stages)
        return [base + (1 if s >= d.stages - extra else 0) for s in range(d.stages)]
    if isinstance(rps, int):
        return [rps] * d.stages
    return list(rps)


def round_lrs(cfg: RunConfig) -> list[float]:
    """The learning rate of every round of the run, stage by stage (:func:`devft_lab.core.train.scheduled_lr`)."""
    t, rounds = cfg.train, stage_rounds(cfg)
    total = sum(rounds)
    return [scheduled_lr(sum(rounds[:s]) + r, r, n, total, t.lr, t.lr_min, t.schedule, t.schedule_scope,
                         t.schedule_start, t.schedule_rounds)
            for s, n in enumerate(rounds) for r in range(n)]


def clients_per_round_count(fed: FedConfig, num_clients: int) -> int:
    """Number of clients sampled per round (a fraction is rounded half up, at least 1)."""
    c = fed.clients_per_round
    if isinstance(c, float):
        return max(1, min(num_clients, int(math.floor(c * num_clients + 0.5))))
    return int(c)


def validate(cfg: RunConfig) -> RunConfig:
    """Check a config without a model; raises :class:`ConfigError` naming the field and the fix.

    Types, ranges and choices were checked when the config was built (the annotations); this checks
    what ties fields together, and the strategy (``fl.strategies`` owns its names and parameters)."""
    check_finite(cfg)
    for where, text in (("name", cfg.name), ("model.name", cfg.model.name), ("data.source", cfg.data.source)):
        if not text.strip():
            raise ConfigError(f"{where} is empty; set it (see docs/configuration.md), e.g. "
                              + {"name": "name=my_run", "model.name": "model.name=smollm2-135m",
                                 "data.source": "data.source=vicgalle/alpaca-gpt4"}[where])
    if not (cfg.device in ("auto", "cpu", "cuda", "mps") or cfg.device.startswith("cuda:")):
        raise ConfigError(f"device = {cfg.device!r} is not auto, cpu, cuda, cuda:N or mps; set device=auto")
    if not cfg.lora.target_modules:
        raise ConfigError("lora.target_modules is empty; list module names, e.g. [q_proj, v_proj]")
    da, t, f, d = cfg.data, cfg.train, cfg.fed, cfg.devft
    if da.max_samples is not None and da.max_samples < max(1, da.min_samples * da.num_clients):
        raise ConfigError(
            f"data.max_samples = {da.max_samples} is less than data.min_samples * data.num_clients "
            f"= {da.min_samples * da.num_clients}; raise it or set it to null"
        )
    if t.lr_min > t.lr:
        raise ConfigError(f"train.lr_min = {t.lr_min} is larger than train.lr = {t.lr}; lower train.lr_min")
    if t.schedule_scope == "stage" and (t.schedule_start or t.schedule_rounds is not None):
        raise ConfigError("train.schedule_start and train.schedule_rounds place a run inside a longer decay "
                          "(train.schedule_scope=run); with schedule_scope=stage each stage has its own decay: "
                          "set them to 0 and null")
    if t.schedule_start + f.num_rounds > (t.schedule_rounds or f.num_rounds) and t.schedule_start:
        raise ConfigError(f"train.schedule_start = {t.schedule_start} + fed.num_rounds = {f.num_rounds} runs past "
                          f"the decay's {t.schedule_rounds or f.num_rounds} rounds; raise train.schedule_rounds")
    c = f.clients_per_round
    if isinstance(c, float) and not 0 < c <= 1:
        raise ConfigError(f"fed.clients_per_round = {c}: a fraction must be in (0, 1]; or give a count like 2")
    if isinstance(c, int) and not 1 <= c <= da.num_clients:
        raise ConfigError(f"fed.clients_per_round = {c} must be between 1 and data.num_clients = {da.num_clients}")
    # fl.strategies owns the names, their parameters and the parameters' values; its
    # ConfigError names the field (fed.strategy, fed.strategy_params.<p>)
    get_strategy(f.strategy, **f.strategy_params)
    f.strategy = canonical_strategy(f.strategy)
    if d.capacities is not None:
        if len(d.capacities) != d.stages:
            raise ConfigError(
                f"devft.capacities has {len(d.capacities)} entries but devft.stages = {d.stages}; "
                "give one capacity per stage or set devft.capacities to null"
            )
        try:  # method.schedule's rule; the model's depth is checked by validate_against_model
            validate_capacities(d.capacities, d.capacities[-1])
        except ValueError as e:
            raise ConfigError(f"devft.capacities = {d.capacities}: {e}") from None
    if d.similarity == "function" and d.grouping not in ("spectral", "contiguous"):
        raise ConfigError(f"devft.similarity = function feeds the spectral or contiguous grouping, but "
                          f"devft.grouping = {d.grouping!r} uses no similarity; set devft.grouping=spectral "
                          "or devft.similarity=parameters")
    if d.enabled:
        rps = d.rounds_per_stage
        if isinstance(rps, list) and len(rps) != d.stages:
            raise ConfigError(f"devft.rounds_per_stage has {len(rps)} entries but devft.stages = {d.stages}; "
                              "give one entry per stage or set devft.rounds_per_stage to null")
        if rps is not None:
            rounds = stage_rounds(cfg)
            if any(r < 1 for r in rounds):
                raise ConfigError(f"devft.rounds_per_stage = {rps}: every stage needs >= 1 round")
            if sum(rounds) != f.num_rounds:
                raise ConfigError(
                    f"devft.rounds_per_stage = {rps} sums to {sum(rounds)} but fed.num_rounds = "
                    f"{f.num_rounds}; make them agree (or set devft.rounds_per_stage to null)"
                )
        elif f.num_rounds < d.stages:
            raise ConfigError(
                f"fed.num_rounds = {f.num_rounds} is less than devft.stages = {d.stages}; "
                "every stage needs at least one round"
            )
    validate_paths(cfg)
    return cfg


def validate_paths(cfg: RunConfig) -> None:
    """The files a config names, checked before a model loads or a run folder is written:
    ``eval.suites`` (lab names or JSONL files, every item read and checked, ``file:line``
    errors), a ``data.source`` file, and a ``model.name`` that is a path."""
    suites = cfg.eval.suites
    try:
        for spec in expand_suites(suites):
            if is_suite_file(spec):
                read_user_items(spec)
    except DataError as err:
        raise ConfigError(f"eval.suites = {list(suites)}: {err}") from None
    src = cfg.data.source
    if Path(src).suffix.lower() in (".json", ".jsonl") and not Path(src).is_file():
        raise ConfigError(f"data.source = {src!r}: no such file; give an existing .json/.jsonl file "
                          "(Alpaca or chat records), lab, tiny, or a Hugging Face dataset name")
    name = cfg.model.name
    local = Path(name).expanduser()
    if name.startswith((".", "/", "~")) and not local.exists():
        raise ConfigError(f"model.name = {name!r}: no such file or folder; give a .gguf file, a folder "
                          "with config.json (or one .gguf), a preset (devft-lab model list) or a hub id org/name")
    if (local.is_dir() and not (local / "config.json").is_file()
            and not any(f.suffix.lower() == ".gguf" for f in local.iterdir())):
        raise ConfigError(f"model.name = {name!r} is a folder without config.json or a .gguf file, so not a "
                          "model; give the folder save_pretrained wrote (config.json, *.safetensors, tokenizer "
                          "files), a .gguf file, a preset (devft-lab model list) or a hub id org/name")


def default_capacities(num_layers: int, stages: int, growth: float) -> list[int]:
    """The geometric schedule of :func:`devft_lab.method.schedule.stage_capacities` (one rule,
    one place): ``round(L / growth**(S - s))``, made strictly increasing, ending at ``L``."""
    try:
        return stage_capacities(num_layers, stages, growth)
    except ValueError as e:
        raise ConfigError(f"devft.stages = {stages}, devft.growth = {growth}: {e}") from None


def validate_against_model(cfg: RunConfig, num_layers: int) -> list[int]:
    """Check the DevFT schedule against a model with ``num_layers`` decoder layers.

    Returns the capacities the run will use. Raises :class:`ConfigError` if a capacity
    exceeds the model, the last stage is not the full model, or the default geometric
    schedule collapses (two stages of the same size).
    """
    d = cfg.devft
    if num_layers < 1:
        raise ConfigError(f"the model has {num_layers} decoder layers")
    caps = list(d.capacities) if d.capacities is not None else default_capacities(num_layers, d.stages, d.growth)
    try:  # one rule, in method.schedule: 1 <= L_1 < ... < L_S = L
        validate_capacities(caps, num_layers)
    except ValueError as e:
        raise ConfigError(f"devft.capacities = {caps} for a model of {num_layers} layers: {e}") from None
    return caps
