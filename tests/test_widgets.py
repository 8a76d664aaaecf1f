"""Widget callbacks, profile switch, notebook helpers and plots (tiny model, seconds)."""
import json

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from devft_lab.teach import explore, viz, widgets
from devft_lab.method.grouping import validate_groups
from devft_lab.method.similarity import layer_parameter_similarity
from devft_lab.core.models import load_model

TEXTS = ["the cat sat on the mat", "water boils at one hundred degrees", "a b c d e f g"]


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model("tiny-llama", device="cpu")
    return model, tok, layer_parameter_similarity(model)


@pytest.mark.parametrize("grouping", ["spectral", "contiguous", "even", "random"])
@pytest.mark.parametrize("capacity", [1, 3, 8])
def test_capacity_view_groups_cover_every_layer(tiny, grouping, capacity):
    model, tok, sim = tiny
    v = widgets.capacity_view(model, capacity, 0.2, grouping, sim)
    validate_groups(v["groups"], 8, capacity)  # exactly `capacity` groups, every layer once
    assert len(v["weights"]) == len(v["anchor_weights"]) == capacity
    assert all(abs(sum(w) - 1) < 1e-9 for w in v["weights"])
    assert v["anchor_weights"] == [pytest.approx(1 - 0.2 * (len(g) - 1)) for g in v["groups"]]
    assert v["cost"].capacity == capacity and v["perplexity"] is None
    assert isinstance(v["figure"], Figure)


def test_capacity_view_full_capacity_is_the_full_model(tiny):
    from devft_lab.core.evaluate import perplexity

    model, tok, sim = tiny
    v = widgets.capacity_view(model, 8, 0.4, "even", sim, tok, TEXTS)
    assert v["groups"] == [[i] for i in range(8)]
    assert v["perplexity"] == pytest.approx(perplexity(model, tok, TEXTS), rel=1e-5)


def test_stage_cost_scales_with_capacity(tiny):
    model = tiny[0]
    one, full = explore.stage_cost(model, 1), explore.stage_cost(model, 8)
    assert full.decoder_params == 8 * one.decoder_params
    assert full.lora_params == 8 * one.lora_params and full.lora_bytes == 4 * full.lora_params
    assert full.submodel_bytes == 4 * full.decoder_params
    assert one.train_flops_per_token < full.train_flops_per_token


def test_beta_sweep_at_zero_is_r_one(tiny):
    model, tok, sim = tiny
    groups = [[0, 1, 2], [3, 4], [5, 6, 7]]
    out = widgets.beta_sweep(model, tok, TEXTS, groups, [0.0, 0.1, 0.5], references=("r-one", "mean"))
    assert out["betas"] == [0.0, 0.1, 0.5] and len(out["perplexity"]) == 3
    assert out["perplexity"][0] == pytest.approx(out["references"]["r-one"], rel=1e-6)
    # beta = 1/(m-1) ... and beta = 1/m for equal groups is MEAN: m = 2 here would need beta 1/2 for
    # the pair but 1/3 for the triples, so MEAN is only checked on equal groups:
    even = [[0, 1], [2, 3], [4, 5], [6, 7]]
    eq = widgets.beta_sweep(model, tok, TEXTS, even, [0.5], references=("mean",))
    assert eq["perplexity"][0] == pytest.approx(eq["references"]["mean"], rel=1e-6)
    assert isinstance(out["figure"], Figure)


def test_fusion_view(tiny):
    model = tiny[0]
    v = widgets.fusion_view(model, [2, 3, 4], beta=0.1)
    assert v["weights"] == pytest.approx([0.8, 0.1, 0.1])
    assert v["cosine"].shape == (3, len(v["names"])) and v["norm_ratio"].shape == v["cosine"].shape
    r = widgets.fusion_view(model, [2, 3, 4], beta=0.0)  # R-ONE: the fused layer is the anchor
    assert np.allclose(r["cosine"][0], 1.0, atol=1e-5) and np.allclose(r["norm_ratio"][0], 1.0, atol=1e-5)


def test_grouping_view(tiny):
    sim = tiny[2]
    sims = {"parameter cosine": sim, "shifted": sim + 0.1}
    v = widgets.grouping_view(sims, "parameter cosine", 3)
    for rule, groups in v["groups"].items():
        validate_groups(groups, 8, 3)
    assert set(v["ratio_cut"]) == {"spectral", "contiguous", "even", "random"}
    assert v["ratio_cut"]["contiguous"] <= v["ratio_cut"]["even"] + 1e-9  # DP optimum over contiguous runs
    assert v["embedding"].shape == (8, 3) and np.all(np.diff(v["eigenvalues"]) >= -1e-9)
    with pytest.raises(ValueError, match="affinity option"):
        widgets.grouping_view(sims, "nope", 3)


