"""The stage schematic (devft_lab.teach.schematic): what the picture states, and bad stages refused.

Properties: one panel per stage; every layer box of a panel is there once and has the colour
of the one group that holds it (the colour of that group's representative box); distinct
multi-layer groups of a stage have distinct colours; each panel names its rounds; a groups
list that does not cover every layer exactly once (or has the wrong count) is a ValueError
that names the stage and the problem; the committed stage file gives SmolLM2's 30 layers in
four stages with the demo config's rounds, and the README's figure is drawn from it.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.colors import to_rgba

from devft_lab.teach.schematic import SINGLETON_COLOR, check_stages, schedule_diagram, stages_from

ROOT = Path(__file__).resolve().parents[1]

L = 10
STAGES = [
    {"capacity": 2, "groups": [[0, 1, 2, 3, 9], [4, 5, 6, 7, 8]], "rounds": 1},
    {"capacity": 5, "groups": [[0], [1, 2], [3, 4, 5], [6, 8], [7, 9]], "rounds": 2},
    {"capacity": L, "groups": [[i] for i in range(L)], "rounds": 3},
]


def _boxes(ax, kind: str) -> dict[str, tuple]:
    return {p.get_gid(): to_rgba(p.get_facecolor()) for p in ax.patches if (p.get_gid() or "").startswith(kind)}


def test_one_panel_per_stage():
    assert len(schedule_diagram(STAGES, L).axes) == 3
    assert len(schedule_diagram(STAGES[1:], L).axes) == 2


def test_every_layer_box_has_the_colour_of_its_one_group():
    fig = schedule_diagram(STAGES, L)
    for ax, st in zip(fig.axes, STAGES):
        layers, reps = _boxes(ax, "layer:"), _boxes(ax, "rep:")
        assert len(reps) == st["capacity"]
        indices = sorted(int(gid.split(":")[1]) for gid in layers)
        assert indices == list(range(L)), "each layer drawn exactly once"
        for gid, colour in layers.items():
            i, g = int(gid.split(":")[1]), int(gid.split(":")[3])
            assert i in st["groups"][g]
            assert colour == reps[f"rep:{g}"]
        multi = [reps[f"rep:{g}"] for g, members in enumerate(st["groups"]) if len(members) > 1]
        assert len(set(multi)) == len(multi), "two groups of a stage share a colour"
        singles = {reps[f"rep:{g}"] for g, members in enumerate(st["groups"]) if len(members) == 1}
        assert singles <= {to_rgba(SINGLETON_COLOR)}
        assert to_rgba(SINGLETON_COLOR) not in multi


def test_each_panel_names_its_rounds():
    fig = schedule_diagram(STAGES, L)
    for ax, st in zip(fig.axes, STAGES):
        texts = " ".join(t.get_text() for t in ax.texts)
        assert f"= {st['rounds']} federated round" in texts and "FedAvg of LoRA" in texts


def test_groups_are_canonical_whatever_order_they_come_in():
    shuffled = [{"capacity": 2, "groups": [[8, 4, 5, 6, 7], [9, 0, 3, 2, 1]], "rounds": 1}]
    assert check_stages(shuffled, L)[0]["groups"] == STAGES[0]["groups"]


@pytest.mark.parametrize("groups,capacity,problem", [
    ([[0, 1, 2, 3], [4, 5, 6, 7, 8]], 2, "miss layer(s) [9]"),
    ([[0, 1, 2, 3, 9], [3, 4, 5, 6, 7, 8]], 2, "repeat layer(s) [3]"),
    ([[0, 1, 2, 3, 9], [4, 5, 6, 7, 8, 10]], 2, "[10] outside 0..9"),
    ([[0, 1, 2, 3, 9], [4, 5, 6, 7, 8]], 3, "expected 3 groups, got 2"),
    ([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], []], 2, "non-empty"),
])
def test_bad_groups_raise_naming_the_stage_and_the_problem(groups, capacity, problem):
    stages = [STAGES[1], {"capacity": capacity, "groups": groups, "rounds": 1}]
    with pytest.raises(ValueError) as e:
        schedule_diagram(stages, L)
    assert "stage 2" in str(e.value) and problem in str(e.value)


def test_bad_rounds_or_missing_keys_raise():
    with pytest.raises(ValueError, match="stage 1: 'rounds' must be a whole number >= 1"):
        schedule_diagram([{**STAGES[0], "rounds": 0}], L)
    with pytest.raises(ValueError, match="stage 1 has no 'rounds'"):
        schedule_diagram([{"capacity": 2, "groups": STAGES[0]["groups"]}], L)
    with pytest.raises(ValueError, match="stages is empty"):
        schedule_diagram([], L)


def test_committed_stage_file_gives_smollm2_groups_and_the_demo_rounds():
    from devft_lab.runner.config import load_config, stage_rounds

    stages, num_layers, info = stages_from(ROOT / "results" / "submodels_smollm2.json", "demo")
    assert num_layers == 30 and info["model"] == "smollm2-135m"
    assert info["source"] == "results/submodels_smollm2.json"  # shown from the repository, no machine path
    assert [st["rounds"] for st in stages] == stage_rounds(load_config("demo"))
    assert [len(st["groups"]) for st in stages] == [st["capacity"] for st in stages]
    assert stages[-1]["groups"] == [[i] for i in range(30)]  # the last stage is the full model
    assert len(schedule_diagram(stages, num_layers).axes) == len(stages)


def test_stage_file_and_config_must_agree_on_the_number_of_stages(tmp_path):
    f = tmp_path / "stages.json"
    f.write_text('{"num_layers": 10, "stages": [{"capacity": 10, "groups": [[0],[1],[2],[3],[4],[5],[6],[7],[8],[9]]}]}')
    with pytest.raises(ValueError, match="config 'demo' has 4 stages but .* has 1"):
        stages_from(f, "demo")


def test_readme_figure_is_committed_and_small():
    png = ROOT / "docs" / "figures" / "schedule.png"
    assert png.is_file(), "draw it: python -m devft_lab.teach.schematic --out docs/figures/schedule.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size < 300_000
