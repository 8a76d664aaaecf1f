"""`devft-lab reproduce`: cells, aggregation, verdicts, and resumable sittings on the smoke scale."""
import json
import math
import os
import shutil
from pathlib import Path

import pytest

from devft_lab.experiments import reproduce as rp
from devft_lab.runner.config import config_hash, to_yaml
from devft_lab.method.schedule import stage_capacities


def _plan(tmp_path, scale="smoke") -> rp.Plan:
    return rp.Plan(rp.SCALES[scale], rp.SCALES[scale].base, results=Path(tmp_path))


# --------------------------------------------------------------------------- cells
def test_cells_of_each_table_are_its_variants_times_seeds():
    for table, keys in rp.TABLES.items():
        cells = rp.cells_of([table], [1, 2])
        assert [c.name for c in cells] == [f"{k}-s{s}" for k in keys for s in (1, 2)]


def test_shared_variants_are_one_cell_with_one_home(tmp_path):
    every = rp.cells_of(list(rp.TABLES), [0, 1, 2])
    assert len(every) == len({c.name for c in every}) == 3 * len(rp.V)
    plan = _plan(tmp_path)
    dirs = {plan.cell_dir(c) for c in every}
    assert len(dirs) == len(every)
    devft = rp.Cell(rp.V["devft"], 0)
    assert plan.cell_dir(devft) == tmp_path / "repro" / "smoke" / "main" / "devft-s0"  # main's, ablation reuses it


def test_only_selects_cells_or_variants_and_unknown_names_list_the_known_ones():
    assert [c.name for c in rp.cells_of(["compat"], [0, 1], ["fedsa-lora-devft"])] == \
        ["fedsa-lora-devft-s0", "fedsa-lora-devft-s1"]
    assert [c.name for c in rp.cells_of(["main"], [0, 1], ["devft-s1"])] == ["devft-s1"]
    with pytest.raises(rp.ReproduceError, match="known cells: .*fedit-s0"):
        rp.cells_of(["main"], [0], ["devft-s9"])
    with pytest.raises(rp.ReproduceError, match="known tables: main, efficiency"):
        rp.check_table("mian")


@pytest.mark.parametrize("scale", ["smoke", "lab", "paper"])
def test_every_cell_config_is_valid_and_variants_differ(tmp_path, scale):
    plan = _plan(tmp_path, scale)
    cells = rp.cells_of(list(rp.TABLES), [7])
    cfgs = {c.variant.key: plan.config(c) for c in cells}
    assert all(c.train.seed == 7 for c in cfgs.values())
    assert len({config_hash(c) for c in cfgs.values()}) == len(cfgs)  # no two variants train the same thing
    assert not cfgs["fedit"].devft.enabled and cfgs["devft"].devft.enabled
    assert cfgs["fedsa-lora-devft"].fed.strategy == "fedsa-lora" and cfgs["fedsa-lora-devft"].devft.enabled
    total = cfgs["devft"].fed.num_rounds
    for key, stages in (("growth-x4", 3), ("growth-x8", 2)):
        g = cfgs[key].devft
        assert g.stages == stages and cfgs[key].fed.num_rounds == total  # same budget, fewer stages


@pytest.mark.parametrize("scale,layers", [("smoke", 8), ("lab", 30), ("paper", 32)])
def test_every_devft_schedule_fits_its_model(tmp_path, scale, layers):
    from devft_lab.runner.config import validate_against_model

    plan = _plan(tmp_path, scale)
    caps = {c.variant.key: validate_against_model(plan.config(c), layers) for c in rp.cells_of(list(rp.TABLES), [0])}
    assert caps["growth-x4"][-1] == caps["growth-x8"][-1] == caps["devft"][-1] == layers
    assert len(caps["devft"]) == 4 and len(caps["growth-x4"]) == 3 and len(caps["growth-x8"]) == 2


def test_growth_schedules_end_at_the_full_model_and_grow_faster():
    assert stage_capacities(30, 4, 2) == [4, 8, 15, 30]
    assert stage_capacities(30, 3, 4) == [2, 8, 30]
    assert stage_capacities(30, 2, 8) == [4, 30]


