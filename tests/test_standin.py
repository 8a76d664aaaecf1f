"""The stand-in experiment (devft_lab.experiments.standin) on the tiny model: the stand-ins' groups,
the probe gap, copy back, the equal-FLOPs budget and resuming a grid."""
import json
import math

import pytest
import torch

from devft_lab.experiments import standin as si
from devft_lab.method.grouping import validate_groups


@pytest.fixture(scope="module")
def lab():
    from devft_lab.data.loaders import tiny_examples

    return si.make_lab("tiny-llama", holdout=8, examples=tiny_examples("train", 40), suites=(), compile=False,
                       overrides=["model.dtype=float32", "train.seq_len=64"])


@pytest.fixture(scope="module")
def tiny_counts():
    from devft_lab.experiments.compute_matched import model_shape

    return model_shape("tiny-llama", 16, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


# --------------------------------------------------------------------------- the stand-ins' groups
@pytest.mark.parametrize("L", [8, 30])
def test_pairs_at_size_L_minus_k_has_exactly_k_adjacent_pairs_in_the_middle(L):
    for size in range(L - L // 2, L + 1):
        g = si.stand_in_groups("pairs", L, size)
        validate_groups(g, L, size)
        pairs = [x for x in g if len(x) == 2]
        k = L - size
        assert len(pairs) == k and all(len(x) in (1, 2) for x in g)
        assert all(b == a + 1 for a, b in pairs)
        if k:  # one contiguous block of pairs, centred (as many singletons before as after, within one)
            first, last = pairs[0][0], pairs[-1][1]
            assert last - first + 1 == 2 * k
            assert abs(first - (L - 1 - last)) <= 1
    with pytest.raises(ValueError, match="L/2 or more"):
        si.stand_in_groups("pairs", L, L - L // 2 - 1)


@pytest.mark.parametrize("L", [8, 30])
def test_drop_keeps_evenly_spaced_layers_and_every_layer_is_in_exactly_one_run(L):
    for size in range(1, L + 1):
        g = si.stand_in_groups("drop", L, size)
        validate_groups(g, L, size)  # every layer in exactly one run
        assert all(x == list(range(x[0], x[-1] + 1)) for x in g)  # runs are contiguous
        kept = [run[0] for run in g]  # a drop stand-in keeps each run's anchor, its first layer
        assert all(abs(k - i * L / size) <= 0.5 for i, k in enumerate(kept))  # evenly spaced
        assert max(map(len, g)) - min(map(len, g)) <= 1
        assert si.stand_in_groups("dblf", L, size) == g  # dblf and drop differ only in the fusion
    assert si.FUSION_OF["drop"] == "r-one" and si.FUSION_OF["dblf"] == "dblf"


def test_a_stand_in_with_the_same_groups_as_an_earlier_one_is_copied_not_trained(tiny_counts):
    points, notes = si.grid(8, tiny_counts, [2, 4, 6], ["dblf", "drop", "pairs"], [1, 2], 3)
    names = [p.name for p in points]
    assert len(names) == len(set(names))
    by = {p.name: p for p in points}
    assert by["pairs-4-s1"].same_as == "dblf-4-s1"  # L/2 pairs = balanced runs of two
    assert by["pairs-6-s1"].same_as is None and by["drop-4-s1"].same_as is None  # r-one is another fusion
    assert "pairs-2-s1" not in by and any("pairs" in n for n in notes)
    assert sum(p.kind == "untrained" for p in points) == 1
    with pytest.raises(ValueError, match="fewer layers than the model"):
        si.grid(8, tiny_counts, [8], ["dblf"], [1], 3)


# --------------------------------------------------------------------------- the budget
@pytest.mark.parametrize("steps", [1, 3, 6, 10])
def test_equal_flops_budget_is_steps_times_the_flop_ratio_rounded_half_up_at_least_one(tiny_counts, steps):
    from devft_lab.experiments.compute_matched import model_shape, stage_flops_per_token

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    for counts in (tiny_counts, model_shape("smollm2-135m", 16, targets)):
        L = counts.num_layers
        F = [stage_flops_per_token(counts, k) for k in range(1, L + 1)]
        assert all(a < b for a, b in zip(F, F[1:]))
        budgets = [si.matched_steps(counts, k, steps) for k in range(1, L + 1)]
        for k, m in zip(range(1, L + 1), budgets):
            exact = steps * F[k - 1] / F[-1]
            assert m == max(1, math.floor(exact + 0.5))
            assert m >= 1 and (abs(m - exact) <= 0.5 or exact < 0.5)  # within half a step of the stand-in's FLOPs
        assert budgets[-1] == steps and budgets == sorted(budgets)


# --------------------------------------------------------------------------- a point
def test_a_stand_in_of_L_singletons_reproduces_the_full_model_loss_exactly(lab):
    from devft_lab.core.train import mean_response_loss

    L = lab.num_layers
    base_probe = mean_response_loss(lab.model, lab.probe)  # the plain model, no adapter
    base_held = mean_response_loss(lab.model, lab.heldout)
    assert si.stand_in_groups("pairs", L, L) == [[i] for i in range(L)]
    for kind in ("dblf", "drop"):  # two fusions, DBLF and R-ONE
        g = si.stand_in_groups(kind, L, L)
        assert g == [[i] for i in range(L)]
        rec = si.run_point(lab, g, si.FUSION_OF[kind], 0, seed=1)
        start = rec["probe"][0]
        assert start["sub_loss"] == base_probe and rec["probe_gap"] == 0.0
        assert rec["heldout_loss"] == base_held  # untrained: B = 0, the adapter adds nothing
    smaller = si.run_point(lab, si.stand_in_groups("drop", L, 4), "r-one", 0, seed=1)
    assert smaller["probe"][0]["sub_loss"] != base_probe and smaller["probe"][0]["full_loss"] == base_probe


def test_after_copy_back_every_member_holds_its_representatives_trained_lora(lab):
    L = lab.num_layers
    for kind, size in (("dblf", 3), ("drop", 3), ("pairs", L - 2)):
        groups = si.stand_in_groups(kind, L, size)
        keep = {}
        rec = si.run_point(lab, groups, si.FUSION_OF[kind], 1, seed=2, keep=keep)
        reps, full = keep["reps"], keep["global_lora"]
        assert rec["train"]["steps"] == 1 and rec["groups"] == groups
        assert any(float(t.abs().max()) > 0 for d in reps.values() for n, t in d.items() if "lora_B" in n)  # trained
        for g, members in enumerate(groups):
            for i in members:
                assert set(full[i]) == set(reps[g])
                for n, t in reps[g].items():
                    assert torch.equal(full[i][n], t), (kind, g, i, n)


def test_the_same_seed_gives_the_same_batches_and_result_at_every_point(lab):
    groups = si.stand_in_groups("drop", lab.num_layers, 4)
    a = si.run_point(lab, groups, "r-one", 1, seed=3, evaluate=False)
    b = si.run_point(lab, groups, "r-one", 1, seed=3, evaluate=False)
    c = si.run_point(lab, groups, "r-one", 1, seed=4, evaluate=False)
    assert a["train"]["tokens"] == b["train"]["tokens"] and a["heldout_loss"] == b["heldout_loss"]
    assert a["heldout_loss"] != c["heldout_loss"]


# --------------------------------------------------------------------------- the grid on disk
class _Lab:  # what main needs of a Lab when make_point is replaced
    compile = False

    def __init__(self, lr=1e-3):
        self.settings = {"model": "tiny-llama", "lr": lr, "holdout": 8, "items": 4, "dtype": "float32",
                         "lora": {"r": 16, "target_modules": ["q_proj"]}, "batch_size": 8, "probe_examples": 8,
                         "max_per_task": 1, "beta": 0.1}


def _fake_point(made):
    def make_point(lab, p):
        made.append(p.name)
        L = 8
        return {"name": p.name, "kind": p.kind, "size": p.size, "seed": p.seed, "steps": p.steps,
                "groups": ([[i] for i in range(L)] if p.kind in ("full", "untrained")
                           else si.stand_in_groups(p.kind, L, p.size)),
                "probe_gap": 0.0 if p.kind in ("full", "untrained") else 0.1, "heldout_loss": 5.0 - 0.1 * p.steps,
                "acc": 50.0, "answer_nll": 1.0, "seconds": {"build_probe": 1, "train_transfer_probe": 2, "evaluate": 3,
                                                          "total": 6}, "settings": lab.settings, "machine": "test"}
    return make_point


def test_point_files_are_skipped_on_rerun_and_other_settings_stop_the_run(tmp_path, monkeypatch):
    made: list[str] = []
    monkeypatch.setattr(si, "make_lab", lambda *a, **k: _Lab())
    monkeypatch.setattr(si, "make_point", _fake_point(made))
    out = tmp_path / "st"
    args = ["--model", "tiny-llama", "--sizes", "4", "6", "--kinds", "drop", "pairs", "--seeds", "1", "--steps", "3",
            "--out", str(out)]
    assert si.main(args + ["--max-points", "2"]) == 0
    assert made == ["drop-4-s1", "pairs-4-s1"]
    text = (out / "points" / "drop-4-s1.json").read_text()
    assert si.main(args + ["--max-points", "1"]) == 0
    assert made[2:] == ["full-steps2-s1"]  # the two present were skipped; F(4)/F(8) x 3 steps rounds to 2
    assert (out / "points" / "drop-4-s1.json").read_text() == text
    assert si.main(args + ["--max-points", "0"]) == 0  # the report only
    assert len(made) == 3 and len(list((out / "points").glob("*.json"))) == 3
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["points_present"] == 3 and report["missing"][0] == "drop-6-s1"
    assert out.with_suffix(".md").exists() and out.with_suffix(".png").exists()
    (tmp_path / "readings").mkdir()
    (tmp_path / "readings" / "st.md").write_text("A person's reading.\n")
    assert si.main(args) == 0  # the rest
    names = {p.stem for p in (out / "points").glob("*.json")}
    report = json.loads(out.with_suffix(".json").read_text())
    assert len(made) == len(names) == report["points_planned"]
    assert report["written_reading"]["link"] == "readings/st.md" and "reading" not in report
    assert "](readings/st.md)" in out.with_suffix(".md").read_text()  # linked, not copied, not rewritten
    assert (tmp_path / "readings" / "st.md").read_text() == "A person's reading.\n"
    assert report["probe_loss_correlation"] == {"rho": None, "n": 4}  # every fake probe gap is 0.1: no ranks
    other = list(args)
    other[other.index("--steps") + 1] = "2"
    for k in ("1", "0"):  # making points or only reporting: points of another budget are not mixed in
        with pytest.raises(SystemExit, match="other settings"):
            si.main(other + ["--max-points", k])
    monkeypatch.setattr(si, "make_lab", lambda *a, **k: _Lab(lr=2e-4))
    with pytest.raises(SystemExit, match="other settings"):
        si.main(args + ["--sizes", "2", "--max-points", "1"])


def test_the_probe_loss_correlation_ranks_the_kind_size_means():
    def point(gap, loss):
        return {"probe_gap": {"mean": gap}, "heldout_loss": {"mean": loss}}

    summary = {"kinds": {"dblf": [point(7.4, 0.72), point(4.4, 0.42)], "pairs": [point(3.8, 0.51), point(0.3, 0.21)]}}
    assert si.probe_loss_correlation(summary) == {"rho": pytest.approx(0.8), "n": 4}  # one swap of ranks 2 and 3
    assert si.probe_loss_correlation({"kinds": {"dblf": summary["kinds"]["dblf"]}})["rho"] is None  # two means

