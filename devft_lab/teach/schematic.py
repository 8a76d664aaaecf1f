"""DevFT's stage schedule as one picture: layers -> groups -> fused submodel -> rounds -> copy back.

One panel per stage s (the paper's Algorithm 1, read left to right):

1. the full model's L layers as small boxes, coloured by their DGLG group
   (grey: a layer alone in its group, kept as it is);
2. lines from every layer to its group's representative: DBLF fuses each group into one layer,
   ``rep = theta_anchor + beta * sum_{j in group} (theta_j - theta_anchor)``; the L_s
   representatives are the stage's submodel (``xm``: fused from m layers);
3. the stage's R_s federated rounds (FedAvg of the submodel's LoRA);
4. an arrow to the next stage: each representative's trained LoRA is copied back into every
   member of its group, and the next stage regroups the updated model.

``schedule_diagram(stages, num_layers)`` draws it from plain data (``{capacity, groups,
rounds}`` per stage). ``stages_from`` reads the groups from a committed file
(``results/submodels_smollm2.json``: DGLG's groups of SmolLM2's 30 layers at every stage)
and the rounds from a shipped config. The README's figure::

    python -m devft_lab.teach.schematic --out docs/figures/schedule.png \\
        [--from results/submodels_smollm2.json] [--config demo]
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
import matplotlib
from matplotlib.patches import ConnectionPatch, Rectangle

from devft_lab.method.grouping import validate_groups
from devft_lab.runner.config import load_config, stage_rounds

SINGLETON_COLOR = "#d4d4d4"  # a layer alone in its group: the submodel runs it unchanged
# one colour per multi-layer group of a stage: tab10 without its grey, then Set2 and Dark2 (23 colours)
PALETTE = ("tab10", "Set2", "Dark2")
DEFAULT_SOURCE = "results/submodels_smollm2.json"
DEFAULT_CONFIG = "demo"

# panel geometry (data units of each stage's axes): the full model's layers on the left, the
# fused submodel on the right, the copy-back arrow leaving on the far right
_LAYER_X, _REP_X, _BOX_W, _PANEL_W = 1.0, 6.0, 2.0, 10.6


def _group_colors(groups: Sequence[Sequence[int]]) -> list:
    """One colour per group: a palette colour per multi-layer group (in anchor order), grey for singletons."""
    palette = [c for name in PALETTE for c in matplotlib.colormaps[name].colors
               if not (c[0] == c[1] == c[2])]  # greys are for singletons
    out, k = [], 0
    for g in groups:
        if len(g) == 1:
            out.append(SINGLETON_COLOR)
        else:
            out.append(palette[k % len(palette)])
            k += 1
    return out


def check_stages(stages: Sequence[Mapping[str, Any]], num_layers: int) -> list[dict[str, Any]]:
    """The stages with their groups in canonical order (members sorted, groups by anchor = first
    layer); ValueError naming the stage and the problem when a stage is not a valid DevFT stage:
    ``capacity`` groups covering each of the ``num_layers`` layers exactly once, ``rounds`` >= 1."""
    if not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive whole number (the model's decoder layers), got {num_layers!r}.")
    if not stages:
        raise ValueError("stages is empty: give one {capacity, groups, rounds} per stage.")
    out = []
    for s, st in enumerate(stages, start=1):
        missing = [k for k in ("capacity", "groups", "rounds") if k not in st]
        if missing:
            raise ValueError(f"stage {s} has no {', '.join(repr(k) for k in missing)}: every stage needs "
                             f"'capacity', 'groups' and 'rounds'.")
        cap, groups, rounds = st["capacity"], st["groups"], st["rounds"]
        try:
            validate_groups(groups, num_layers, cap)
        except ValueError as e:
            raise ValueError(f"stage {s} (capacity {cap}): {e} Fix the 'groups' of stage {s}.") from None
        if not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"stage {s}: 'rounds' must be a whole number >= 1 (R_s federated rounds), got {rounds!r}.")
        canon = sorted((sorted(int(i) for i in g) for g in groups), key=lambda g: g[0])
        out.append({"capacity": int(cap), "groups": canon, "rounds": rounds})
    return out


def schedule_diagram(stages: Sequence[Mapping[str, Any]], num_layers: int, title: str | None = None,
                     note: str | None = None) -> Figure:
    """One panel per stage: the ``num_layers`` layers coloured by group, their lines into the
    fused submodel of ``capacity`` boxes, the stage's ``rounds`` (FedAvg of LoRA), and the
    copy-back arrow to the next stage. ``stages``: ``[{"capacity", "groups", "rounds"}, ...]``
    (groups: lists of layer indices, each layer in exactly one group; ValueError otherwise).

    Layer boxes carry the gid ``layer:<i>:group:<g>``, representative boxes ``rep:<g>``
    (g: the group's place in anchor order), so a test or a reader can find them."""
    stages = check_stages(stages, num_layers)
    L, n = num_layers, len(stages)
    fig = Figure(figsize=(2.9 * n + 0.3, 5.8), dpi=100, layout="constrained")
    fig.get_layout_engine().set(w_pad=0.02, wspace=0.0)
    axes = fig.subplots(1, n, squeeze=False)[0]
    mid = (L - 1) / 2 + 0.5
    for s, (ax, st) in enumerate(zip(axes, stages), start=1):
        groups, cap, rounds = st["groups"], st["capacity"], st["rounds"]
        colors = _group_colors(groups)
        off = (L - cap) / 2  # the submodel is centred beside the full stack
        for g, members in enumerate(groups):
            rep_y = off + g + 0.5
            for i in members:
                box = Rectangle((_LAYER_X, i + 0.08), _BOX_W, 0.84, facecolor=colors[g], edgecolor="none")
                box.set_gid(f"layer:{i}:group:{g}")
                ax.add_patch(box)
                ax.plot([_LAYER_X + _BOX_W + 0.05, _REP_X - 0.05], [i + 0.5, rep_y],
                        color=colors[g] if len(members) > 1 else "#a0a0a0", lw=0.7, alpha=0.9)
            rep = Rectangle((_REP_X, off + g + 0.08), _BOX_W, 0.84, facecolor=colors[g], edgecolor="none")
            rep.set_gid(f"rep:{g}")
            ax.add_patch(rep)
            if len(members) > 1:
                ax.text(_REP_X + _BOX_W / 2, rep_y, f"×{len(members)}", fontsize=8, va="center", ha="center",
                        color="white", fontweight="bold")
        ax.text(_LAYER_X + _BOX_W / 2, L + 0.4, f"{L} layers", ha="center", va="bottom", fontsize=10)
        ax.text(_LAYER_X - 0.15, 0.5, "0", ha="right", va="center", fontsize=8, color="#555555")
        ax.text(_LAYER_X - 0.15, L - 0.5, str(L - 1), ha="right", va="center", fontsize=8, color="#555555")
        last = all(len(g) == 1 for g in groups)  # one layer per group: the submodel is the full model
        ax.text(_REP_X + _BOX_W / 2, off + cap + 0.4, "full model" if last else f"{cap} fused", ha="center",
                va="bottom", fontsize=10)
        plural = "s" if rounds != 1 else ""
        ax.text(_PANEL_W / 2, -0.7, f"$R_{s}$ = {rounds} federated round{plural}\n(FedAvg of LoRA)",
                ha="center", va="top", fontsize=10)
        ax.set_title(f"stage {s}: $L_{s}$ = {cap}", fontsize=13)
        if s < n:  # copy back into every member, then the next stage regroups
            ax.text(_PANEL_W - 0.05, mid + 1.0, "copy back\nto every\nmember,\nregroup", ha="right", va="bottom",
                    fontsize=9.5, color="#333333")
            arrow = ConnectionPatch(xyA=(_REP_X + _BOX_W + 1.3, mid), coordsA=ax.transData,
                                    xyB=(_LAYER_X - 0.1, mid), coordsB=axes[s].transData,
                                    arrowstyle="-|>", mutation_scale=14, lw=1.6, color="#333333")
            fig.add_artist(arrow)
        ax.set_xlim(0, _PANEL_W)
        ax.set_ylim(-3.6, L + 2.0)
        ax.axis("off")
    fig.suptitle(title or f"DevFT, stage by stage: {L} layers → groups → fused submodel → "
                          f"federated rounds → copy back", fontsize=13)
    if note:
        fig.supxlabel(note, fontsize=9, color="#555555")
    return fig


def stages_from(path: str | Path = DEFAULT_SOURCE, config: str | None = DEFAULT_CONFIG
                ) -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
    """``(stages, num_layers, info)`` from a committed stage file: a JSON object with ``stages``
    (each with ``capacity`` and ``groups``, optionally ``rounds``) and ``num_layers``, such as
    ``results/submodels_smollm2.json``. Rounds the file does not hold come from ``config``'s
    schedule (a shipped config name or YAML file, e.g. ``demo``). ``info`` holds the model name,
    β and the rounds' source, for a caption."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such stage file; give a JSON file with 'stages' and 'num_layers' "
                                f"(e.g. {DEFAULT_SOURCE}).") from None
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list) or "num_layers" not in data:
        raise ValueError(f"{path}: expected a JSON object with a 'stages' list and 'num_layers' "
                         f"(like {DEFAULT_SOURCE}).")
    stages = [dict(st) for st in data["stages"]]
    source = "the file"
    if any("rounds" not in st for st in stages):
        if config is None:
            raise ValueError(f"{path} holds no rounds per stage: name a config (e.g. config='demo') to take them from.")

        rounds = stage_rounds(load_config(config))
        if len(rounds) != len(stages):
            raise ValueError(f"config {config!r} has {len(rounds)} stages but {path} has {len(stages)}; "
                             f"pick a config with devft.stages = {len(stages)}.")
        for st, r in zip(stages, rounds):
            st.setdefault("rounds", int(r))
        source = f"config {config}"
    info = {"model": data.get("model", "?"), "beta": data.get("beta"), "grouping": data.get("grouping"),
            "rounds_from": source, "source": _shown_path(path)}
    return stages, int(data["num_layers"]), info


def _shown_path(path: Path) -> str:
    """``path`` from its repository's top folder when it is inside one (no machine paths in a caption)."""
    full = path.resolve()
    for top in full.parents:
        if (top / "pyproject.toml").is_file():
            return full.relative_to(top).as_posix()
    return path.as_posix()


def caption(info: Mapping[str, Any]) -> str:
    """The figure's source line: where the groups and the rounds come from."""
    beta = f", DBLF β = {info['beta']:g}" if info.get("beta") is not None else ""
    return (f"colour = group; grey = a layer alone in its group; ×m = a layer fused from m layers\n"
            f"groups: DGLG ({info.get('grouping') or 'spectral'}) on the base weights of {info['model']}{beta} "
            f"({info['source']}); rounds: {info['rounds_from']}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m devft_lab.teach.schematic", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="the PNG to write, e.g. docs/figures/schedule.png")
    p.add_argument("--from", dest="source", default=DEFAULT_SOURCE,
                   help=f"JSON file with 'stages' (capacity, groups[, rounds]) and 'num_layers' (default {DEFAULT_SOURCE})")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="config whose rounds per stage to show (default demo)")
    args = p.parse_args(argv)
    stages, L, info = stages_from(args.source, args.config)
    fig = schedule_diagram(stages, L, note=caption(info))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"wrote {out.as_posix()} ({out.stat().st_size / 1e3:.0f} KB): {len(stages)} stages of {info['model']}, "
          f"capacities {[st['capacity'] for st in stages]}, rounds {[st['rounds'] for st in stages]}")


if __name__ == "__main__":
    main()
