"""Run configs: loading, overrides, validation messages."""
import pytest

from devft_lab.runner.config import (
    ConfigError, RunConfig, config_hash, from_dict, load_config, shipped_configs, stage_rounds,
    to_dict, to_yaml, validate_against_model,
)

SHIPPED_LAYERS = {"tiny": 8, "smollm2_lab": 30, "llama2_7b": 32, "llama31_8b": 32, "llama2_13b": 40}


@pytest.mark.parametrize("name", shipped_configs())
def test_every_shipped_yaml_loads_and_validates(name):
    cfg = load_config(name)
    assert isinstance(cfg, RunConfig)
    assert sum(stage_rounds(cfg)) == cfg.fed.num_rounds
    if name in SHIPPED_LAYERS:
        caps = validate_against_model(cfg, SHIPPED_LAYERS[name])
        assert caps[-1] == SHIPPED_LAYERS[name]
    # resolved config round-trips
    assert from_dict(to_dict(cfg)) == cfg


def test_paper_settings():
    for name, beta, caps in (("llama2_7b", 0.1, [4, 8, 16, 32]), ("llama31_8b", 0.1, [4, 8, 16, 32]),
                             ("llama2_13b", 0.15, [5, 10, 20, 40])):
        c = load_config(name)
        assert (c.devft.stages, c.devft.growth, c.devft.beta) == (4, 2.0, beta)
        assert validate_against_model(c, caps[-1]) == caps
        assert (c.lora.r, c.lora.alpha, c.lora.target_modules) == (32, 64.0, ["q_proj", "v_proj"])
        assert (c.data.num_clients, c.fed.clients_per_round) == (20, 2)
        assert (c.train.local_steps, c.train.batch_size, c.train.seq_len) == (10, 16, 512)
        assert (c.train.lr, c.train.lr_min, c.train.schedule) == (5e-5, 1e-6, "cosine")
        assert c.data.source == "vicgalle/alpaca-gpt4"


def test_overrides_apply():
    c = load_config("tiny", ["fed.strategy=fedsa", "devft.beta=0.15", "train.lr=5e-3",
                             "fed.strategy_params.eval_mode=per_client", "lora.target_modules=[q_proj]",
                             "devft.capacities=[1, 2, 4, 8]", "fed.clients_per_round=0.5"])
    assert c.fed.strategy == "fedsa-lora"
    assert c.devft.beta == 0.15 and c.train.lr == 5e-3
    assert c.fed.strategy_params == {"eval_mode": "per_client"}
    assert c.lora.target_modules == ["q_proj"]
    assert c.fed.clients_per_round == 0.5
    c2 = load_config("tiny", {"fed.strategy": "fedprox", "fed.strategy_params.mu": 0.01})
    assert c2.fed.strategy_params["mu"] == 0.01
    assert config_hash(c2) != config_hash(load_config("tiny"))
    assert config_hash(load_config("tiny", ["out_dir=elsewhere"])) == config_hash(load_config("tiny"))


