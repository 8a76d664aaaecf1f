"""`devft-lab sweep`: its cells, the FLOP-matched FedIT, a real 2-cell sitting on the smoke scale."""
import json
from pathlib import Path

import pytest

from devft_lab.experiments import sweep as sw
from devft_lab.experiments.compute_matched import matched_rounds, model_shape, stage_flops_per_token
from devft_lab.experiments.reproduce.cells import V, cell_status


def _plan(tmp_path):
    return sw.sweep_plan("smoke", tmp_path)


def test_levels_per_factor_start_at_the_center_and_reuse_the_ablation_cells():
    rows = sw.levels()
    by = {f: [r.level for r in rows if r.factor == f] for f in sw.FACTORS}
    assert by == {"capacity": ["L/8", "L/4", "L/2"], "transfer": ["copy", "copy-scaled", "anchor-only", "increment"],
                  "beta": ["0.1", "0.05", "0.025"], "grouping": ["spectral", "contiguous", "even", "function"],
                  "schedule": ["run", "stage", "stage-even"]}
    centers = {r.variant for r in rows if r.level in ("L/8", "copy", "0.1", "spectral", "run")}
    assert centers == {sw.CENTER}
    assert {r.variant for r in rows if r.level in ("contiguous", "even")} == {V["grouping-contiguous"], V["grouping-even"]}
    for r in rows:
        ov = r.variant.overrides
        assert "eval.stage_ends=false" in ov
        assert ("devft.probe_loss=true" in ov) == (r.variant.home == "sweep")  # shared cells keep their config


