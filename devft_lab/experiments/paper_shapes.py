"""Paper-shape efficiency without weights: each DevFT stage's cost for the paper's three models.

    python -m devft_lab.experiments.paper_shapes [--out results/paper_shapes]

The LLaMA2-7B, LLaMA3.1-8B and LLaMA2-13B shapes are built with transformers'
``LlamaConfig`` on torch's meta device (no download, no memory) and their parameters are
counted module by module. For every stage capacity ``k`` of the shipped paper configs
(``devft_lab/runner/configs/{llama2_7b,llama31_8b,llama2_13b}.yaml``: stages, LoRA r and
target modules) this computes, per client and round:

* LoRA parameters and bytes sent up and down: ``k`` layers' worth of the adapters
  (``r * (in + out)`` per target Linear; the server sends the fused adapters down, the
  client sends its trained ones up; the submodel's base weights are fused by the client
  from the base model it holds, so they are not sent);
* parameter memory of the stage's submodel: ``k`` decoder layers + embeddings + final norm
  + LM head, at bf16 (2 bytes) and as the paper loads it, INT4 decoder Linears (0.5 byte,
  quantisation constants not counted) with bf16 embeddings, norms and head;
* training FLOPs per token (:func:`devft_lab.fl.accounting.training_flops`): ``6 N`` and the
  LoRA estimate ``4 N + 6 N_lora``, ``N`` = the submodel's decoder layers + LM head;
* every ratio full / stage.

Writes ``OUT.json`` and ``OUT.md`` (the command, the table, the paper's first-stage claims
beside the computed ratios, and a link to a person's reading in ``readings/<OUT name>.md`` beside
``OUT`` when there is one).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from devft_lab.fl.accounting import training_flops
from devft_lab.method.schedule import stage_capacities
from devft_lab.core.layers import decoder_layers
from devft_lab.runner.config import load_config

#: The three shapes of the paper (public model cards): LlamaConfig keyword arguments.
PAPER_SHAPES: dict[str, dict] = {
    "llama2_7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, vocab_size=32000),
    "llama31_8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
    "llama2_13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                       num_attention_heads=40, num_key_value_heads=40, vocab_size=32000),
}

#: The paper's first-stage claims for LLaMA2-7B, one round (full model / stage 1).
PAPER_FIRST_STAGE = {"time": 10.3, "communication": 4.0, "memory": 4.0}

BF16 = 2
INT4 = 0.5


def llama_config(shape: str | dict, **overrides):
    """A ``LlamaConfig`` of one of :data:`PAPER_SHAPES` (or a dict of its arguments)."""
    from transformers import LlamaConfig  # optional/heavy: transformers

    kw = dict(PAPER_SHAPES[shape]) if isinstance(shape, str) else dict(shape)
    kw.update(overrides)
    return LlamaConfig(**kw)


def meta_model(config) -> nn.Module:
    """``LlamaForCausalLM(config)`` on the meta device: shapes only, no memory, no download."""
    from transformers import LlamaForCausalLM  # optional/heavy: transformers

    with torch.device("meta"):
        return LlamaForCausalLM(config)


@dataclass(frozen=True)
class ShapeCounts:
    """Parameter counts of a decoder-only model, split the way a DevFT stage uses them."""

    num_layers: int
    layer: int  # parameters of one decoder layer (all layers are the same shape)
    layer_linear: int  # of which in nn.Linear weights (what INT4 quantises)
    embed: int
    head: int  # 0 when the head is tied to the embeddings
    norm: int  # final norm
    lora_per_layer: int  # r * (in + out) summed over the target Linears of one layer

    @property
    def total(self) -> int:
        return self.num_layers * self.layer + self.embed + self.head + self.norm


def count_shape(model: nn.Module, r: int, target_modules: Sequence[str]) -> ShapeCounts:
    """Count a (meta) ``*ForCausalLM`` model's parts and one layer's LoRA at rank ``r``."""
    layers = decoder_layers(model)
    sizes = {sum(p.numel() for p in layer.parameters()) for layer in layers}
    if len(sizes) != 1:
        raise ValueError(f"decoder layers differ in size ({sorted(sizes)}); count them one by one.")
    layer0 = layers[0]
    linear = sum(m.weight.numel() for m in layer0.modules() if isinstance(m, nn.Linear))
    targets = set(target_modules)
    lora = sum(r * (m.in_features + m.out_features) for name, m in layer0.named_modules()
               if isinstance(m, nn.Linear) and name.split(".")[-1] in targets)
    if lora == 0:
        raise ValueError(f"no Linear of a decoder layer matches target_modules {sorted(targets)}.")
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    inner = model.model
    norm = sum(p.numel() for p in inner.norm.parameters())
    return ShapeCounts(num_layers=len(layers), layer=sizes.pop(), layer_linear=linear, embed=emb.numel(),
                       head=0 if head is emb else head.numel(), norm=norm, lora_per_layer=lora)


def stage_cost(c: ShapeCounts, k: int, lora_bytes_per_param: int = 4) -> dict:
    """One client's cost of one round of a ``k``-layer stage (LoRA on all ``k`` layers)."""
    lora = k * c.lora_per_layer
    n_path = k * c.layer + c.norm + (c.head or c.embed)  # the head runs on every token; lookups are free
    params = k * c.layer + c.embed + c.head + c.norm
    int4 = (k * c.layer_linear * INT4 + (k * (c.layer - c.layer_linear) + c.embed + c.head + c.norm) * BF16)
    return {
        "layers": k,
        "lora_params": lora,
        "lora_up_bytes": lora * lora_bytes_per_param,
        "lora_down_bytes": lora * lora_bytes_per_param,
        "submodel_params": params,
        "param_bytes_bf16": params * BF16,
        "param_bytes_int4": int(int4),
        "flops_per_token_6n": training_flops(n_path, 1, lora),
        "flops_per_token_lora": training_flops(n_path, 1, lora, lora_only=True),
    }