def test_load_by_path(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text(to_yaml(load_config("tiny", ["name=mine"])))
    assert load_config(p).name == "mine"
    assert load_config(str(p), ["fed.num_rounds=4", "devft.rounds_per_stage=1"]).fed.num_rounds == 4


@pytest.mark.parametrize("override, field", [
    (["fed.strategi=fedit"], "fed.strategi"),
    (["fed.num_rounds=0"], "fed.num_rounds"),
    (["train.lr=-1e-4"], "train.lr"),
    (["fed.strategy=fedsaa"], "fed.strategy"),
    (["devft.capacities=[4, 2, 6, 8]"], "devft.capacities"),
    (["devft.capacities=[1, 2, 8]"], "devft.capacities"),
    (["lora.r=abc"], "lora.r"),
    (["fed.clients_per_round=1.5"], "fed.clients_per_round"),
    (["fed.clients_per_round=99"], "fed.clients_per_round"),
    (["fed.strategy_params.mu=0.1"], "fed.strategy_params.mu"),
    (["devft.rounds_per_stage=3"], "devft.rounds_per_stage"),
    (["devft.grouping=spectal"], "devft.grouping"),
    (["devft.beta=0"], "devft.beta"),
    (["train.lr_min=1"], "train.lr_min"),
])
def test_bad_inputs_name_the_field(override, field):
    with pytest.raises(ConfigError) as e:
        load_config("tiny", override)
    assert field in str(e.value)
    assert isinstance(e.value, ValueError)


def test_unknown_key_lists_valid_keys_and_closest_match():
    with pytest.raises(ConfigError) as e:
        load_config("tiny", ["devft.betta=0.2"])
    msg = str(e.value)
    assert "'beta'" in msg and "grouping" in msg  # closest match and the valid keys
    with pytest.raises(ConfigError, match="no '='"):
        load_config("tiny", ["devft.beta"])
    with pytest.raises(ConfigError, match="tiny"):
        load_config("tinyy")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("nowhere/run.yaml")


def test_capacity_checks_against_model():
    c = load_config("tiny", ["devft.capacities=[2, 4, 8, 16]"])
    with pytest.raises(ConfigError, match=r"\[2, 4, 8, 16\] for a model of 8 layers"):
        validate_against_model(c, 8)
    with pytest.raises(ConfigError, match="full model"):
        validate_against_model(load_config("tiny", ["devft.capacities=[1, 2, 3, 4]"]), 8)
    with pytest.raises(ConfigError, match="devft.stages"):
        validate_against_model(load_config("tiny"), 2)  # 4 stages cannot grow over 2 layers
    assert validate_against_model(load_config("tiny"), 18) == [2, 5, 9, 18]  # method.schedule's rule
    assert validate_against_model(load_config("tiny"), 8) == [1, 2, 4, 8]


def test_stage_rounds_default_split():
    c = load_config("tiny", ["fed.num_rounds=10", "devft.rounds_per_stage=null"])
    assert stage_rounds(c) == [2, 2, 3, 3]
    c = load_config("tiny", ["devft.enabled=false"])
    assert stage_rounds(c) == [c.fed.num_rounds]


def test_name_fields_accept_exactly_their_registries():
    from devft_lab.method.fusion import ANCHOR_RULES, FUSION_METHODS
    from devft_lab.method.grouping import METHODS
    from devft_lab.plans import PLANS

    for field, names in (("devft.fusion", FUSION_METHODS), ("devft.anchor", ANCHOR_RULES),
                         ("devft.grouping", METHODS), ("devft.plan", PLANS)):
        for n in names:
            assert getattr(load_config("tiny", [f"{field}={n}"]).devft, field.split(".")[1]) == n
        with pytest.raises(ConfigError, match=field):
            load_config("tiny", [f"{field}=nonesuch"])
    with pytest.raises(ConfigError, match="fed.strategy_params.eval_mode"):
        load_config("tiny", ["fed.strategy=fedsa", "fed.strategy_params.eval_mode=both"])
    with pytest.raises(ConfigError, match="fed.strategy_params.mu"):
        load_config("tiny", ["fed.strategy=fedprox", "fed.strategy_params.mu=true"])


# --------------------------------------------------------------------------- nothing silently wrong (#35)
def _float_fields():
    """Every ``section.key`` of a run config that holds a float (alone or in a union)."""
    import dataclasses
    import typing

    out = []
    for sec in dataclasses.fields(RunConfig):
        if not dataclasses.is_dataclass(sec.default_factory if sec.default_factory is not dataclasses.MISSING
                                        else None):
            continue
        for name, tp in typing.get_type_hints(sec.default_factory).items():
            if tp is float or float in typing.get_args(tp):
                out.append(f"{sec.name}.{name}")
    return out


def test_every_float_setting_must_be_finite_and_the_error_names_it():
    fields = _float_fields()
    assert {"train.lr", "train.lr_min", "lora.alpha", "lora.dropout", "devft.beta", "train.max_grad_norm",
            "fed.clients_per_round", "devft.growth"} <= set(fields)
    for f in fields:
        for bad in ("inf", "-inf", ".nan", "1e999"):  # YAML strings the float coercion accepts, and .nan
            with pytest.raises(ConfigError, match=rf"^{f} = -?(inf|nan) is not a finite number"):
                load_config("tiny", [f"{f}={bad}"])


@pytest.mark.parametrize("override", [
    ["fed.strategy=fedprox", "fed.strategy_params.mu=.inf"],
    ["data.partitioner=dirichlet", "data.partitioner_params.alpha=.inf"],
    ["data.partitioner=dirichlet", "data.partitioner_params.alpha=[0.5, .nan]"],
])
def test_numbers_inside_parameter_dicts_must_be_finite_too(override):
    key = override[1].split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{key}(\[1\])? = (inf|nan) is not a finite number"):
        load_config("tiny", override)


@pytest.mark.parametrize("seed, bound", [("-1", ">= 0"), ("4294967296", "<= 4294967295")])
def test_seed_out_of_range_names_the_field(seed, bound):
    with pytest.raises(ConfigError, match=rf"^train.seed = {seed} must be {bound}; set train.seed to a value {bound}"):
        load_config("tiny", [f"train.seed={seed}"])
    assert load_config("tiny", ["train.seed=4294967295"]).train.seed == 4294967295


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n"])
def test_an_empty_yaml_is_refused_naming_the_file(tmp_path, text):
    p = tmp_path / "mine.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=r"mine.yaml is empty; .*devft-lab config show tiny"):
        load_config(p)


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path):
    p = tmp_path / "twice.yaml"
    p.write_text("name: mine\ntrain:\n  lr: 0.001\n  seed: 1\n  lr: 0.01\n")
    with pytest.raises(ConfigError, match=r"twice.yaml: key 'lr' is given twice \(line 3 and line 5\)"):
        load_config(p)
    p.write_text("train:\n  lr: 0.001\nfed:\n  num_rounds: 4\ntrain:\n  seed: 1\n")  # a section twice
    with pytest.raises(ConfigError, match=r"key 'train' is given twice \(line 1 and line 5\)"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"override .*key 'mu' is given twice"):
        load_config("tiny", ["fed.strategy=fedprox", "fed.strategy_params={mu: 0.1, mu: 0.2}"])
    p.write_text("name: mine\nmodel:\n  name: tiny-llama\n")  # one key in two mappings: fine
    assert load_config(p).model.name == "tiny-llama"


