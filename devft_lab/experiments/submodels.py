"""Build every stage's submodel of a model and measure it: ``python -m devft_lab.experiments.submodels``.

For each stage capacity L_s of the schedule: DGLG (spectral, on the base-weight layer
similarity), DBLF (beta), build the submodel, time the build, and measure perplexity on
:data:`HELDOUT_TEXTS`. Writes a JSON file and a Markdown table next to it, with the facts the
numbers decide (:func:`facts`) and a link to a person's reading in ``readings/<name>.md`` beside
it when there is one.

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


def markdown(result: dict, written: Path | None = None) -> str:
    """A short Markdown table of a :func:`run` result; ``written`` (a person's reading in
    ``readings/`` beside the table) is linked."""
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
    f = facts(result)
    sim = f["similarity"]
    yes = {True: "yes", False: "no", None: "-"}
    rows = [["off-diagonal layer similarity: min, max (mean)", f"{sim['min']:.4f}, {sim['max']:.4f} ({sim['mean']:.4f})"],
            [f"every pair of layers nearly orthogonal (cosine within ±{ORTHOGONAL})", yes[f["nearly_orthogonal"]]],
            ["stage 1's largest group", f"{f['largest_first_group']} of {result['num_layers']} layers"],
            ["DBLF anchor weight 1 − β(m − 1) negative for groups of m >",
             "-" if f["negative_anchor_above"] is None else f"{f['negative_anchor_above']:.4g}"],
            ["stages with a negative fusion weight", ", ".join(map(str, f["extrapolating_stages"])) or "none"],
            ["largest perplexity before training / the full model's",
             f"{f['worst_perplexity']:.4g} / {result['full_model_perplexity']:.4g}"],
            ["the last stage has the full model's perplexity", yes[f["last_equals_full"]]]]
    lines += ["", "| what the numbers say | value |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows), "",
              "## Reading", "", f"Written by hand in [{written.as_posix()}](readings/{written.name}); regenerating "
              "the table leaves it as it is." if written else "No written reading yet."]
    return "\n".join(lines) + "\n"


ORTHOGONAL = 0.1  # |cosine| below this for every pair of layers: "nearly orthogonal"


def facts(result: dict) -> dict:
    """What the numbers of a :func:`run` result decide: the off-diagonal layer similarities' range and
    whether every pair is nearly orthogonal (:data:`ORTHOGONAL`), stage 1's largest group, the group
    size above which DBLF's anchor weight 1 - beta (m - 1) turns negative and the stages that have a
    negative weight (DBLF only), the largest perplexity before training, and whether the last stage,
    when it has every layer, has the full model's perplexity (None when it has not)."""
    sim = torch.tensor(result["similarity"])
    off = sim[~torch.eye(len(sim), dtype=torch.bool)]
    lo, hi = float(off.min()), float(off.max())
    stages, dblf = result["stages"], result["fusion"] == "dblf"
    full, last = result["full_model_perplexity"], stages[-1]
    return {"similarity": {"min": lo, "max": hi, "mean": float(off.mean())},
            "nearly_orthogonal": max(abs(lo), abs(hi)) < ORTHOGONAL,
            "largest_first_group": stages[0]["largest_group"],
            "negative_anchor_above": 1 + 1 / result["beta"] if dblf else None,
            "extrapolating_stages": [i + 1 for i, st in enumerate(stages) if dblf and st["min_fusion_weight"] < 0],
            "worst_perplexity": max(st["perplexity"] for st in stages),
            "last_equals_full": (abs(last["perplexity"] - full) <= 1e-3 * max(1.0, full)
                                 if last["capacity"] == result["num_layers"] else None)}


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
    written = out.parent / "readings" / f"{out.stem}.md"  # a person's reading: linked, never written here
    out.with_suffix(".md").write_text(markdown(result, written if written.exists() else None))
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