def test_a_changed_setup_gets_its_own_folder_and_files():
    args = rp.build_parser().parse_args(["main", "--set", "model.name=gemma3-270m"])
    with pytest.raises(rp.ReproduceError, match="--tag"):
        rp.plan_of(args)
    args = rp.build_parser().parse_args(["main", "--set", "model.name=gemma3-270m", "--tag", "gemma"])
    plan = rp.plan_of(args)
    assert plan.root.name == "lab-gemma" and plan.table_path("main", "json").name == "table_main_gemma.json"
    assert rp.plan_of(rp.build_parser().parse_args(["main"])).table_path("main", "md") == Path("results/table_main.md")
    p8 = rp.plan_of(rp.build_parser().parse_args(["main", "--scale", "paper", "--base", "llama31_8b"]))
    assert p8.root.name == "paper-llama31_8b" and p8.table_path("main", "json").name == "table_main_paper_llama31_8b.json"
    assert rp.PAPER_COLUMN_OF_BASE[p8.base] == "LLaMA3.1-8B"


# --------------------------------------------------------------------------- aggregation (hand-made numbers)
def test_mean_std_is_the_sample_std():
    r = rp.mean_std([1.0, 2.0, 3.0, 4.0])
    assert r["mean"] == 2.5 and r["n"] == 4
    assert math.isclose(r["std"], math.sqrt(5 / 3))
    assert rp.mean_std([3.0]) == {"mean": 3.0, "std": None, "n": 1}
    assert rp.mean_std([]) == {"mean": None, "std": None, "n": 0}
    assert rp.mean_std([1.0, float("nan"), 3.0])["mean"] == 2.0
    assert rp.fmt(r) == "2.50 ± 1.29" and rp.fmt(rp.mean_std([3.0])) == "3.00" and rp.fmt(None) == "-"


def test_paired_gap_uses_only_seeds_both_have():
    a = {0: {"final": {"acc": 43.0}}, 1: {"final": {"acc": 46.0}}, 2: {"final": {"acc": 99.0}}}
    b = {0: {"final": {"acc": 40.0}}, 1: {"final": {"acc": 42.0}}}
    g = rp.paired(a, b, "acc")
    assert g["seeds"] == [0, 1] and g["mean"] == 3.5 and math.isclose(g["std"], math.sqrt(0.5))


def test_row_metrics_average_finals_and_totals():
    s = {0: {"final": {"acc": 40.0, "acc_mmlu": 30.0}, "initial": {"acc": 30.0, "eval_s": 9.0}, "train_s": 10.0,
             "aggregate_s": 1.0, "paper_bytes": 100},
         1: {"final": {"acc": 44.0, "acc_mmlu": 34.0}, "initial": {"acc": 30.0}, "train_s": 12.0,
             "aggregate_s": 1.0, "paper_bytes": 300}}
    m = rp.row_metrics(s)
    assert m["acc"]["mean"] == 42.0 and m["acc_mmlu"]["mean"] == 32.0 and m["initial_acc"]["std"] == 0.0
    assert m["train_s"]["mean"] == 12.0 and m["paper_bytes"]["mean"] == 200.0
    assert "initial_eval_s" not in m


def test_reach_is_the_first_eval_at_or_beyond_the_target():
    curve = ([0.0, 5.0, 10.0, 15.0], [0, 10, 20, 30], [0, 100, 200, 300], [30.0, 39.0, 41.0, 40.0])
    assert rp.reach(curve, 40.0, higher=True) == {"time_s": 10.0, "paper_bytes": 20, "full_bytes": 200, "value": 41.0}
    assert rp.reach(curve, 50.0, higher=True) is None
    assert rp.reach(([0.0, 1.0], [0, 1], [0, 1], [3.0, 2.5]), 2.6, higher=False)["time_s"] == 1.0


# --------------------------------------------------------------------------- tables from fake run folders
def _row(r, stage, t, up, acc=None, cap=1):
    row = {"round": r, "stage": stage, "train_s": t, "aggregate_s": 0.0, "uplink_bytes": up, "downlink_bytes": up,
           "submodel_delivery_bytes": 0, "flops_estimate": 1e9 * t, "peak_rss_mb": 100.0, "cuda_peak_mb": 0.0,
           "extra": {"capacity": cap, **({"acc": acc} if acc is not None else {})}}
    return row