def test_config_files_are_utf8_with_or_without_a_bom(tmp_path):
    text = to_yaml(load_config("tiny", ["name=é"]))
    p = tmp_path / "bom.yaml"
    p.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert load_config(p).name == "é"
    p.write_bytes(text.encode("utf-16"))
    with pytest.raises(ConfigError, match=r"bom.yaml is not UTF-8 text .*save it as UTF-8"):
        load_config(p)


def test_a_folder_that_is_not_a_model_is_refused_before_loading(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ConfigError, match=r"model.name = .* is a folder without config.json or a .gguf file"):
        load_config("tiny", [f"model.name={tmp_path}"])


def _annotated_fields():
    """``(section.key, annotation with its constraints)`` of every field of the run config's sections."""
    import dataclasses
    import typing

    for sec in dataclasses.fields(RunConfig):
        if callable(sec.default_factory) and dataclasses.is_dataclass(sec.default_factory):
            for name, tp in typing.get_type_hints(sec.default_factory, include_extras=True).items():
                yield f"{sec.name}.{name}", tp


def test_every_choice_field_takes_its_registry_and_names_the_choices_when_missed():
    import typing

    choice_fields = {k: typing.get_args(tp) for k, tp in _annotated_fields() if typing.get_origin(tp) is typing.Literal}
    assert {"devft.transfer", "devft.similarity", "data.partitioner", "train.attention", "model.dtype"} <= set(choice_fields)
    for key, names in choice_fields.items():
        assert names and all(isinstance(n, str) for n in names)
        wrong = names[-1] + "x"
        with pytest.raises(ConfigError) as e:
            load_config("tiny", [f"{key}={wrong}"])
        msg = str(e.value)  # the key, what was given, every choice, the closest one, the fix
        assert msg.startswith(f"{key} = {wrong!r} is not one of ") and all(n in msg for n in names)
        assert f"Did you mean {names[-1]!r}?" in msg and f"Set {key} to one of them" in msg


def test_every_bounded_field_refuses_the_value_past_its_bound_naming_key_bound_and_default():
    import typing

    import annotated_types as at

    checked = 0
    for key, tp in _annotated_fields():
        args = typing.get_args(tp)
        if typing.get_origin(tp) is not typing.Annotated:
            continue
        for c in args[1:]:
            if isinstance(c, (at.Ge, at.Gt)):
                bound, op = (c.ge, ">=") if isinstance(c, at.Ge) else (c.gt, ">")
                bad = bound - 1 if isinstance(c, at.Ge) else bound
            elif isinstance(c, (at.Le, at.Lt)):
                bound, op = (c.le, "<=") if isinstance(c, at.Le) else (c.lt, "<")
                bad = bound + 1 if isinstance(c, at.Le) else bound
            else:
                continue
            with pytest.raises(ConfigError, match=rf"^{key} = {bad!r} must be {op} {bound}; set {key} to a value "
                                                  rf"{op} {bound} \(default "):
                load_config("tiny", [f"{key}={bad}"])
            checked += 1
    assert checked >= 20  # lora.r, train.lr, devft.beta (both ends), fed.num_rounds, ...