RATIO_KEYS = ("layers", "lora_up_bytes", "param_bytes_bf16", "param_bytes_int4", "flops_per_token_6n",
              "flops_per_token_lora")


def with_ratios(rows: list[dict]) -> list[dict]:
    """Each row plus ``ratio_<key>`` = full stage's value / this stage's (the last row is the full model)."""
    full = rows[-1]
    return [{**r, **{f"ratio_{k}": full[k] / r[k] for k in RATIO_KEYS}} for r in rows]


def shape_report(name: str, lora_bytes_per_param: int = 4) -> dict:
    """Counts and per-stage costs of one paper shape, schedule and LoRA from its shipped config."""
    cfg = load_config(name)
    model = meta_model(llama_config(name))
    counts = count_shape(model, cfg.lora.r, cfg.lora.target_modules)
    caps = list(cfg.devft.capacities) if cfg.devft.capacities else stage_capacities(
        counts.num_layers, cfg.devft.stages, cfg.devft.growth)
    if caps != stage_capacities(counts.num_layers, cfg.devft.stages, cfg.devft.growth):
        raise ValueError(f"{name}: config capacities {caps} differ from the schedule's rule.")
    rows = with_ratios([stage_cost(counts, k, lora_bytes_per_param) for k in caps])
    full = rows[-1]
    seq, d = cfg.train.seq_len, model.config.hidden_size
    # QK^T and AV: 2 * 2 * seq * d FLOPs per token and layer forward (no causal halving), over 2 N
    attn_share = 4 * seq * d * counts.num_layers / (2 * (full["flops_per_token_6n"] / 6))
    return {"model": cfg.model.name, "config": f"devft_lab/runner/configs/{name}.yaml", "shape": PAPER_SHAPES[name],
            "lora": {"r": cfg.lora.r, "target_modules": list(cfg.lora.target_modules)},
            "counts": {**asdict(counts), "total": counts.total}, "capacities": caps, "stages": rows,
            "attention_score_flops_share": {"seq_len": seq, "share_of_weight_flops": attn_share}}


# --------------------------------------------------------------------------- output
def _gb(x: float) -> str:
    return f"{x / 1e9:.3f}"


