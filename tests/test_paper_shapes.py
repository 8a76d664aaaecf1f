"""Paper-shape stage costs (meta device) and the CUDA stage-cost script on a tiny CPU shape."""
import json

import pytest
import torch

from devft_lab.experiments import cuda_stage_cost, paper_shapes as ps


@pytest.fixture(scope="module")
def reports():
    return {name: ps.shape_report(name) for name in ps.PAPER_SHAPES}


def test_7b_on_meta_has_the_published_size():
    model = ps.meta_model(ps.llama_config("llama2_7b"))
    n = sum(p.numel() for p in model.parameters())
    assert all(p.is_meta for p in model.parameters())
    assert abs(n - 6.74e9) / 6.74e9 < 0.01
    assert ps.count_shape(model, 32, ["q_proj", "v_proj"]).total == n


def test_capacities_come_from_the_configs(reports):
    assert reports["llama2_7b"]["capacities"] == [4, 8, 16, 32]
    assert reports["llama31_8b"]["capacities"] == [4, 8, 16, 32]
    assert reports["llama2_13b"]["capacities"] == [5, 10, 20, 40]


def test_lora_bytes_scale_exactly_with_the_layers(reports):
    for rep in reports.values():
        per_layer = rep["counts"]["lora_per_layer"]
        for r in rep["stages"]:
            assert r["lora_params"] == r["layers"] * per_layer
            assert r["lora_up_bytes"] == r["lora_down_bytes"] == 4 * r["layers"] * per_layer
            assert r["ratio_lora_up_bytes"] == pytest.approx(rep["capacities"][-1] / r["layers"])


def test_full_stage_ratios_are_one_and_early_stages_cheaper(reports):
    for rep in reports.values():
        full = rep["stages"][-1]
        assert full["submodel_params"] == rep["counts"]["total"]
        for k in ps.RATIO_KEYS:
            assert full[f"ratio_{k}"] == 1.0
        for a, b in zip(rep["stages"], rep["stages"][1:]):
            for k in ps.RATIO_KEYS:
                assert a[f"ratio_{k}"] > b[f"ratio_{k}"]


def test_fixed_parts_make_memory_and_flops_shrink_less_than_the_layers(reports):
    for rep in reports.values():
        s = rep["stages"][0]
        assert s["ratio_param_bytes_int4"] < s["ratio_param_bytes_bf16"] < s["ratio_layers"]
        assert s["ratio_flops_per_token_6n"] < s["ratio_layers"]
        assert s["param_bytes_int4"] < s["param_bytes_bf16"]


def test_counts_match_a_built_submodel():
    """The formulas count what build_submodel actually builds (tiny real LLaMA, PEFT LoRA)."""
    from devft_lab.method.grouping import even_groups
    from devft_lab.method.submodel import build_submodel, default_lora_config

    config = ps.llama_config(dict(hidden_size=32, intermediate_size=64, num_hidden_layers=8,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=100))
    torch.manual_seed(0)
    model = cuda_stage_cost.random_model(config, "cpu", torch.float32)
    counts = ps.count_shape(model, 4, ["q_proj", "v_proj"])
    lora = default_lora_config(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    for k in (2, 4, 8):
        sub = build_submodel(model, even_groups(8, k), 0.1, "dblf", lora).model
        cost = ps.stage_cost(counts, k)
        trainable = sum(p.numel() for p in sub.parameters() if p.requires_grad)
        assert trainable == cost["lora_params"]
        assert sum(p.numel() for p in sub.parameters()) - trainable == cost["submodel_params"]


def test_main_writes_json_and_markdown(tmp_path, capsys):
    out = tmp_path / "ps"
    assert ps.main(["--out", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert set(data["models"]) == set(ps.PAPER_SHAPES)
    md = out.with_suffix(".md").read_text()
    assert md.splitlines()[2].startswith("Command: `python -m devft_lab.experiments.paper_shapes")
    assert "10.3x" in md and "| time |" in md and "No written reading yet." in md and "reading" not in data
    (tmp_path / "readings").mkdir()
    (tmp_path / "readings" / "ps.md").write_text("A person's reading.\n")
    assert ps.main(["--out", str(out)]) == 0
    assert "](readings/ps.md)" in out.with_suffix(".md").read_text()  # linked, never rewritten
    assert (tmp_path / "readings" / "ps.md").read_text() == "A person's reading.\n"


def test_cuda_stage_cost_without_cuda_writes_ran_false(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "c.json"
    assert cuda_stage_cost.main(["--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["ran"] is False and data["reason"] == "no CUDA device"


def test_cuda_stage_cost_tiny_cpu_one_row_per_stage(tmp_path):
    out = tmp_path / "c.json"
    assert cuda_stage_cost.main(["--layers", "8", "--hidden", "64", "--vocab", "128", "--device", "cpu",
                                 "--steps", "1", "--batch-size", "2", "--seq-len", "8", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["ran"] is True
    rows = data["stages"]
    assert [r["layers"] for r in rows] == data["capacities"] == [1, 2, 4, 8]
    params = [r["submodel_params"] for r in rows]
    assert params == sorted(params) and len(set(params)) == len(params)
    assert [r["lora_params"] for r in rows] == [rows[0]["lora_params"] * r["layers"] for r in rows]
    assert rows[-1]["ratio_step_s"] == 1.0
    assert all(r["step_s"] > 0 for r in rows)