def test_split_clients_same_texts():
    iid = explore.split_clients(iid=True, seed=1)
    non = explore.split_clients(iid=False)
    assert sorted(sum(iid, [])) == sorted(sum(non, [])) == sorted(explore.all_texts())
    assert len(iid) == len(non) == len(explore.TEXT_CATEGORIES)
    with pytest.raises(ValueError, match="one category per client"):
        explore.split_clients(num_clients=3, iid=False)


def test_gradients_and_client_conflict(tiny):
    model, tok, _ = tiny
    sub = explore.identity_submodel(model)
    g = explore.lora_gradients(sub, tok, TEXTS)
    assert sorted(g) == list(range(8))
    assert all(float(t.abs().max()) == 0 for i in g for n, t in g[i].items() if "lora_A" in n)  # B = 0
    assert any(float(t.abs().max()) > 0 for i in g for n, t in g[i].items() if "lora_B" in n)
    clients = [explore.lora_gradients(sub, tok, c[:1]) for c in explore.split_clients(iid=False)]
    cos, sign = explore.client_conflict_per_layer(clients)
    assert cos.shape == sign.shape == (8,) and np.all((sign >= 0) & (sign <= 1))
    w = explore.weight_gradients(model, tok, TEXTS)
    assert sorted(w) == list(range(8)) and "self_attn.q_proj.weight" in w[0]
    assert not any(p.requires_grad and p.grad is not None for p in model.parameters())


def test_tensor_difference_norms(tiny):
    model = tiny[0]
    names, d = explore.tensor_difference_norms(model, [1, 2, 3])
    assert d.shape == (3, len(names)) and np.all(d[0] == 0)  # the anchor against itself
    proj = [k for k, n in enumerate(names) if "proj" in n]  # random projections differ; tiny norms are all 1
    assert np.all(d[1:, proj] > 0)


def test_profile_switch(monkeypatch):
    from devft_lab.teach import profile

    monkeypatch.delenv("DEVFT_PROFILE", raising=False)
    monkeypatch.delenv("DEVFT_NOTEBOOK_MODEL", raising=False)
    assert profile.profile() == "full" and profile.profile_model() == "smollm2-135m"
    assert profile.pick(ci=1, full=2) == 2
    monkeypatch.setenv("DEVFT_PROFILE", "CI")
    assert profile.is_ci() and profile.profile_model() == "tiny-llama" and profile.pick(ci=1, full=2) == 1
    monkeypatch.setenv("DEVFT_NOTEBOOK_MODEL", "tiny-qwen2")
    assert profile.profile_model() == "tiny-qwen2"
    monkeypatch.setenv("DEVFT_PROFILE", "fast")
    with pytest.raises(ValueError, match="DEVFT_PROFILE"):
        profile.profile()


def test_check_and_clean(capsys):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    from devft_lab.teach.notebooks import check, clean

    check("two is even", 2 % 2 == 0)
    assert capsys.readouterr().out == "✓ two is even\n"
    with pytest.raises(AssertionError, match="three is even"):
        check("three is even", 3 % 2 == 0)
    nb = new_notebook(cells=[new_code_cell("1")])
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {}}
    nb.metadata["kernelspec"] = {"name": "devft", "display_name": "x"}
    clean(nb)
    assert "widgets" not in nb.metadata and nb.metadata["kernelspec"]["name"] == "python3"
    nbformat.validate(nb)


def test_execute_stores_outputs_with_nbclient(tmp_path):
    pytest.importorskip("nbclient")
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    from devft_lab.teach.notebooks import execute

    (tmp_path / "pyproject.toml").write_text("")  # the executor records input hashes from the repository root
    nb = new_notebook(cells=[new_code_cell("import os\nprint(os.environ['DEVFT_NB_TEST'])"),
                             new_code_cell("print(1)\nprint(2)"), new_code_cell("6 * 7")])
    path = tmp_path / "t.ipynb"
    nbformat.write(nb, path)
    assert execute(path, timeout=120, env={"DEVFT_NB_TEST": "from-env"}) > 0
    out = nbformat.read(path, as_version=4)
    assert [c.execution_count for c in out.cells] == [1, 2, 3]
    assert out.cells[0].outputs[0]["text"] == "from-env\n"
    assert [o["text"] for o in out.cells[1].outputs] == ["1\n2\n"]  # one coalesced stream
    assert out.cells[2].outputs[0]["data"]["text/plain"] == "42"
    assert out.metadata["kernelspec"]["name"] == "python3"
    bad = tmp_path / "bad.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell("1 / 0")]), bad)
    with pytest.raises(Exception, match="ZeroDivisionError"):
        execute(bad, timeout=120, save=False)


