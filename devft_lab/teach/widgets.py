"""Widget callbacks as plain functions, and one helper that wires them to ipywidgets.

Each ``*_view`` / sweep function takes plain arguments (a model, a capacity, beta ...) and
returns a dict of data plus a ``"figure"``; pytest checks the data (tests/test_widgets.py),
the notebooks show the figure. :func:`interact` puts sliders/dropdowns above a figure and
redraws it in place when a control moves; the first figure is an ordinary output, so a
notebook opened without a kernel still shows it (the widgets' static fallback).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import warnings

from torch import nn

from devft_lab.teach import explore, viz
from devft_lab.core.layers import num_layers
from devft_lab.method.fusion import DEFAULT_BETA, anchor_weight, fusion_weights
from devft_lab.method.grouping import Groups, group_layers
from devft_lab.core.evaluate import perplexity
from devft_lab.method.similarity import layer_parameter_similarity


# --------------------------------------------------------------------------- notebook 01
def capacity_view(model: nn.Module, capacity: int, beta: float = DEFAULT_BETA, grouping: str = "spectral",
                  similarity=None, tokenizer=None, texts: Sequence[str] | None = None, method: str = "dblf",
                  seed: int = 0) -> dict:
    """One stage of capacity ``capacity``: its groups, fusion weights, cost and (optionally) perplexity.

    Returns ``groups`` (exactly ``capacity`` groups covering every layer once), ``weights``
    (per group, member order), ``anchor_weights`` (1 - beta (m - 1) per group), ``cost``
    (:class:`devft_lab.teach.explore.StageCost`), ``perplexity`` (None without tokenizer/texts)
    and ``figure`` (each layer's fusion weight, coloured by group).
    """
    L = num_layers(model)
    if grouping in ("spectral", "contiguous") and similarity is None:
        similarity = layer_parameter_similarity(model)
    groups = group_layers(similarity, L, capacity, method=grouping, seed=seed)
    sub = explore.quiet_build(model, groups, beta=beta, method=method)
    weights = [list(w) for w in sub.weights]
    ppl = None
    if tokenizer is not None and texts:
        ppl = perplexity(sub.model, tokenizer, list(texts))
    del sub
    cost = explore.stage_cost(model, capacity)
    ppl_txt = f", perplexity {ppl:.4g}" if ppl is not None else ""
    fig = viz.weight_bars(weights, groups, title=f"{grouping} groups, L_s = {capacity}, {method} β = {beta}"
                                                 f"{ppl_txt}")
    return {"groups": groups, "weights": weights,
            "anchor_weights": [anchor_weight(len(g), beta) for g in groups],
            "cost": cost, "perplexity": ppl, "figure": fig}


# --------------------------------------------------------------------------- notebook 02
def grouping_view(similarities: Mapping[str, object], option: str, capacity: int, negatives: str = "clip",
                  seed: int = 0) -> dict:
    """DGLG on the affinity ``similarities[option]`` for ``capacity`` groups, beside EVEN and RANDOM.

    Returns ``groups`` ({rule: groups}), ``ratio_cut`` ({rule: RatioCut on that affinity}),
    ``eigenvalues`` and ``embedding`` of its Laplacian D - W, and two figures: ``figure``
    (groups of every rule) and ``embedding_figure``.
    """
    if option not in similarities:
        raise ValueError(f"affinity option must be one of {sorted(similarities)}, got {option!r}.")
    sim = similarities[option]
    cmp = explore.compare_groupings(sim, capacity, ("spectral", "contiguous", "even", "random"),
                                    negatives=negatives, seed=seed)
    vals, emb = explore.spectral_embedding(sim, max(capacity, 3), negatives)
    rows = {f"{rule} (RatioCut {v['ratio_cut']:.3g})": v["groups"] for rule, v in cmp.items()}
    fig = viz.groups_strip(rows, len(sim), title=f"{option}: {capacity} groups")
    efig = viz.embedding_scatter(emb, cmp["spectral"]["groups"], vals,
                                 title=f"{option}: spectral embedding, colour = DGLG group")
    return {"groups": {r: v["groups"] for r, v in cmp.items()},
            "ratio_cut": {r: v["ratio_cut"] for r, v in cmp.items()},
            "eigenvalues": vals, "embedding": emb, "figure": fig, "embedding_figure": efig}


# --------------------------------------------------------------------------- notebook 03
def beta_sweep(model: nn.Module, tokenizer, texts: Sequence[str], groups: Groups,
               betas: Sequence[float], references: Sequence[str] = ("r-one", "mean"),
               refs: Mapping[str, float] | None = None, title: str | None = None) -> dict:
    """Perplexity of one stage's untrained submodel against beta (beta = 0 is R-ONE).

    Returns ``betas``, ``perplexity`` (one per beta), ``references`` ({method: perplexity}
    for the fixed-weight rules, drawn as dashed lines) and ``figure`` (log axis). ``refs`` adds
    the lines to judge the curve by, e.g. ``{"full model": 45.0, "uniform guess": 49152}``.
    """
    ppl = explore.beta_sweep(model, tokenizer, texts, groups, betas)
    rule_ppl = {m: explore.submodel_perplexity(model, tokenizer, texts, groups, method=m) for m in references}
    sizes = sorted({len(g) for g in groups})
    vlines = {f"anchor weight 0 (m={m})": 1 / (m - 1) for m in sizes if m > 1 and 1 / (m - 1) <= max(betas)}
    fig = viz.lines({"DBLF": (list(betas), ppl)},
                    title=title or f"untrained submodel of {len(groups)} fused layers (group sizes {sizes})",
                    xlabel="β", ylabel="perplexity (log scale)", logy=True,
                    hlines={m.upper(): v for m, v in rule_ppl.items()}, vlines=vlines, refs=refs)
    return {"betas": list(betas), "perplexity": ppl, "references": rule_ppl, "figure": fig}


def fusion_view(model: nn.Module, group: Sequence[int], beta: float = DEFAULT_BETA, method: str = "dblf") -> dict:
    """The representative of one group against its members, tensor by tensor.

    Returns ``weights`` (fusion weight per member), ``cosine`` and ``norm_ratio``
    (members x tensors, see :func:`devft_lab.teach.explore.fused_vs_members`), ``names`` and
    ``figure`` (cosine of the fused tensor with each member's).
    """
    m = len(group)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        w = fusion_weights(m, "r-one" if (method == "dblf" and beta == 0) else method, beta)
    view = explore.fused_vs_members(model, group, beta, method)
    labels = [f"layer {j} (w={wj:+.2f})" for j, wj in zip(group, w)]
    fig = viz.matrix(view["cosine"], labels, [viz.short_name(n) for n in view["names"]],
                     title=f"cos(fused, member), {method} β = {beta}", cmap="viridis", vmin=-1, vmax=1,
                     label="cosine")
    return {"weights": w, **view, "figure": fig}


# --------------------------------------------------------------------------- wiring
def _control(name: str, spec):
    import ipywidgets as W  # optional/heavy: ipywidgets

    if isinstance(spec, W.ValueWidget):
        return spec
    style = {"description_width": "initial"}
    if isinstance(spec, (list, tuple)) and len(spec) in (3, 4) and all(isinstance(v, (int, float)) for v in spec):
        lo, hi, step = spec[:3]
        value = spec[3] if len(spec) == 4 else lo
        if all(isinstance(v, int) for v in spec):
            return W.IntSlider(value=value, min=lo, max=hi, step=step, description=name, style=style,
                               continuous_update=False)
        return W.FloatSlider(value=value, min=lo, max=hi, step=step, description=name, style=style,
                             continuous_update=False)
    if isinstance(spec, (list, tuple)):  # options, or (label, value) pairs
        first = spec[0][1] if isinstance(spec[0], tuple) and len(spec[0]) == 2 else spec[0]
        return W.Dropdown(options=list(spec), value=first, description=name, style=style)
    raise TypeError(f"control {name!r}: give a widget, a list of options or (min, max, step[, value]).")


def interact(render: Callable[..., object], **controls) -> None:
    """Show ``controls`` and, below them, ``render(**values)``; redraw in place on every change.

    ``render`` returns a figure (or anything IPython can display, or a dict with a
    ``"figure"``). A control is an ipywidget, a list of options or (label, value) pairs (dropdown) or
    ``(min, max, step[, value])`` (slider). Example::

        interact(lambda capacity, beta: capacity_view(model, capacity, beta)["figure"],
                 capacity=(1, 30, 1, 8), beta=(0.0, 0.5, 0.05, 0.1))
    """
    import ipywidgets as W  # optional/heavy: ipywidgets
    from IPython.display import display  # optional/heavy: IPython

    ws = {k: _control(k, v) for k, v in controls.items()}

    def draw():
        out = render(**{k: w.value for k, w in ws.items()})
        return out["figure"] if isinstance(out, dict) else out

    display(W.HBox(list(ws.values())))
    handle = display(draw(), display_id=True)

    def on_change(_change):
        handle.update(draw())

    for w in ws.values():
        w.observe(on_change, names="value")