def _fake_run(plan, key, seed, rows, initial=30.0, machine="fake", correct=None):
    """A finished run folder of ``key``/``seed`` whose rounds are ``rows`` (cum columns filled in), with
    ``final_items.jsonl`` from ``correct`` (one flag per evaluation item) when given."""
    cell = rp.Cell(rp.V[key], seed)
    d = plan.cell_dir(cell)
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(to_yaml(plan.config(cell)))
    (d / "meta.json").write_text(json.dumps({"config_hash": config_hash(plan.config(cell)), "machine": machine}))
    cum = {"t": 0.0, "pb": 0, "fb": 0}
    for r in rows:
        cum["t"] += r["train_s"]
        cum["pb"] += r["uplink_bytes"]
        cum["fb"] += 2 * r["uplink_bytes"]
        r.update(cum_train_s=cum["t"], cum_aggregate_s=0.0, cum_paper_bytes=cum["pb"], cum_full_bytes=cum["fb"])
    (d / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "initial_eval.json").write_text(json.dumps({"acc": initial}))
    if correct is not None:
        (d / "final_items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _items(correct)))
    final = [r["extra"]["acc"] for r in rows if "acc" in r["extra"]][-1]
    (d / "summary.json").write_text(json.dumps({
        "done": True, "final": {"acc": final}, "initial": {"acc": initial}, "train_s": cum["t"], "aggregate_s": 0.0,
        "paper_bytes": cum["pb"], "full_bytes": cum["fb"], "flops_estimate": 1e9 * cum["t"]}))
    return d


def _fedit(acc_mid, acc_end):
    return [_row(0, 0, 10.0, 80, acc_mid, 8), _row(1, 0, 10.0, 80, acc_end, 8)]


def _devft(acc_mid, acc_end):
    return [_row(0, 0, 1.0, 20, None, 2), _row(1, 0, 1.0, 20, acc_mid, 2), _row(2, 1, 8.0, 80, acc_end, 8)]


def test_main_table_reports_gap_spread_paper_values_and_partial_status(tmp_path):
    plan = _plan(tmp_path)
    for seed, (f, d) in enumerate([(40.0, 43.0), (42.0, 46.0)]):
        _fake_run(plan, "fedit", seed, _fedit(35.0, f))
        _fake_run(plan, "devft", seed, _devft(38.0, d))
    _fake_run(plan, "fedsa-lora", 0, _fedit(35.0, 41.0))
    js, md = rp.write_table(plan, "main", [0, 1], "devft-lab reproduce main --scale smoke --seeds 2")
    t = json.loads(js.read_text())
    assert t["status"] == "partial: 5 of 10 cells" and t["cells_done"] == 5 and t["cells_total"] == 10
    assert t["command"] == "devft-lab reproduce main --scale smoke --seeds 2" and t["machine"]
    rows = {r["key"]: r for r in t["rows"]}
    assert rows["devft"]["metrics"]["acc"]["mean"] == 44.5 and rows["devft"]["seeds"] == [0, 1]
    assert math.isclose(rows["devft"]["metrics"]["acc"]["std"], math.sqrt(4.5))
    assert rows["fedsa-lora"]["cells"] == "1 of 2" and rows["progfed"]["metrics"] == {}
    assert rows["devft"]["paper"]["LLaMA2-7B"] == 42.33 and rows["fedit"]["paper"]["LLaMA3.1-8B"] == 55.35
    assert rows["dofit"]["status"] == rows["progfed"]["status"] == "not run yet" and "c2a" not in rows
    assert rows["dofit"]["paper"]["LLaMA2-13B"] == 49.74 and "status" not in rows["fedsa-lora"]  # 1 of 2 is run
    assert set(rows["devft"]["config_hashes"]) == {"devft-s0", "devft-s1"}
    gap = t["devft_minus_fedit"]
    assert gap["mean"] == 3.5 and math.isclose(gap["std"], math.sqrt(0.5))
    v = {x["b"]: x for x in t["verdicts"]}
    assert list(v) == ["fedit", "dofit", "progfed", "fedsa-lora"] and v["fedit"]["by_seed"] == {**gap, "mean": 3.5}
    assert v["fedit"]["paper"] == {"LLaMA2-7B": 2.06, "LLaMA3.1-8B": 8.9, "LLaMA2-13B": 4.19}  # 42.33 - 40.27, ...
    assert v["progfed"]["paper"]["LLaMA3.1-8B"] == 4.13 and v["progfed"]["by_seed"]["mean"] is None
    assert v["fedit"]["by_item"]["mean"] is None and v["fedit"]["verdict"] == "-"  # the fake runs kept no items
    text = md.read_text()
    assert "partial: 5 of 10 cells" in text and "| DevFT | - | 44.50 ± 2.12 |" in text and "42.33" in text
    assert "| DoFIT | - | not run yet |" in text and "| 0 of 2 | 40.89 |" in text
    assert "| DevFT − FedIT | +3.50 ± 0.71 | - | - | +2.06 (LLaMA2-7B), +8.90 (LLaMA3.1-8B)" in text
    assert "reading" not in t and text.rstrip().endswith("`")  # no prose generated: the config hashes end it


def test_the_verdict_reads_the_item_interval_against_zero_and_the_papers_sign():
    assert [rp.verdict(ci) for ci in ([0.5, 3.5], [-3, 1], [-8, -2], None)] == ["above", "within", "below", "-"]
    assert rp.paper_direction("below", {"LLaMA2-7B": 2.06, "LLaMA2-13B": 4.19}) == "opposite"
    assert rp.paper_direction("above", {"x": 3.0}) == "same" and rp.paper_direction("below", {"x": -1.0}) == "same"
    assert rp.paper_direction("within", {"x": 3.0}) == rp.paper_direction("above", {"x": None}) == "-"
    assert rp.paper_direction("above", {"x": 1.0, "y": -1.0}) == "-"  # the paper's own sign is not one


def test_verdicts_follow_the_numbers_when_devft_loses(tmp_path):
    plan = _plan(tmp_path)
    for seed, (f, d) in enumerate([(45.0, 40.0), (47.0, 46.0)]):  # DevFT right on 20 of 100 items, FedIT on 80
        _fake_run(plan, "fedit", seed, _fedit(35.0, f), correct=[i < 80 for i in range(100)])
        _fake_run(plan, "devft", seed, _devft(38.0, d), correct=[i < 20 for i in range(100)])
    t = rp.build_table(plan, "main", [0, 1], "cmd")
    assert t["devft_minus_fedit"]["mean"] == -3.0
    v = t["verdicts"][0]
    assert (v["a"], v["b"]) == ("devft", "fedit") and v["by_seed"]["mean"] == -3.0
    assert v["by_item"]["mean"] == pytest.approx(-60.0) and v["by_item"]["ci95"][1] < 0
    assert v["verdict"] == "below" and v["paper_direction"] == "opposite"
    assert "| DevFT − FedIT | -3.00 ± 2.83 | -60.0 [" in rp.to_markdown(t)


def test_compat_states_the_gap_the_cost_ratios_and_the_machines(tmp_path):
    plan = _plan(tmp_path)
    _fake_run(plan, "fedsa-lora", 0, _fedit(35.0, 28.0), initial=30.0, machine="2 threads")
    _fake_run(plan, "fedsa-lora-devft", 0, _devft(30.0, 30.0), initial=30.0, machine="1 thread")
    t = rp.build_table(plan, "compat", [0], "cmd")
    rows = {r["key"]: r for r in t["rows"]}
    assert rows["fedsa-lora-devft"]["metrics"]["acc"]["mean"] == rows["fedsa-lora-devft"]["metrics"]["initial_acc"]["mean"]
    v = t["verdicts"][0]
    assert (v["a"], v["b"], v["by_seed"]["mean"]) == ("fedsa-lora-devft", "fedsa-lora", 2.0)
    assert v["paper"] == {"LLaMA2-7B gain %": 3.51}
    assert t["time_x_less"]["mean"] == 2.0 and t["flops_x_less"]["mean"] == 2.0  # 20 s / 10 s, FLOPs follow time
    assert t["paper_bytes_x_less"]["mean"] == 160 / 120 and t["run_machines"] == ["1 thread", "2 threads"]
    md = rp.to_markdown(t)
    assert "| client FLOPs | 2.00 |" in md and "| LoRA uplink | 1.33 | 2.14 |" in md
    assert "Runs trained on: 1 thread; 2 threads" in md


def test_efficiency_time_and_bytes_to_fedits_final_score(tmp_path):
    plan = _plan(tmp_path)
    _efficiency_case(plan)


def test_efficiency_survives_cells_from_different_machines(tmp_path):
    plan = _plan(tmp_path)
    _efficiency_case(plan, machines=("a", "b"))
    t = rp.build_table(plan, "efficiency", [0], "cmd")
    assert t["to_target"]["devft"]["reached"] == "1 of 1" and t["run_machines"] == ["a", "b", "fake"]


def test_a_seed_where_fedit_does_not_beat_the_base_model_has_no_target(tmp_path):
    plan = _plan(tmp_path)
    _fake_run(plan, "fedit", 0, _fedit(35.0, 40.0), initial=30.0)
    _fake_run(plan, "fedit", 1, _fedit(35.0, 29.0), initial=30.0)  # FedIT ends below the untrained model
    _fake_run(plan, "devft", 0, _devft(38.0, 41.0), initial=30.0)
    _fake_run(plan, "devft", 1, _devft(38.0, 41.0), initial=30.0)
    t = rp.build_table(plan, "efficiency", [0, 1], "cmd")
    assert t["target"]["per_seed"] == {"0": 40.0} or t["target"]["per_seed"] == {0: 40.0}
    assert t["target"]["no_target_seeds"] == [1]
    assert t["to_target"]["devft"]["reached"] == "1 of 1" and t["to_target"]["devft"]["time_s"]["mean"] == 10.0
    assert "Seeds without a target (FedIT ended at or beyond the untrained model's acc): 1." in rp.to_markdown(t)


def _efficiency_case(plan, machines=("fake", "fake")):
    _fake_run(plan, "fedit", 0, _fedit(35.0, 40.0), machine=machines[0])  # reaches 40 at t = 20 s, 160 bytes
    _fake_run(plan, "devft", 0, _devft(38.0, 41.0), machine=machines[1])  # reaches 40 at t = 10 s, 120 bytes
    _fake_run(plan, "progfed", 0, _devft(38.0, 39.0))  # never reaches 40
    t = rp.build_table(plan, "efficiency", [0], "cmd")
    assert t["target"]["mean"] == 40.0
    tt = t["to_target"]
    assert tt["fedit"]["time_s"]["mean"] == 20.0 and tt["devft"]["time_s"]["mean"] == 10.0
    assert tt["devft"]["time_s_x_less_than_fedit"]["mean"] == 2.0
    assert math.isclose(tt["devft"]["paper_bytes_x_less_than_fedit"]["mean"], 160 / 120)
    assert tt["progfed"]["reached"] == "0 of 1" and tt["progfed"]["time_s"]["mean"] is None
    assert t["devft_vs"]["fedit"]["time_s"]["mean"] == 2.0 and t["devft_vs"]["progfed"]["time_s"]["n"] == 0
    r = t["rounds"]
    assert r["devft_first_stage"]["capacity"] == 2 and r["devft_first_stage"]["time_s"]["mean"] == 1.0
    assert r["devft_first_stage"]["time_s_x_less_than_full"]["mean"] == 10.0
    assert r["devft_first_stage"]["paper_bytes_x_less_than_full"]["mean"] == 4.0
    assert r["devft_last_stage"]["time_s_x_less_than_full"]["mean"] == 1.25
    md = rp.to_markdown(t)
    assert "| DevFT | 1 of 1 | 10.0 |" in md and "| 2.00 | 1.33 |" in md  # time and uplink x less than FedIT
    assert "| ProgFed | 0 of 1 | - |" in md and "| C2A | not run yet |" in md
    assert "| FedIT | 2.00 | 1.33 | 1 |" in md and "| ProgFed | - | - | 0 |" in md  # DevFT vs each, both reached
    v = {x["b"]: x for x in t["verdicts"]}  # DevFT against each method: accuracy, no paper value
    assert set(v) == {"fedit", "progfed", "fedsa-lora", "c2a"}
    assert v["fedit"]["by_seed"]["mean"] == 1.0 and v["progfed"]["by_seed"]["mean"] == 2.0  # 41 - 40, 41 - 39
    assert v["c2a"]["by_seed"]["n"] == 0 and v["fedit"]["paper_direction"] == "-"
    w = t["whole_run_vs_devft"]  # each method's totals over DevFT's
    assert w["fedit"]["flops"]["n"] == 1 and w["c2a"]["flops"]["n"] == 0 and "devft" not in w


def test_efficiency_compares_devft_with_c2a_once_c2a_has_run(tmp_path):
    plan = _plan(tmp_path)
    _fake_run(plan, "fedit", 0, _fedit(35.0, 40.0))  # reaches 40 at t = 20 s
    _fake_run(plan, "devft", 0, _devft(38.0, 41.0))  # at t = 10 s
    _fake_run(plan, "c2a", 0, _fedit(35.0, 40.0))  # as FedIT: at t = 20 s
    t = rp.build_table(plan, "efficiency", [0], "cmd")
    assert t["devft_vs"]["c2a"]["time_s"]["mean"] == 2.0
    assert "| C2A | 2.00 | 1.33 | 1 |" in rp.to_markdown(t)
    assert plan.cell_dir(rp.Cell(rp.V["c2a"], 0)).parent.name == "efficiency"


def test_ablation_drop_is_devft_minus_variant(tmp_path):
    plan = _plan(tmp_path)
    _fake_run(plan, "devft", 0, _devft(38.0, 50.0))
    _fake_run(plan, "fusion-r-one", 0, _devft(38.0, 45.0))
    _fake_run(plan, "fusion-sum", 0, _devft(38.0, 52.0))
    t = rp.build_table(plan, "ablation", [0], "cmd")
    rows = {r["key"]: r for r in t["rows"]}
    assert rows["fusion-r-one"]["vs_devft"]["mean"] == 5.0 and rows["fusion-sum"]["vs_devft"]["mean"] == -2.0
    assert rows["fusion-r-one"]["paper"]["drop_pct_llama31_8b"] == 10.96
    v = {x["b"]: x for x in t["verdicts"]}
    assert list(v) == list(rp.TABLES["ablation"][1:]) and {x["a"] for x in v.values()} == {"devft"}
    assert v["fusion-r-one"]["by_seed"]["mean"] == 5.0 and v["fusion-sum"]["by_seed"]["mean"] == -2.0
    assert v["fusion-r-one"]["paper"] == {"LLaMA3.1-8B drop %": 10.96}
    assert v["grouping-contiguous"]["paper"] == {"LLaMA3.1-8B drop %": None}  # not in the paper
    assert t["status"] == "partial: 3 of 6 cells"


# --------------------------------------------------------------------------- real smoke runs: sittings, skip, resume
def _main(tmp_path, *extra):
    return rp.main(["compat", "--scale", "smoke", "--seeds", "1", "--results", str(tmp_path), "--quiet", *extra])


def _finals(tmp_path):
    t = json.loads((tmp_path / "table_compat_smoke.json").read_text())
    return t, {r["key"]: r["run_dirs"] for r in t["rows"]}


def test_sittings_skip_finished_cells_and_resume_killed_ones(tmp_path, monkeypatch):
    import devft_lab.runner.run as runmod

    # sitting 1: one cell, trained in a subprocess (the default); the table says partial
    assert _main(tmp_path, "--max-cells", "1") == 0
    t, _ = _finals(tmp_path)
    assert t["status"] == "partial: 1 of 2 cells" and "partial: 1 of 2 cells" in \
        (tmp_path / "table_compat_smoke.md").read_text()
    assert {"rows", "paper", "command", "machine"} <= set(t) and t["paper"]["llama2_7b"]["comm_x_less"] == 2.14
    assert t["command"].startswith("devft-lab reproduce compat --scale smoke")

    # sitting 2: the rest, in process
    calls = {"start": 0, "resume": 0}
    real_start, real_resume = runmod.start, runmod.resume

    def count(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(runmod, "start", count("start", real_start))
    monkeypatch.setattr(runmod, "resume", count("resume", real_resume))
    assert _main(tmp_path, "--in-process") == 0
    t, dirs = _finals(tmp_path)
    assert t["status"] == "complete" and calls == {"start": 1, "resume": 0}
    first = {k: json.loads((Path(d["0"]) / "summary.json").read_text())["final"] for k, d in dirs.items()}

    # sitting 3: nothing to do; no run is touched
    mtimes = {k: os.path.getmtime(Path(d["0"]) / "rounds.jsonl") for k, d in dirs.items()}
    assert _main(tmp_path, "--in-process") == 0
    assert calls == {"start": 1, "resume": 0}
    assert mtimes == {k: os.path.getmtime(Path(d["0"]) / "rounds.jsonl") for k, d in dirs.items()}

    # a cell killed after its last checkpoint (no summary) and one killed before any checkpoint
    fedsa, both = Path(dirs["fedsa-lora"]["0"]), Path(dirs["fedsa-lora-devft"]["0"])
    (fedsa / "summary.json").unlink()
    (both / "summary.json").unlink()
    for f in (both / "checkpoints").iterdir():
        f.unlink() if f.is_file() else shutil.rmtree(f)
    plan = _plan(tmp_path)
    assert {rp.cell_status(plan, c) for c in rp.cells_of(["compat"], [0])} == {"partial"}
    assert _main(tmp_path, "--in-process", "--dry-run") == 0 and calls["resume"] == 0  # dry run trains nothing
    assert _main(tmp_path, "--in-process") == 0
    assert calls == {"start": 1, "resume": 2}
    t, dirs = _finals(tmp_path)
    assert t["status"] == "complete"
    again = {k: json.loads((Path(d["0"]) / "summary.json").read_text())["final"] for k, d in dirs.items()}
    assert again == first  # resumed (and rerun from scratch) with the same seed: the same numbers


def test_a_cell_of_another_config_is_stale_not_skipped(tmp_path):
    plan = _plan(tmp_path)
    cell = rp.Cell(rp.V["fedsa-lora"], 0)
    d = plan.cell_dir(cell)
    d.mkdir(parents=True)
    (d / "config.yaml").write_text("fake: true\n")
    (d / "meta.json").write_text(json.dumps({"config_hash": "0" * 16}))
    (d / "summary.json").write_text(json.dumps({"done": True, "final": {}}))
    assert rp.cell_status(plan, cell) == "stale"
    with pytest.raises(rp.ReproduceError, match="--rerun-stale"):
        rp.run_cell(plan, cell, isolate=False)
    assert rp.build_table(plan, "compat", [0], "cmd")["cells_done"] == 0


def test_a_cell_is_matched_by_its_saved_config_not_by_the_hash_its_meta_recorded(tmp_path):
    """Runs recorded by older code (results/FROZEN.md) hashed by another rule, and their config.yaml lacks
    keys added since: the saved config, read with today's defaults, decides."""
    import yaml

    plan = _plan(tmp_path)
    cell = rp.Cell(rp.V["devft"], 0)
    d = _fake_run(plan, "devft", 0, _fedit(35.0, 40.0))
    (d / "meta.json").write_text(json.dumps({"config_hash": "0" * 16}))  # another rule's hash
    saved = yaml.safe_load((d / "config.yaml").read_text())
    del saved["devft"]["transfer"], saved["train"]["schedule_scope"]  # keys an older run did not write
    (d / "config.yaml").write_text(yaml.safe_dump(saved))
    assert rp.cell_status(plan, cell) == "done"
    saved["devft"]["transfer"] = "increment"  # a saved config that trains something else
    (d / "config.yaml").write_text(yaml.safe_dump(saved))
    assert rp.cell_status(plan, cell) == "stale"


def test_adopt_takes_a_finished_matching_run_only(tmp_path):
    plan = _plan(tmp_path / "res")
    src = _fake_run(_plan(tmp_path / "elsewhere"), "fedit", 0, _fedit(35.0, 40.0))
    from devft_lab.runner.config import to_yaml

    (src / "config.yaml").write_text(to_yaml(plan.config(rp.Cell(rp.V["fedit"], 0))))
    notes = rp.adopt(plan, rp.cells_of(["main"], [0]), [src, tmp_path])
    assert notes[0].endswith("adopted as fedit-s0") and "not adopted" in notes[1]
    assert rp.cell_status(plan, rp.Cell(rp.V["fedit"], 0)) == "done"
    assert "already exists" in rp.adopt(plan, rp.cells_of(["main"], [0]), [src])[0]


def test_the_subcommand_parser_plugs_into_a_cli(tmp_path, capsys):
    import argparse

    p = argparse.ArgumentParser(prog="devft-lab")
    rp.add_reproduce_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["reproduce", "growth", "--scale", "smoke", "--seeds", "2", "--dry-run",
                         "--results", str(tmp_path)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "growth-x8-s1" in out and "missing" in out and "6 cells, 6 to train" in out
    assert not (tmp_path / "table_growth_smoke.json").exists()  # a dry run writes nothing
    assert rp.main(["growth", "--scale", "smoke", "--only", "nope", "--results", str(tmp_path)]) == 2
    assert "known cells: devft-s0" in capsys.readouterr().err


def test_the_table_links_the_written_reading_and_never_writes_it(tmp_path):
    plan = _plan(tmp_path)
    _fake_run(plan, "fedsa-lora", 0, _fedit(35.0, 28.0))
    _fake_run(plan, "fedsa-lora-devft", 0, _devft(30.0, 31.0))
    js, md = rp.write_table(plan, "compat", [0], "cmd")
    w = rp.written_reading_path(plan, "compat")
    assert "No written reading yet." in md.read_text() and not w.exists()
    w.parent.mkdir(parents=True)
    w.write_text("Why: one seed, 104 items.\n")
    for _ in range(2):
        js, md = rp.write_table(plan, "compat", [0], "cmd")
    assert w.read_text() == "Why: one seed, 104 items.\n"  # the reading is left as written
    assert "Why" not in md.read_text() and "](readings/table_compat_smoke.md)" in md.read_text()
    assert json.loads(js.read_text())["written_reading"]["link"] == "readings/table_compat_smoke.md"


@pytest.mark.parametrize("argv, expected", [
    (["main", "--scale", "lab", "--seeds", "3"], "devft-lab reproduce main --scale lab --seeds 3"),
    (["main", "--scale", "lab", "--max-cells", "2", "--seeds", "1"], "devft-lab reproduce main --scale lab --seeds 1"),
    (["main", "--only", "fedit", "devft-s42", "--max-cells=0", "--quiet", "--scale", "lab"],
     "devft-lab reproduce main --scale lab"),
    (["all", "--adopt", "runs/a", "runs/b", "--tag", "g", "--set", "model.name=x"],
     "devft-lab reproduce all --tag g --set model.name=x"),
])
def test_the_recorded_command_is_the_one_that_trains_every_cell(argv, expected):
    assert rp.table_command(argv) == expected


def _items(correct, task="t"):
    return [{"suite": "indist", "id": f"{task}{i}", "task": task, "correct": bool(c), "correct_norm": bool(c)}
            for i, c in enumerate(correct)]


def test_paired_items_gap_is_the_accuracy_difference_and_pools_seeds():
    """Per seed the gap is the difference of the two accuracies on the same items; the pooled
    gap is their mean; its interval holds it, narrows with more seeds, flips sign with the order,
    and collapses to zero for identical rows."""
    import random

    from devft_lab.stats import summarise
    from devft_lab.experiments.reproduce.stats import paired_items

    rng = random.Random(0)
    a = {s: _items([rng.random() < 0.6 for _ in range(200)]) for s in (1, 2, 3)}
    b = {s: _items([rng.random() < 0.5 for _ in range(200)]) for s in (1, 2, 3)}
    g = paired_items(a, b)
    for s in (1, 2, 3):
        assert g["per_seed"][s]["gap"] == pytest.approx(summarise(a[s])["avg"] - summarise(b[s])["avg"])
        lo, hi = g["per_seed"][s]["ci95"]
        assert lo <= g["per_seed"][s]["gap"] <= hi
    assert g["mean"] == pytest.approx(sum(g["per_seed"][s]["gap"] for s in (1, 2, 3)) / 3)
    assert g["ci95"][0] <= g["mean"] <= g["ci95"][1]
    one = paired_items({1: a[1]}, {1: b[1]})
    assert g["half_width"] < one["half_width"]  # three seeds' items pin the gap down better than one
    rev = paired_items(b, a)
    assert rev["mean"] == pytest.approx(-g["mean"])
    same = paired_items(a, a)
    assert same["mean"] == 0 and same["ci95"] == [0.0, 0.0]
    assert paired_items(a, {})["mean"] is None  # no shared seed: nothing to pair


def test_dtype_mix_names_each_rows_dtypes_only_when_cells_differ():
    from devft_lab.experiments.reproduce.tables import compute_dtype, dtype_mix

    assert compute_dtype({"compute_dtype": {"dtype": "bfloat16", "requested": "auto"}}) == "bfloat16"
    assert compute_dtype({}) == "?"
    same = [{"method": "FedIT", "compute_dtypes": {"42": "float32", "43": "float32"}},
            {"method": "DevFT", "compute_dtypes": {"42": "float32"}}]
    assert dtype_mix(same) == ""
    mixed = [{"method": "FedIT", "compute_dtypes": {"42": "bfloat16", "43": "float32", "44": "float32"}},
             {"method": "DevFT", "compute_dtypes": {"42": "float32"}}]
    assert dtype_mix(mixed) == "FedIT bfloat16 (42), float32 (43, 44); DevFT float32 (42)"
