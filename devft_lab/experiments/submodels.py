"""Build every stage's submodel of a model and measure it: ``python -m devft_lab.experiments.submodels``.

For each stage capacity L_s of the schedule: DGLG (spectral, on the base-weight layer
similarity), DBLF (beta), build the submodel, time the build, and measure perplexity on
:data:`HELDOUT_TEXTS`. Writes a JSON file and a Markdown table next to it.

    python -m devft_lab.experiments.submodels --model smollm2-135m --out results/submodels_smollm2.json
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
import warnings
from pathlib import Path

import torch

from devft_lab.core.evaluate import perplexity
from devft_lab.core.layers import num_layers
from devft_lab.core.models import load_model
from devft_lab.method.grouping import group_layers
from devft_lab.method.schedule import make_schedule
from devft_lab.method.similarity import layer_parameter_similarity
from devft_lab.method.submodel import build_submodel, default_lora_config

# 32 plain English sentences written for devft_lab (no licence attached; free to reuse).
HELDOUT_TEXTS: list[str] = [
    "The river runs past the old mill and into the lake beyond the village.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "She opened the window to let the cool morning air into the room.",
    "The library closes at six o'clock on weekdays and at noon on Saturdays.",
    "A triangle has three sides, and the sum of its angles is one hundred and eighty degrees.",
    "The children planted tomatoes, beans and carrots in the school garden.",
    "He missed the last train and had to walk home in the rain.",
    "The moon orbits the Earth about once every twenty-seven days.",
    "Bread is made from flour, water, salt and yeast.",
    "The museum has a large collection of paintings from the nineteenth century.",
    "Please remember to turn off the lights when you leave the office.",
    "The committee will meet next Tuesday to discuss the new budget.",
    "Most plants need sunlight, water and carbon dioxide to grow.",
    "The bridge was built in stone more than two hundred years ago.",
    "Our neighbours have a small brown dog that barks at the postman.",
    "The recipe asks for two eggs, a cup of sugar and a pinch of salt.",
    "Mountains in the north are covered with snow for most of the year.",
    "The teacher wrote the answer on the board and asked the class to copy it.",
    "A good map shows roads, rivers, towns and the height of the land.",
    "The ship left the harbour at dawn and reached the island by evening.",
    "Heavy rain caused the river to rise above its banks.",
    "The shop on the corner sells fresh fruit and vegetables every morning.",
    "Reading every day is one of the best ways to learn a new language.",
    "The Earth travels around the Sun once a year.",
    "After dinner the family sat by the fire and told stories.",
    "The farmer sold his apples at the market in the town square.",
    "A computer program is a list of instructions that a machine can follow.",
    "The old clock in the hall struck twelve as the guests arrived.",
    "Birds fly south in the autumn to find warmer weather.",
    "The doctor told him to rest for a week and drink plenty of water.",
    "The city council voted to build a new park near the station.",
    "Light travels much faster than sound, which is why we see lightning before we hear thunder.",
]


def run(model_name: str = "smollm2-135m", beta: float = 0.1, capacities: list[int] | None = None,
        num_stages: int = 4, growth: float = 2.0, grouping: str = "spectral", method: str = "dblf",
        seed: int = 0, device: str = "cpu", compare: tuple[str, ...] = ()) -> dict:
    """Measure every stage's submodel (build time, perplexity) and the layer similarity.

    ``compare``: other grouping rules (e.g. "even", "contiguous") measured the same way.
    """
    torch.manual_seed(seed)
    model, tok = load_model(model_name, device=device)
    L = num_layers(model)
    schedule = make_schedule(L, num_stages, growth, capacities)
    t0 = time.perf_counter()
    sim = layer_parameter_similarity(model)  # base weights only (no LoRA trained yet)
    sim_seconds = time.perf_counter() - t0
    lora_config = default_lora_config()

    def measure(rule: str) -> list[dict]:
        stages = []
        for stage in schedule:
            groups = group_layers(sim, L, stage.capacity, method=rule, seed=seed)
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # negative anchor weights: see min_fusion_weight
                sub = build_submodel(model, groups, beta=beta, method=method, lora_config=lora_config, seed=seed)
            build = time.perf_counter() - t0
            ppl = perplexity(sub.model, tok, HELDOUT_TEXTS)
            stages.append({"capacity": stage.capacity, "groups": groups, "perplexity": ppl,
                           "build_seconds": round(build, 3), "largest_group": max(map(len, groups)),
                           "min_fusion_weight": round(min(min(w) for w in sub.weights), 4),
                           "anchor_types": sub.types})
            print(f"[{rule} stage {stage.index + 1}] L_s={stage.capacity:3d} build {build:6.2f} s  "
                  f"perplexity {ppl:12.2f}", flush=True)
            del sub
        return stages

    stages = measure(grouping)
    others = {rule: measure(rule) for rule in compare if rule != grouping}
    full_ppl = perplexity(model, tok, HELDOUT_TEXTS)
    return {
        "model": model_name, "num_layers": L, "beta": beta, "fusion": method, "grouping": grouping,
        "similarity_view": "cosine of base weights (LoRA B = 0 at start)", "seed": seed,
        "lora": {"r": lora_config.r, "alpha": lora_config.lora_alpha,
                 "target_modules": sorted(lora_config.target_modules)},
        "device": device, "torch_threads": torch.get_num_threads(),
        "heldout": f"devft_lab.experiments.submodels.HELDOUT_TEXTS ({len(HELDOUT_TEXTS)} sentences)",
        "full_model_perplexity": full_ppl, "similarity_seconds": round(sim_seconds, 3),
        "stages": stages, "compare": others, "similarity": [[round(float(x), 6) for x in row] for row in sim],
    }


def markdown(result: dict) -> str:
    """A short Markdown table of a :func:`run` result."""
    lines = [
        f"# Stage submodels of {result['model']} ({result['num_layers']} layers)", "",
        f"Command: `{result['command']}`", "",
        f"Grouping: {result['grouping']} DGLG on the {result['similarity_view']}; fusion: "
        f"{result['fusion']} beta={result['beta']}; no training (LoRA B = 0). "
        f"Perplexity on {result['heldout']}; full model: {result['full_model_perplexity']:.2f}. "
        f"Similarity matrix: {result['similarity_seconds']} s.", "",
        "| grouping | stage | capacity | build (s) | perplexity | largest group | min fusion weight | groups |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rule, stages in {result["grouping"]: result["stages"], **result.get("compare", {})}.items():
        for i, s in enumerate(stages, start=1):
            groups = " ".join(f"{g[0]}-{g[-1]}" if g == list(range(g[0], g[-1] + 1))
                              else "{" + ",".join(map(str, g)) + "}" for g in s["groups"])
            lines.append(f"| {rule} | {i} | {s['capacity']} | {s['build_seconds']:.2f} | {s['perplexity']:.4g} | "
                         f"{s['largest_group']} | {s['min_fusion_weight']} | {groups} |")
    lines += ["", "Notes:", "", *(f"- {n}" for n in notes(result))]
    return "\n".join(lines) + "\n"


ORTHOGONAL = 0.1  # |cosine| below this for every pair of layers: "nearly orthogonal"


def similarity_note(sim: torch.Tensor) -> str:
    """One sentence on the off-diagonal layer similarities, worded from their values."""
    off = sim[~torch.eye(len(sim), dtype=torch.bool)]
    lo, hi, mean = float(off.min()), float(off.max()), float(off.mean())
    text = f"Off-diagonal layer similarities lie in [{lo:.4f}, {hi:.4f}] (mean {mean:.4f}): "
    if max(abs(lo), abs(hi)) < ORTHOGONAL:
        return text + ("the concatenated base weights of two different layers are nearly orthogonal, so W is "
                       "almost flat and the grouping rests on small differences.")
    parts = []
    if lo < 0:
        parts.append(f"some pairs point in opposite directions (down to {lo:.2f}; devft.affinity decides how "
                     "negative values enter the graph)")
    if hi >= 0.5:
        parts.append(f"some pairs are strongly aligned (up to {hi:.2f})")
    elif hi >= ORTHOGONAL:
        parts.append(f"the most similar pairs reach {hi:.2f}")
    return text + "; ".join(parts) + "."


def notes(result: dict) -> list[str]:
    """The notes under the table, each derived from the measured numbers."""
    out = [similarity_note(torch.tensor(result["similarity"]))]
    L, stages = result["num_layers"], result["stages"]
    first = stages[0]
    if first["largest_group"] > L / 2:
        out.append(f"Stage 1 puts {first['largest_group']} of {L} layers into one group: the spectral embedding "
                   "isolates a few outlier layers and leaves one large group.")
    negative = [s for s in stages if s["min_fusion_weight"] < 0]
    if negative and result["fusion"] == "dblf":
        beta = result["beta"]
        out.append(f"DBLF gives a group of m layers the anchor weight 1 - beta (m - 1), negative for m > "
                   f"{1 + 1 / beta:.4g} at beta {beta}: stage(s) "
                   f"{', '.join(str(stages.index(s) + 1) for s in negative)} extrapolate away from the anchor "
                   "(column 'min fusion weight').")
    full = result["full_model_perplexity"]
    worst = max(s["perplexity"] for s in stages)
    out.append(f"Before any training the fused submodels reach perplexity up to {worst:.4g} against {full:.4g} "
               "for the full model" + (f" ({worst / full:.3g}x)." if full > 0 else "."))
    last = stages[-1]
    if last["capacity"] == L:
        same = abs(last["perplexity"] - full) <= 1e-3 * max(1.0, full)
        out.append("The last stage (singleton groups) " + ("equals the full model (same perplexity)." if same else
                   f"differs from the full model ({last['perplexity']:.4g} vs {full:.4g}): check the fusion."))
    return out


def default_out(model_name: str) -> Path:
    """``results/submodels_<model>.json``, the model's preset name, file stem or hub id made a file name."""
    p = Path(model_name)
    base = p.stem if model_name.startswith((".", "/", "~")) or p.suffix == ".gguf" else model_name
    return Path("results") / f"submodels_{re.sub(r'[^A-Za-z0-9._-]+', '_', base).strip('_')}.json"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m devft_lab.experiments.submodels", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--capacities", type=int, nargs="*", default=None, help="explicit schedule, e.g. 4 8 15 30")
    p.add_argument("--grouping", default="spectral", choices=["spectral", "contiguous", "even", "random"])
    p.add_argument("--fusion", default="dblf", choices=["dblf", "laco", "mean", "r-one", "sum"])
    p.add_argument("--compare", nargs="*", default=[], choices=["spectral", "contiguous", "even", "random"],
                   help="other grouping rules to measure the same way")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="JSON file (default: results/submodels_<model>.json)")
    args = p.parse_args(argv)
    result = {"command": "python -m devft_lab.experiments.submodels " + " ".join(map(shlex.quote, argv or sys.argv[1:]))}
    result.update(run(args.model, args.beta, args.capacities, grouping=args.grouping, method=args.fusion,
                      seed=args.seed, device=args.device, compare=tuple(args.compare)))
    out = Path(args.out) if args.out else default_out(args.model)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