def test_committed_notebooks_are_clean():
    """The before-stop contract: kernelspec python3, outputs present, no widget state, < 2 MB."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).parents[1]
    paths = sorted(root.glob("notebooks/[0-9][0-9]_*.ipynb"))
    try:  # only committed notebooks: one being written may not have outputs yet
        tracked = subprocess.run(["git", "ls-files", "notebooks"], cwd=root, capture_output=True, text=True,
                                 check=True).stdout.split()
        paths = [p for p in paths if str(p.relative_to(root)) in tracked]
    except (OSError, subprocess.CalledProcessError):
        pass
    for path in paths:
        nb = json.loads(path.read_text())
        assert nb["metadata"]["kernelspec"]["name"] == "python3", path
        assert "widgets" not in nb["metadata"], path
        assert any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), path
        assert path.stat().st_size < 2_000_000, path


def test_viz_functions_return_figures():
    m = torch.rand(6, 6)
    groups = [[0, 1], [2, 3, 4], [5]]
    figs = [viz.heatmap(m, "t", groups), viz.heatmaps({"a": m, "b": m}, groups),
            viz.groups_strip({"x": groups}, 6), viz.capacity_bars([1, 2, 6], 6),
            viz.relative_bars({"a": [0.1, 1]}, ["s1", "s2"]), viz.lines({"a": ([0, 1], [1, 2])}, logy=True),
            viz.bars(np.arange(6), groups=groups), viz.anchor_weights([0, 0.1], [2, 12], 0.1),
            viz.weight_bars([[1.0, 0.0], [0.8, 0.1, 0.1], [1.0]], groups),
            viz.member_images([m, m], ["a", "b"]), viz.matrix(m[:2], ["r1", "r2"], list("abcdef")),
            viz.histogram(m), viz.embedding_scatter(np.random.rand(6, 3), groups, np.arange(6.0))]
    assert all(isinstance(f, Figure) for f in figs)
    assert viz.describe_groups([[0, 1, 2], [3, 5]]) == "0-2 {3,5}"
    assert "| a |" in viz.table([{"a": 1.0}]).data


def test_interact_controls():
    W = pytest.importorskip("ipywidgets")
    from devft_lab.teach.widgets import _control

    s = _control("beta", (0.0, 0.5, 0.05, 0.1))
    assert isinstance(s, W.FloatSlider) and s.value == 0.1
    i = _control("capacity", (1, 30, 1, 8))
    assert isinstance(i, W.IntSlider) and i.value == 8
    d = _control("rule", ["even", "spectral"])
    assert isinstance(d, W.Dropdown) and d.value == "even"
    p = _control("group", [("8-15", [8, 9]), ("16-23", [16])])
    assert p.value == [8, 9]
    with pytest.raises(TypeError, match="control"):
        _control("x", 3)


def test_uniform_guess_is_the_loss_of_equal_logits():
    """A model whose logits are all equal guesses uniformly: perplexity V, loss ln V nats."""
    import math

    from devft_lab.core.evaluate import perplexity

    model, tok = load_model("tiny-llama", device="cpu")
    u = explore.uniform_guess(tok)
    assert u.vocab_size == len(tok) and u.nats == pytest.approx(math.log(len(tok)))
    assert math.exp(u.nats) == pytest.approx(u.perplexity)
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()  # every logit 0: a uniform next-token guess
    assert perplexity(model, tok, TEXTS) == pytest.approx(u.perplexity, rel=1e-5)
    assert explore.uniform_guess(49152).nats == pytest.approx(10.80, abs=0.005)  # SmolLM2's vocabulary
    with pytest.raises(ValueError, match="at least 2 tokens"):
        explore.uniform_guess(1)


def _labels(fig):
    return fig.axes[0].get_legend_handles_labels()[1]


def test_beta_sweep_draws_the_reference_lines(tiny):
    model, tok, _ = tiny
    refs = {"full model": 10.0, "uniform guess": 259.0}
    out = widgets.beta_sweep(model, tok, TEXTS, [[0, 1, 2, 3], [4, 5, 6, 7]], [0.0, 0.1], refs=refs, title="t")
    labels = _labels(out["figure"])
    assert {"DBLF", "R-ONE", "MEAN", "full model", "uniform guess"} <= set(labels)
    assert out["figure"].axes[0].get_yscale() == "log" and out["figure"].axes[0].get_title() == "t"
    assert set(out["references"]) == {"r-one", "mean"}  # the rules' perplexities, not the reference lines


def test_lines_reference_lines_are_drawn_at_their_values():
    fig = viz.lines({"a": ([0, 1], [3.0, 2.0])}, refs={"full model": 1.5, "uniform guess": 10.8}, logy=True)
    ax = fig.axes[0]
    drawn = {l.get_label(): l.get_ydata()[0] for l in ax.get_lines()}
    assert drawn["full model"] == 1.5 and drawn["uniform guess"] == 10.8
    assert ax.get_ylim()[1] >= 10.8  # the references stay in view