def test_dry_run_lists_every_cell_once_with_one_matched_fedit_per_schedule(tmp_path, capsys):
    assert sw.main(["--scale", "smoke", "--seeds", "2", "--dry-run", "--results", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [l.split()[0] for l in lines if l.split()[1:2] == ["missing"]]
    devft = ["sweep-devft", "sweep-first-l4", "sweep-first-l2", "sweep-transfer-copy-scaled",
             "sweep-transfer-anchor-only", "sweep-transfer-increment", "sweep-beta-0.05", "sweep-beta-0.025",
             "grouping-contiguous", "grouping-even", "sweep-grouping-function", "sweep-schedule-stage",
             "sweep-schedule-stage-even"]
    fedit = ["sweep-fedit-l8", "sweep-fedit-l4", "sweep-fedit-l2"]
    controls = ["sweep-final-only-run", "sweep-final-only-stage"]  # the schedule factor's "final stage only"
    assert names == [f"{k}-s{s}" for k in devft + fedit + controls for s in (0, 1)]
    assert lines[-1].startswith("36 cells, 36 to train")
    assert not any(tmp_path.iterdir())  # a dry run writes nothing
    # a subset of factors: capacity alone needs its three schedules' FedITs, beta only the default's
    cells, fedits = sw.sweep_cells(_plan(tmp_path), sw.levels(["beta"]), [0])
    assert list(fedits) == ["L/8"] and [c.name for c in cells][-1] == "sweep-fedit-l8-s0"


@pytest.mark.parametrize("schedule", ["L/8", "L/4", "L/2"])
def test_matched_fedit_rounds_are_the_schedules_flops_over_a_full_round(tmp_path, schedule):
    plan = _plan(tmp_path)
    caps, rounds = sw.schedule_of(plan, schedule)
    assert caps[-1] == 8 and len(caps) == {"L/8": 4, "L/4": 3, "L/2": 2}[schedule]
    assert caps[0] == {"L/8": 1, "L/4": 2, "L/2": 4}[schedule] and sum(rounds) == 4
    cfg = plan.config(sw.Cell(sw.fedit_variant(plan, schedule), 0))
    counts = model_shape("tiny-llama", cfg.lora.r, cfg.lora.target_modules)
    total = sum(r * stage_flops_per_token(counts, k) for k, r in zip(caps, rounds))
    n = cfg.fed.num_rounds
    assert not cfg.devft.enabled and n == matched_rounds(counts, caps, rounds)
    full = stage_flops_per_token(counts, 8)
    assert abs(n * full - total) <= full / 2  # the nearest whole number of full rounds
    assert n <= sum(rounds)  # a growing schedule costs less than its rounds at full size


def test_stage_flops_are_what_the_ledger_charges_a_built_submodel():
    """F(k) per token is the simulation's training_flops over the real stage model's parameters."""
    from devft_lab.core.models import load_model
    from devft_lab.fl.accounting import num_params, training_flops
    from devft_lab.method.grouping import even_groups
    from devft_lab.method.submodel import build_submodel, default_lora_config

    model, _ = load_model("tiny-llama", device="cpu")
    lcfg = default_lora_config(r=4, alpha=8, dropout=0.0)
    counts = model_shape("tiny-llama", 4, ["q_proj", "v_proj"])
    for k in (1, 2, 4, 8):
        sub = build_submodel(model, even_groups(8, k), lora_config=lcfg)
        lora_n = sum(p.numel() for n, p in sub.model.named_parameters() if "lora_" in n)
        ledger = training_flops(num_params(sub.model) - lora_n, 1000, lora_n, lora_only=True)
        assert stage_flops_per_token(counts, k) * 1000 == pytest.approx(ledger)


def test_bad_factors_and_scales_say_what_is_known(tmp_path, capsys):
    assert sw.main(["--scale", "smoke", "--factors", "capacity", "depth", "--dry-run", "--results", str(tmp_path)]) == 2
    assert "choose from capacity, transfer, beta, grouping" in capsys.readouterr().err
    assert sw.main(["--scale", "smoke", "--only", "nope", "--dry-run", "--results", str(tmp_path)]) == 2
    assert "unknown cell(s) nope" in capsys.readouterr().err


def test_a_two_cell_sweep_writes_the_report_and_a_second_sitting_skips_done_cells(tmp_path, monkeypatch):
    import devft_lab.runner.run as runmod

    argv = ["--scale", "smoke", "--seeds", "1", "--factors", "transfer", "--results", str(tmp_path), "--quiet",
            "--in-process", "--only", "sweep-devft", "sweep-fedit-l8"]
    assert sw.main(argv) == 0
    d = json.loads((tmp_path / "sweep_smoke.json").read_text())
    assert (tmp_path / "sweep_smoke.md").read_text().startswith("# Where does DevFT help?")
    assert (tmp_path / "sweep_smoke.png").stat().st_size > 1000
    assert d["status"] == "partial: 2 of 5 cells" and d["metric"] == "acc"
    center = d["rows"][0]
    assert center["key"] == "sweep-devft" and center["fedit"] == "sweep-fedit-l8"
    gap = center["gap_vs_fedit"]
    assert gap["mean"] is not None and gap["ci95"][0] <= gap["mean"] <= gap["ci95"][1]
    assert center["verdict"] == sw.verdict(gap["ci95"]) and d["best"] == []  # one level trained: no best yet
    assert center["gain_over_untrained"]["mean"] is not None
    probes = center["probe"]
    assert len(probes) == 8 and probes[-1]["capacity"] == 8 and abs(probes[-1]["gap"]["mean"]) < 1e-6
    assert d["rows"][1]["metric"] is None and d["rows"][1]["gap_vs_fedit"]["mean"] is None  # not trained yet
    fed = Path(d["fedit"][0]["key"])
    assert str(fed) == "sweep-fedit-l8" and d["fedit"][0]["seeds"] == [0]

    calls = []
    monkeypatch.setattr(runmod, "start", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(runmod, "resume", lambda *a, **k: calls.append(a))
    (tmp_path / "readings").mkdir()
    (tmp_path / "readings" / "sweep_smoke.md").write_text("A person's reading of the map.\n")
    assert sw.main(argv) == 0 and calls == []  # both cells are done: nothing is trained again
    md = (tmp_path / "sweep_smoke.md").read_text()  # the regenerated report links the written reading
    assert "](readings/sweep_smoke.md)" in md and "A person's reading" not in md
    assert (tmp_path / "readings" / "sweep_smoke.md").read_text() == "A person's reading of the map.\n"
    assert json.loads((tmp_path / "sweep_smoke.json").read_text())["written_reading"]["link"] == "readings/sweep_smoke.md"
    plan = _plan(tmp_path)
    cells, _ = sw.sweep_cells(plan, sw.levels(["transfer"]), [0], ["sweep-devft", "sweep-fedit-l8"])
    assert {cell_status(plan, c) for c in cells} == {"done"}


def test_the_subcommand_is_registered_in_the_cli(tmp_path, capsys):
    from devft_lab.cli import main

    assert main(["sweep", "--scale", "smoke", "--seeds", "1", "--factors", "beta", "--dry-run",
                 "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "sweep-beta-0.025-s0" in out and "4 cells, 4 to train" in out


def test_verdicts_best_levels_and_the_probe_correlation_follow_the_numbers():
    from devft_lab.experiments.sweep import best_levels, probe_correlation, verdict

    assert [verdict(ci) for ci in ([0.5, 3.5], [-3, 1], [-8, -2], None)] == ["above", "within", "below", "-"]

    def row(f, lvl, gap, ci, probe):
        return {"factor": f, "level": lvl, "key": f"{f}-{lvl}", "seeds": [42], "gap_vs_fedit": {"mean": gap, "ci95": ci},
                "probe": [{"at": "start", "gap": {"mean": probe}}]}

    rows = [row("beta", "0.1", -9, [-12, -6], 30.0), row("beta", "0.05", -1, [-4, 2], 5.0),
            row("transfer", "copy-scaled", 3, [1, 5], 1.0)]
    assert probe_correlation(rows) == {"rho": None, "n": 3, "points": probe_correlation(rows)["points"]}
    more = rows + [row("grouping", "even", 4, [2, 6], 0.5), row("grouping", "function", 5, [3, 7], 0.1)]
    c = probe_correlation(more)
    assert c["n"] == 5 and c["rho"] == pytest.approx(-1.0)
    assert best_levels(more) == [{"factor": "beta", "level": "0.05", "gap": -1, "seeds": None, "others": {"0.1": -9}},
                                 {"factor": "grouping", "level": "function", "gap": 5, "seeds": None,
                                  "others": {"even": 4}}]  # transfer has one level: no best
    # levels trained on different seeds are compared on the seeds they share, not on their pooled gaps
    def seeded(lvl, per_seed):
        gaps = {s: {"gap": g} for s, g in per_seed.items()}
        return {**row("capacity", lvl, sum(per_seed.values()) / len(per_seed), [-9, -1], None),
                "seeds": sorted(per_seed), "gap_vs_fedit": {"mean": sum(per_seed.values()) / len(per_seed),
                                                            "ci95": [-9, -1], "per_seed": gaps}}
    uneven = [seeded("L/8", {42: -4.0, 43: -6.0, 44: -11.0}), seeded("L/4", {42: -5.0, 43: -6.0})]
    # pooled, L/4 (-5.5) looks better than L/8 (-7.0); on seeds 42 and 43 L/8 is (-5.0 vs -5.5)
    assert best_levels(uneven) == [{"factor": "capacity", "level": "L/8", "gap": -5.0, "seeds": ["42", "43"],
                                    "others": {"L/4": -5.5}}]
    twice = rows + [dict(rows[0], factor="transfer", level="copy")]  # the center appears in every factor
    assert probe_correlation(twice)["n"] == 3


def test_set_overrides_every_cell_in_its_own_tagged_folders_and_needs_a_tag(tmp_path, capsys):
    assert sw.main(["--scale", "smoke", "--set", "model.name=tiny-qwen2", "--dry-run",
                    "--results", str(tmp_path)]) == 2
    assert "add --tag NAME" in capsys.readouterr().err
    assert sw.main(["--scale", "smoke", "--set", "model.name=tiny-qwen2", "--tag", "bad tag!", "--dry-run",
                    "--results", str(tmp_path)]) == 2
    plan = sw.sweep_plan("smoke", tmp_path, tag="qwen", extra=["model.name=tiny-qwen2"])
    cells, _ = sw.sweep_cells(plan, sw.levels(), [0])
    default = _plan(tmp_path)
    for c in cells:
        assert plan.config(c).model.name == "tiny-qwen2" and default.config(c).model.name == "tiny-llama"
        assert plan.cell_dir(c).parts[-3] == "smoke-qwen" and plan.cell_dir(c) != default.cell_dir(c)
    assert sw.output_path(plan, "json").name == "sweep_smoke-qwen.json"
    assert sw.main(["--scale", "smoke", "--set", "model.name=tiny-qwen2", "--tag", "qwen", "--dry-run",
                    "--results", str(tmp_path)]) == 0
    assert "smoke-qwen" in capsys.readouterr().out


@pytest.mark.parametrize("scale", ["smoke", "lab"])
def test_the_final_stage_control_trains_at_devfts_last_stage_learning_rates(tmp_path, scale):
    """'Final stage only' = FedIT for DevFT's last-stage rounds at exactly the learning rates that
    DevFT's last stage (the full model) trains with, under either lr scope."""
    from devft_lab.experiments.reproduce.cells import Cell
    from devft_lab.runner.config import round_lrs, stage_rounds

    plan = sw.sweep_plan(scale, tmp_path)
    rows = {r.level: r for r in sw.levels(["schedule"])}
    assert set(rows) == {"run", "stage", "stage-even"} and rows["run"].variant == sw.CENTER
    for level, row in rows.items():
        dev = plan.config(Cell(row.variant, 42))
        ctl = plan.config(Cell(sw.control_variant(plan, row.schedule, row.control), 42))
        last = stage_rounds(dev)[-1]
        assert not ctl.devft.enabled and ctl.fed.num_rounds == last
        assert round_lrs(ctl) == round_lrs(dev)[-last:], level
    stage = plan.config(Cell(rows["stage"].variant, 42))
    starts = [sum(stage_rounds(stage)[:s]) for s in range(len(stage_rounds(stage)))]
    assert all(round_lrs(stage)[i] == stage.train.lr for i in starts)  # every stage restarts at the peak


def test_lr_window_settings_are_checked_and_hashed_only_away_from_their_defaults():
    from devft_lab.core.choices import ConfigError
    from devft_lab.runner.config import config_hash, load_config

    base = load_config("lab")
    assert config_hash(base) == config_hash(load_config("lab", ["train.schedule_scope=run", "train.schedule_start=0"]))
    assert config_hash(base) != config_hash(load_config("lab", ["train.schedule_scope=stage"]))
    for bad, field in [("train.schedule_scope=epoch", "train.schedule_scope"),
                       ("train.schedule_start=-1", "train.schedule_start"),
                       ("train.schedule_start=8", "train.schedule_rounds"),
                       ("train.schedule_rounds=0", "train.schedule_rounds")]:
        with pytest.raises(ConfigError, match=field):
            load_config("lab", [bad])
    with pytest.raises(ConfigError, match="schedule_scope=stage"):
        load_config("lab", ["train.schedule_scope=stage", "train.schedule_rounds=20"])
