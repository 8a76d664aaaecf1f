"""Plots for the notebooks. Every function returns a :class:`matplotlib.figure.Figure`.

Figures are built without pyplot (no global state, nothing shown twice): a notebook shows
one by making it the cell's last expression or with ``display(fig)``. Sizes and the dpi
are modest so that committed notebooks stay small.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from devft_lab.core.tables import markdown_table

DPI = 80
GROUP_CMAP = "tab20"


def _fig(w: float = 6.4, h: float = 3.6, ncols: int = 1, nrows: int = 1, **kw):
    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _np(x) -> np.ndarray:
    try:
        import torch  # optional/heavy: torch

        if isinstance(x, torch.Tensor):
            return x.detach().cpu().double().numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(x, dtype=float)


def group_labels(groups: Sequence[Sequence[int]], num_layers: int | None = None) -> np.ndarray:
    """Group id of every layer (length L)."""
    L = num_layers or sum(map(len, groups))
    out = np.full(L, -1)
    for g, members in enumerate(groups):
        out[list(members)] = g
    return out


def describe_groups(groups: Sequence[Sequence[int]]) -> str:
    """Compact text: contiguous runs as ``a-b``, others as ``{i,j,k}``."""
    parts = []
    for g in groups:
        g = list(g)
        parts.append(f"{g[0]}-{g[-1]}" if g == list(range(g[0], g[-1] + 1)) else "{" + ",".join(map(str, g)) + "}")
    return " ".join(parts)


def heatmap(matrix, title: str = "", groups: Sequence[Sequence[int]] | None = None, cmap: str = "viridis",
            vmin: float | None = None, vmax: float | None = None, label: str = "", ax=None,
            xlabel: str = "layer", ylabel: str = "layer", ticklabels: Sequence[str] | None = None) -> Figure:
    """A square matrix (layer x layer or client x client) with optional group boundaries.

    With ``groups``, a coloured strip on the left and top gives every layer's group and thin
    lines separate neighbours that belong to different groups.
    """
    m = _np(matrix)
    if ax is None:
        fig, axes = _fig(4.6, 3.9)
        ax = axes[0, 0]
    else:
        fig = ax.figure
    im = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.85, label=label)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ticklabels is not None:
        ax.set_xticks(range(len(ticklabels)), ticklabels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(ticklabels)), ticklabels, fontsize=8)
    if groups is not None:
        lab = group_labels(groups, len(m))
        n = len(m)
        colors = _group_colors(len(groups))
        for i in range(n):
            ax.add_patch(_rect(-1.6, i - 0.5, 0.9, 1, colors[lab[i]]))
            ax.add_patch(_rect(i - 0.5, -1.6, 1, 0.9, colors[lab[i]]))
            if i and lab[i] != lab[i - 1]:
                ax.axhline(i - 0.5, color="white", lw=0.8)
                ax.axvline(i - 0.5, color="white", lw=0.8)
        ax.set_xlim(-1.7, n - 0.5)
        ax.set_ylim(n - 0.5, -1.7)
    return fig


def _rect(x, y, w, h, color):
    return Rectangle((x, y), w, h, color=color, clip_on=False, lw=0)


def _group_colors(k: int) -> list:
    cmap = matplotlib.colormaps[GROUP_CMAP]
    return [cmap(g % 20) for g in range(max(k, 1))]


def heatmaps(matrices: Mapping[str, object], groups: Sequence[Sequence[int]] | None = None,
             cmaps: Mapping[str, str] | None = None, vranges: Mapping[str, tuple] | None = None,
             ticklabels: Sequence[str] | None = None, xlabel: str = "layer", ylabel: str = "layer",
             suptitle: str = "") -> Figure:
    """Several heatmaps side by side (e.g. cosine and sign-conflict rate).

    ``vranges[title]`` is ``(vmin, vmax)`` or ``"sym"`` (symmetric around 0, from the data).
    """
    k = len(matrices)
    fig, axes = _fig(4.3 * k, 3.8, ncols=k)
    for ax, (title, m) in zip(axes[0], matrices.items()):
        vr = (vranges or {}).get(title, (None, None))
        if vr == "sym":  # symmetric around 0, from the data (NaN-safe)
            lim = float(np.nanmax(np.abs(_np(m)))) or 1.0
            vr = (-lim, lim)
        vmin, vmax = vr
        heatmap(m, title, groups, (cmaps or {}).get(title, "viridis"), vmin, vmax, ax=ax,
                ticklabels=ticklabels, xlabel=xlabel, ylabel=ylabel)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    return fig


def groups_strip(rows: Mapping[str, Sequence[Sequence[int]]], num_layers: int, title: str = "",
                 anchors: Mapping[str, Sequence[int]] | None = None) -> Figure:
    """One row per grouping (e.g. per stage or per rule), one column per layer, colour = group.

    The anchor of every group (its first layer unless ``anchors`` says otherwise) gets a dot.
    """
    names = list(rows)
    fig, axes = _fig(max(6.0, 0.22 * num_layers + 2), 0.45 * len(names) + 1.0)
    ax = axes[0, 0]
    for r, name in enumerate(names):
        groups = rows[name]
        colors = _group_colors(len(groups))
        lab = group_labels(groups, num_layers)
        for i in range(num_layers):
            ax.add_patch(_rect(i, r + 0.1, 0.95, 0.8, colors[lab[i]]))
        anc = (anchors or {}).get(name, [g[0] for g in groups])
        ax.scatter([a + 0.475 for a in anc], [r + 0.5] * len(anc), s=10, c="k", zorder=3)
    ax.set_xlim(0, num_layers)
    ax.set_ylim(len(names), 0)
    ax.set_yticks([r + 0.5 for r in range(len(names))], names)
    step = 1 if num_layers <= 16 else 5
    ax.set_xticks([i + 0.475 for i in range(0, num_layers, step)], range(0, num_layers, step))
    ax.set_xlabel("layer of the full model (dot = anchor)")
    ax.set_title(title, fontsize=10)
    for s in ("top", "right", "left"):
        ax.spines[s].set_visible(False)
    return fig


def capacity_bars(capacities: Sequence[int], num_layers: int, title: str = "Stage capacities L_s") -> Figure:
    """Bars of layers per stage against the full depth L."""
    fig, axes = _fig(4.8, 2.8)
    ax = axes[0, 0]
    x = np.arange(1, len(capacities) + 1)
    ax.bar(x, capacities, color="tab:blue")
    ax.axhline(num_layers, color="k", ls="--", lw=1, label=f"L = {num_layers}")
    for xi, c in zip(x, capacities):
        ax.text(xi, c, str(c), ha="center", va="bottom", fontsize=9)
    ax.set_xticks(x, [f"stage {i}" for i in x])
    ax.set_ylabel("layers in the submodel")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    return fig


def relative_bars(rows: Mapping[str, Sequence[float]], labels: Sequence[str], title: str = "",
                  ylabel: str = "fraction of the full model") -> Figure:
    """Grouped bars: one group per label (stage), one bar per series (params, bytes, FLOPs...)."""
    fig, axes = _fig(6.0, 3.0)
    ax = axes[0, 0]
    k = len(rows)
    width = 0.8 / max(k, 1)
    x = np.arange(len(labels))
    for s, (name, vals) in enumerate(rows.items()):
        ax.bar(x + (s - (k - 1) / 2) * width, vals, width, label=name)
    ax.set_xticks(x, labels)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return fig


# Reference lines a reader judges a loss or perplexity against (the full model, uniform guessing):
# black and grey, so they stand apart from the coloured curves and their dashed companions.
REFERENCE_STYLES = ({"color": "0.35", "ls": "-", "lw": 1.2}, {"color": "k", "ls": "-.", "lw": 1.2},
                    {"color": "0.6", "ls": ":", "lw": 1.5})


def reference_lines(ax, refs: Mapping[str, float] | None) -> None:
    """Draw labelled horizontal reference lines (e.g. ``{"full model": 45, "uniform guess": 49152}``)."""
    for k, (name, v) in enumerate((refs or {}).items()):
        ax.axhline(v, label=name, **REFERENCE_STYLES[k % len(REFERENCE_STYLES)])


def lines(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], title: str = "", xlabel: str = "",
          ylabel: str = "", logy: bool = False, hlines: Mapping[str, float] | None = None,
          vlines: Mapping[str, float] | None = None, markers: bool = True,
          refs: Mapping[str, float] | None = None) -> Figure:
    """Curves ``{name: (x, y)}`` with optional labelled lines: ``hlines`` (dashed, coloured),
    ``vlines`` (dotted) and ``refs``, the references to judge the curves by (black and grey, see
    :func:`reference_lines`)."""
    fig, axes = _fig(5.6, 3.4)
    ax = axes[0, 0]
    for name, (x, y) in series.items():
        ax.plot(x, y, marker="o" if markers else None, ms=4, label=name)
    for k, (name, v) in enumerate((hlines or {}).items()):
        ax.axhline(v, ls="--", lw=1, color=f"C{k + len(series)}", label=name)
    reference_lines(ax, refs)
    for k, (name, v) in enumerate((vlines or {}).items()):
        ax.axvline(v, ls=":", lw=1, color="gray")
        ax.text(v, 0.97, name, transform=ax.get_xaxis_transform(), fontsize=7, ha="right", va="top",
                rotation=90, color="gray")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def bars(values: Sequence[float], labels: Sequence | None = None, title: str = "", xlabel: str = "layer",
         ylabel: str = "", groups: Sequence[Sequence[int]] | None = None, logy: bool = False,
         hline: float | None = None) -> Figure:
    """Simple bar chart (e.g. Block Influence per layer), coloured by group when given."""
    v = _np(values)
    fig, axes = _fig(max(5.0, 0.2 * len(v) + 2), 2.8)
    ax = axes[0, 0]
    x = np.arange(len(v))
    colors = None
    if groups is not None:
        cols = _group_colors(len(groups))
        colors = [cols[g] for g in group_labels(groups, len(v))]
    ax.bar(x, v, color=colors or "tab:blue")
    if hline is not None:
        ax.axhline(hline, color="k", lw=0.8)
    if labels is not None:
        ax.set_xticks(x, labels, rotation=45 if len(v) > 12 else 0, fontsize=8)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return fig


def embedding_scatter(embedding, groups: Sequence[Sequence[int]], eigenvalues=None, title: str = "") -> Figure:
    """The spectral embedding's rows (layers) on its 2nd and 3rd coordinates, coloured by group;
    beside it the Laplacian's smallest eigenvalues."""
    e = _np(embedding)
    fig, axes = _fig(9.0, 3.6, ncols=2 if eigenvalues is not None else 1)
    ax = axes[0, 0]
    lab = group_labels(groups, len(e))
    cols = _group_colors(len(groups))
    xs = e[:, 1] if e.shape[1] > 1 else e[:, 0]
    ys = e[:, 2] if e.shape[1] > 2 else np.zeros(len(e))
    ax.scatter(xs, ys, c=[cols[g] for g in lab], s=40, edgecolors="k", linewidths=0.4)
    for i, (x, y) in enumerate(zip(xs, ys)):
        ax.annotate(str(i), (x, y), fontsize=7, xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel("eigenvector 2")
    ax.set_ylabel("eigenvector 3")
    ax.set_title(title or "spectral embedding (colour = group)", fontsize=10)
    if eigenvalues is not None:
        ev = _np(eigenvalues)
        ax2 = axes[0, 1]
        n = min(len(ev), 16)
        ax2.plot(range(1, n + 1), ev[:n], marker="o", ms=4)
        ax2.axvline(len(groups) + 0.5, ls=":", color="gray")
        ax2.set_xlabel("index")
        ax2.set_ylabel("eigenvalue of D - W")
        ax2.set_title(f"smallest eigenvalues (k = {len(groups)} kept)", fontsize=10)
        ax2.grid(alpha=0.3)
    return fig


def anchor_weights(betas: Sequence[float], sizes: Sequence[int], beta_mark: float | None = None) -> Figure:
    """DBLF's anchor weight 1 - beta (m - 1) against beta, one line per group size m."""
    fig, axes = _fig(5.6, 3.4)
    ax = axes[0, 0]
    b = np.asarray(betas, dtype=float)
    for m in sizes:
        ax.plot(b, 1 - b * (m - 1), label=f"m = {m}")
    ax.axhline(0, color="k", lw=0.8)
    ax.axhspan(ax.get_ylim()[0], 0, color="tab:red", alpha=0.08)
    if beta_mark is not None:
        ax.axvline(beta_mark, ls=":", color="gray")
        ax.text(beta_mark, 1.0, f"β = {beta_mark}", transform=ax.get_xaxis_transform(), fontsize=8,
                ha="center", va="bottom")
    ax.set_xlabel("β")
    ax.set_ylabel("anchor weight 1 - β(m-1)")
    ax.set_title("DBLF: the anchor's weight; red = extrapolation", fontsize=10)
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    return fig


def weight_bars(weights: Sequence[Sequence[float]], groups: Sequence[Sequence[int]], title: str = "") -> Figure:
    """Fusion weight of every layer inside its group (bars at the layer's position)."""
    L = sum(map(len, groups))
    w = np.zeros(L)
    for g, members in enumerate(groups):
        for j, i in enumerate(members):
            w[i] = weights[g][j]
    fig = bars(w, title=title or "fusion weight of each layer in its representative", ylabel="weight",
               groups=groups, hline=0.0)
    return fig


def member_images(tensors: Sequence, labels: Sequence[str], title: str = "", crop: int = 48) -> Figure:
    """Top-left ``crop`` x ``crop`` block of a weight matrix for each member and the fused layer,
    on one shared symmetric colour scale."""
    arrs = [_np(t)[:crop, :crop] for t in tensors]
    lim = max(float(np.abs(a).max()) for a in arrs) or 1.0
    fig, axes = _fig(1.9 * len(arrs) + 0.8, 2.4, ncols=len(arrs))
    im = None
    for ax, a, lab in zip(axes[0], arrs, labels):
        im = ax.imshow(a, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set_title(lab, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def matrix(values, row_labels: Sequence[str], col_labels: Sequence[str], title: str = "", cmap: str = "magma",
           fmt: str = "{:.2f}", label: str = "", vmin: float | None = None, vmax: float | None = None) -> Figure:
    """A small labelled rectangular heatmap with the numbers written in (e.g. members x tensors)."""
    v = _np(values)
    fig, axes = _fig(0.75 * v.shape[1] + 2.2, 0.4 * v.shape[0] + 1.6)
    ax = axes[0, 0]
    im = ax.imshow(v, cmap=cmap, aspect="auto", vmin=vmin, vmax=vmax)
    fig.colorbar(im, ax=ax, label=label)
    ax.set_xticks(range(v.shape[1]), col_labels, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(v.shape[0]), row_labels, fontsize=8)
    lo, hi = np.nanmin(v), np.nanmax(v)
    for (r, c), x in np.ndenumerate(v):
        dark = (x - lo) / (hi - lo + 1e-12) < 0.5
        ax.text(c, r, fmt.format(x), ha="center", va="center", fontsize=7, color="w" if dark else "k")
    ax.set_title(title, fontsize=10)
    return fig


def histogram(values, title: str = "", xlabel: str = "", bins: int = 40) -> Figure:
    """Histogram of values (e.g. off-diagonal similarities)."""
    fig, axes = _fig(4.8, 2.8)
    ax = axes[0, 0]
    ax.hist(_np(values).ravel(), bins=bins, color="tab:blue")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title, fontsize=10)
    return fig


def short_name(name: str) -> str:
    """``self_attn.q_proj.weight`` -> ``q_proj``; ``input_layernorm.weight`` -> ``input_ln``."""
    n = name.replace(".weight", "").split(".")[-1]
    return n.replace("post_attention_layernorm", "post_attn_ln").replace("input_layernorm", "input_ln")


def table(rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None, floatfmt: str = "{:.4g}"):
    """A Markdown table (IPython ``Markdown`` object) from a list of dicts."""
    from IPython.display import Markdown  # optional/heavy: IPython

    cols = list(columns or (rows[0].keys() if rows else []))

    def cell(x):
        if isinstance(x, float):
            return floatfmt.format(x)
        return str(x)

    return Markdown("\n".join(markdown_table(cols, [[cell(r.get(c, "")) for c in cols] for r in rows])))


def off_diagonal(matrix) -> np.ndarray:
    """A copy with the diagonal set to NaN (drawn blank), so the colour scale shows the rest."""
    m = _np(matrix).copy()
    np.fill_diagonal(m, np.nan)
    return m