def table(reports: dict[str, dict]) -> str:
    """Markdown table: one row per (model, stage)."""
    head = ("| model | layers | LoRA params | LoRA up = down (MB) | params | bf16 GB | INT4 GB | "
            "GFLOP/token 6N | GFLOP/token LoRA | full/stage: LoRA bytes | bf16 mem | INT4 mem | FLOPs 6N | FLOPs LoRA |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, rep in reports.items():
        for r in rep["stages"]:
            lines.append(
                f"| {name} | {r['layers']} | {r['lora_params'] / 1e6:.2f}M | {r['lora_up_bytes'] / 1e6:.1f} | "
                f"{r['submodel_params'] / 1e9:.3f}B | {_gb(r['param_bytes_bf16'])} | {_gb(r['param_bytes_int4'])} | "
                f"{r['flops_per_token_6n'] / 1e9:.2f} | {r['flops_per_token_lora'] / 1e9:.2f} | "
                f"{r['ratio_lora_up_bytes']:.2f}x | {r['ratio_param_bytes_bf16']:.2f}x | "
                f"{r['ratio_param_bytes_int4']:.2f}x | {r['ratio_flops_per_token_6n']:.2f}x | "
                f"{r['ratio_flops_per_token_lora']:.2f}x |")
    return "\n".join(lines)


def claims_table(rep7: dict) -> str:
    """The paper's LLaMA2-7B first-stage claims beside the computed stage-1 ratios."""
    s = rep7["stages"][0]
    p = PAPER_FIRST_STAGE
    return "\n".join([
        "| full / stage 1, LLaMA2-7B, one round | paper | computed here |",
        "|---|---|---|",
        f"| time | {p['time']}x | FLOPs/token {s['ratio_flops_per_token_6n']:.2f}x (6N), "
        f"{s['ratio_flops_per_token_lora']:.2f}x (4N + 6N_lora); decoder layers {s['ratio_layers']:.0f}x |",
        f"| communication | {p['communication']}x | LoRA up {s['ratio_lora_up_bytes']:.2f}x (down the same, "
        f"so up + down {s['ratio_lora_up_bytes']:.2f}x) |",
        f"| memory | {p['memory']}x | parameters at bf16 {s['ratio_param_bytes_bf16']:.2f}x, "
        f"INT4 layers + bf16 embeddings/head {s['ratio_param_bytes_int4']:.2f}x |",
    ])


def markdown(reports: dict[str, dict], command: str, written: Path | None = None) -> str:
    """The report; ``written`` (the path of a person's reading beside it, in ``readings/``) is linked."""
    rep7 = reports["llama2_7b"]
    a = rep7["attention_score_flops_share"]
    return "\n\n".join([
        "# Paper-shape efficiency per DevFT stage (meta device, no weights)",
        f"Command: `{command}`",
        "Shapes: LLaMA2-7B, LLaMA3.1-8B, LLaMA2-13B built with `LlamaConfig` on torch's meta device; "
        "stages, LoRA r and targets from the shipped configs (r = 32 on q_proj, v_proj; stages 4/8/16/32, "
        "5/10/20/40 for 13B). Per client and round; LoRA bytes at fp32 (PEFT keeps adapters in fp32 over a "
        "bf16 base; at bf16 they halve, ratios unchanged). FLOPs per token exclude attention scores "
        f"(at sequence length {a['seq_len']}, full model, {100 * a['share_of_weight_flops']:.1f}% of the weight "
        "FLOPs for LLaMA2-7B).",
        "## Per stage", table(reports),
        "## The paper's first-stage claims (LLaMA2-7B)", claims_table(rep7),
        "## Reading", (f"Written by hand in [{written.as_posix()}](readings/{written.name}); regenerating the "
                       "report leaves it as it is." if written else "No written reading yet."),
    ]) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="results/paper_shapes", help="writes OUT.json and OUT.md")
    args = ap.parse_args(argv)
    reports = {name: shape_report(name) for name in PAPER_SHAPES}
    command = "python -m devft_lab.experiments.paper_shapes" + (
        f" --out {args.out}" if args.out != "results/paper_shapes" else "")
    print(table(reports))
    print()
    print(claims_table(reports["llama2_7b"]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"command": command, "paper_first_stage_llama2_7b": PAPER_FIRST_STAGE, "models": reports}
    written = out.parent / "readings" / f"{out.name}.md"  # a person's reading: linked, never written here
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(reports, command, written if written.exists() else None))
    print(f"\nwrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
