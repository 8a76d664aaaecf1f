"""Local training: the plain-PyTorch loop a client (or a centralised fine-tune) runs.

The pieces, each small:

``encode_example``  an instruction example -> token ids and labels; the labels are
                    ``IGNORE`` on the prompt, so the loss is on the response (and EOS) only.
``collate``/``pack`` a micro-batch: right-padded rows, or (``pack``) the examples end to end in
                    one sequence, ``position_ids`` restarting at 0 for each one; attention gathers
                    them into rows where no example sees another
                    (:mod:`devft_lab.core.packed_attention`). The loss equals the padded batch's
                    within float tolerance.
``lm_loss``         summed cross-entropy over the response tokens. The LM head is applied
                    only where a label exists: with a 49k vocabulary the head dominates a
                    shallow submodel's cost, and prompt positions need no logits at all.
``Compute``         how the step runs fast (packed rows, autocast dtype, attention kernel,
                    compiled layers, the CPU dropout sampler), chosen once per run and applied in
                    one place, :func:`speedups`. None of it changes the method (see :class:`Compute`).
``train_local``     the loop: shuffled batches, forward, loss, backward, clip, AdamW step; a
                    fixed learning rate (the federated runtime sets it per round from a cosine
                    across rounds, :func:`round_lr`). With a :class:`Reparametrization` (C2A) the
                    optimiser steps tensors that *generate* the model's trainable ones.

No TRL, no Trainer: nothing here breaks when those APIs move.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import torch
import torch.nn.functional as F

from devft_lab.core.attention import attention_kernel
from devft_lab.core.compiled import compiled_layers
from devft_lab.core.device import AUTO, autocast_context
from devft_lab.core.dropout import SAMPLER, bits_dropout, mask_sampler
from devft_lab.core.layers import decoder_and_head
from devft_lab.core.packed_attention import rows_bias, rows_layout
from devft_lab.data.templates import PromptTemplate, get_template

IGNORE = -100
# How pack lays a micro-batch out (recorded in a run's meta.json): "flat_rows", one sequence for the
# linear layers and attention rows (the earlier layout: docs/performance.md#packing). The layout fixes
# the dropout masks' shapes, so it changes which masks a seed draws.
PACK_LAYOUT = "flat_rows"
ROWS_KEY = "rows_"  # prefix of pack's attention-layout entries in a batch (rows_index, rows_slot, rows_allowed)


# --------------------------------------------------------------------------- encoding
def encode_example(tokenizer, example: Mapping[str, Any], template: str | PromptTemplate = "chat",
                   seq_len: int = 256) -> dict[str, list[int]]:
    """Token ids and labels of one example (``labels = IGNORE`` on the prompt).

    The response is followed by the tokenizer's EOS. Too long: the response is kept (up to
    ``seq_len - 1`` tokens) and the prompt is cut from the left, so the model still sees
    the text nearest the answer.
    """
    tmpl = get_template(template)
    prompt = tmpl.prompt(example, tokenizer)
    response = tmpl.response(example["response"])
    p_ids = tokenizer(prompt, add_special_tokens=tmpl.adds_special_tokens)["input_ids"]
    r_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        r_ids = r_ids + [tokenizer.eos_token_id]
    if not r_ids:
        raise ValueError("example has an empty response after tokenisation.")
    r_ids = r_ids[: max(1, seq_len - 1)]
    p_ids = p_ids[max(0, len(p_ids) - (seq_len - len(r_ids))):] if len(p_ids) + len(r_ids) > seq_len else p_ids
    return {"input_ids": list(p_ids) + list(r_ids), "labels": [IGNORE] * len(p_ids) + list(r_ids)}


def encode_examples(tokenizer, examples: Sequence[Mapping[str, Any]], template: str | PromptTemplate = "chat",
                    seq_len: int = 256) -> list[dict[str, list[int]]]:
    """:func:`encode_example` over a list."""
    return [encode_example(tokenizer, ex, template, seq_len) for ex in examples]


def collate(encoded: Sequence[Mapping[str, list[int]]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` tensors."""
    n = max(len(e["input_ids"]) for e in encoded)
    ids = torch.full((len(encoded), n), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(encoded), n), dtype=torch.long)
    for i, e in enumerate(encoded):
        k = len(e["input_ids"])
        ids[i, :k] = torch.tensor(e["input_ids"])
        labels[i, :k] = torch.tensor(e["labels"])
        mask[i, :k] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pack(encoded: Sequence[Mapping[str, list[int]]], pad_id: int = 0,
         capacity: int | None = None) -> dict[str, torch.Tensor]:
    """A micro-batch without padding: its examples end to end in one sequence ``[1, T]``.

    ``position_ids`` restart at 0 for every example, and each example's first label is
    ``IGNORE``, so no token is predicted from the previous example. Every linear layer, norm and
    MLP runs on the ``T`` real tokens and nothing else. For attention, ``rows_*`` say how the
    tokens gather into rows of ``capacity`` slots (default: the longest example; first-fit
    decreasing, :func:`devft_lab.core.packed_attention.rows_layout`), so that the row-wise
    attention (``rows_eager`` / ``rows_sdpa``, what :func:`train_local` runs) keeps each example to
    itself without ``T x T`` scores. Any other attention kernel reads the positions instead:
    transformers 5 builds a block-diagonal causal mask from them. ``pad_id`` is unused (there is
    no padding); kept so ``pack`` and :func:`collate` are called alike.
    """
    lengths = [len(e["input_ids"]) for e in encoded]
    if capacity is not None and max(lengths) > capacity:
        raise ValueError(f"pack: an example has {max(lengths)} tokens, more than capacity={capacity}.")
    ids = torch.tensor([t for e in encoded for t in e["input_ids"]], dtype=torch.long)
    labels = torch.tensor([t for e in encoded for t in [IGNORE, *e["labels"][1:]]], dtype=torch.long)
    pos = torch.cat([torch.arange(n) for n in lengths])
    rows = {ROWS_KEY + k: v for k, v in rows_layout(lengths, capacity).items()}  # flat keys: batches move by .to()
    return {"input_ids": ids[None], "labels": labels[None], "position_ids": pos[None], **rows}


# --------------------------------------------------------------------------- loss
@torch.no_grad()
def mean_response_loss(model: torch.nn.Module, batches: Sequence[Mapping[str, torch.Tensor]],
                       compute_dtype: str | None = None) -> float:
    """Mean next-token cross-entropy per labelled (response) token over ``batches`` (:func:`collate`'s),

        loss = sum_batches sum_tokens CE / #labelled tokens

    in eval mode (restored afterwards), under autocast in ``compute_dtype`` (None: as is)."""

    was = model.training
    model.eval()
    device = next(model.parameters()).device
    total, n = 0.0, 0
    try:
        with autocast_context(device, compute_dtype):
            for batch in batches:
                loss, k = lm_loss(model, {key: v.to(device) for key, v in batch.items()})
                total, n = total + float(loss), n + k
    finally:
        model.train(was)
    if n == 0:
        raise ValueError("mean_response_loss got no labelled tokens; give examples with response labels.")
    return total / n


def lm_loss(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(summed next-token cross-entropy over labelled positions, number of those positions).

    Runs the decoder stack, then the LM head on the labelled positions only; falls back to
    the full logits for models without the usual ``.model`` / ``.lm_head`` split. ``batch``
    is :func:`collate`'s (``attention_mask``) or :func:`pack`'s (``position_ids``).
    """
    labels = batch["labels"]
    target = labels[:, 1:]
    where = target != IGNORE
    n = int(where.sum())
    split = decoder_and_head(model)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch.get("attention_mask")}
    if "position_ids" in batch:
        inputs.update(position_ids=batch["position_ids"], use_cache=False)  # packed: no cache, no mask
    rows = {k.removeprefix(ROWS_KEY): v for k, v in batch.items() if k.startswith(ROWS_KEY)}
    if rows:  # pack's attention rows, read by the rows_* kernels (others ignore them)
        dev = rows["allowed"].device.type
        dtype = (torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev)
                 else next(p.dtype for p in model.parameters() if p.is_floating_point()))
        inputs["packed_rows"] = {**rows, "bias": rows_bias(rows["allowed"], dtype)}  # made once, not once a layer
    if split is not None:
        decoder, head, cap = split
        hidden = decoder(**inputs).last_hidden_state
        logits = head(hidden[:, :-1][where])
        if cap:
            logits = torch.tanh(logits / cap) * cap
    else:
        out = model(**inputs)
        logits = out.logits[:, :-1][where]
    loss = F.cross_entropy(logits.float(), target[where], reduction="sum")
    return loss, n


# --------------------------------------------------------------------------- speed
@dataclass(frozen=True)
class Compute:
    """How the training steps are computed: speed, not the method. The maths stay the same up to
    float rounding (bf16 autocast rounds more); packing also sets the dropout masks' shapes, so a
    seed draws other masks packed than padded.

    Chosen once per run from its config (:func:`devft_lab.runner.run.build`, where the device
    probes pick ``dtype`` and ``attention``) and applied in one place: :meth:`batch` and
    :meth:`autocast` in the loop, :func:`speedups` around it.

    ``packing``    micro-batches via :func:`pack` (no work on padding) rather than :func:`collate`;
                   packed batches run the row-wise attention (:mod:`devft_lab.core.packed_attention`).
    ``dtype``      the autocast dtype of the forward pass (``float32``: none; ``auto``: bf16 on
                   CUDA, fp32 elsewhere; a run passes what :func:`~devft_lab.core.device.compute_dtype`
                   measured).
    ``attention``  the attention kernel while training, ``sdpa`` | ``eager``
                   (:func:`~devft_lab.core.attention.attention_kernel`); ``None``: the model's own.
    ``compile``    the decoder layers run ``torch.compile``d while training
                   (:func:`~devft_lab.core.compiled.compiled_layers`), eager again afterwards.
    ``pad_id``     the padding token of :func:`collate`'s rows (packed batches have none).

    One speed-up follows from the device alone and has no field: on the CPU the LoRA dropout
    masks are drawn 15 random bits an element (:mod:`devft_lab.core.dropout`).
    """

    packing: bool = True
    dtype: str = AUTO
    attention: str | None = None
    compile: bool = False
    pad_id: int = 0

    def batch(self, examples: Sequence[Mapping[str, list[int]]], device: torch.device) -> dict[str, torch.Tensor]:
        """One micro-batch of encoded ``examples`` on ``device``: :func:`pack`'s or :func:`collate`'s."""
        make = pack if self.packing else collate
        return {k: v.to(device) for k, v in make(examples, self.pad_id).items()}

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """Autocast of the forward pass on ``device`` in :attr:`dtype` (a no-op for fp32)."""
        dtype = self.dtype
        if dtype == AUTO:
            dtype = "bfloat16" if torch.device(device).type == "cuda" else "float32"
        return autocast_context(device, dtype)


@contextlib.contextmanager
def speedups(model: torch.nn.Module, compute: Compute, device: torch.device) -> Iterator[None]:
    """Run the body (training steps) with the model-wide speed-ups; every one undone afterwards:

    - on the CPU, every LoRA dropout draws its masks from the cheap sampler
      (:func:`~devft_lab.core.dropout.bits_dropout`);
    - the attention kernel ``compute.attention``, row-wise when ``compute.packing``
      (:func:`~devft_lab.core.attention.attention_kernel`);
    - compiled decoder layers when ``compute.compile`` (:func:`~devft_lab.core.compiled.compiled_layers`).
    """
    with bits_dropout(model, mask_sampler(device) == SAMPLER), \
            attention_kernel(model, compute.attention, rows=compute.packing), \
            compiled_layers(model, compute.compile):
        yield


# --------------------------------------------------------------------------- loop
@dataclass
class TrainStats:
    """What one call of :func:`train_local` did."""

    loss: float  # mean response-token loss over all steps
    steps: int
    samples: int  # examples seen (with repeats)
    tokens: int  # tokens processed (prompt + response, no padding)
    target_tokens: int  # response tokens the loss was taken on
    seconds: float


def round_lr(round_idx: int, num_rounds: int, lr: float, lr_min: float = 0.0, schedule: str = "cosine") -> float:
    """Learning rate of a round: cosine (or linear, constant) from ``lr`` to ``lr_min`` across rounds."""
    if schedule == "constant" or num_rounds <= 1:
        return lr
    t = min(max(round_idx / (num_rounds - 1), 0.0), 1.0)
    if schedule == "linear":
        return lr + (lr_min - lr) * t
    if schedule == "cosine":
        return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"unknown lr schedule {schedule!r}; use cosine, linear or constant (train.schedule).")


LR_SCOPES = ("run", "stage")


def scheduled_lr(round_idx: int, stage_round: int, stage_len: int, num_rounds: int, lr: float, lr_min: float = 0.0,
                 schedule: str = "cosine", scope: str = "run", start: int = 0, length: int | None = None) -> float:
    """The learning rate of global round ``round_idx`` (round ``stage_round`` of a stage of
    ``stage_len`` rounds, in a run of ``num_rounds``).

    ``scope="run"``: one decay across the run, ``round_lr(start + round_idx, length or num_rounds)``;
    ``start``/``length`` place a short run inside a longer schedule (a run that trains only the
    last rounds of another run's schedule, at that run's learning rates).
    ``scope="stage"``: the decay restarts at each stage, ``round_lr(stage_round, stage_len)``: every
    stage, the full model's last one included, starts at the peak ``lr`` and ends at ``lr_min``.
    """
    if scope == "stage":
        return round_lr(stage_round, stage_len, lr, lr_min, schedule)
    if scope != "run":
        raise ValueError(f"unknown lr scope {scope!r}; use run or stage (train.schedule_scope).")
    return round_lr(start + round_idx, length or num_rounds, lr, lr_min, schedule)


class Reparametrization(Protocol):
    """Tensors that generate the model's trainable tensors (C2A: a hypernetwork generating the LoRA).

    :func:`train_local` then steps ``params`` instead of the model's tensors. Each step:
    :meth:`load` writes the generated tensors into the model (and clears their gradients), the
    micro-batches run forward and backward through the model as usual, and :meth:`backward`
    carries the model tensors' gradients on into ``params`` (``dL/dphi = dL/dW . dW/dphi``).
    The model itself is untouched, so compiled layers and kernels work as for plain LoRA.
    """

    params: Sequence[torch.Tensor]

    def load(self) -> None: ...

    def backward(self) -> None: ...


def batch_order(n: int, steps: int, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """``steps`` batches of indices: epochs of a seeded shuffle, concatenated."""
    if n == 0:
        raise ValueError("no training examples: this client has an empty shard.")
    need, order = steps * batch_size, []
    while len(order) < need:
        order += torch.randperm(n, generator=generator).tolist()
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(steps)]


def train_local(model: torch.nn.Module, encoded: Sequence[Mapping[str, list[int]]], *, steps: int,
                batch_size: int, lr: float, seed: int = 0, grad_accum: int = 1, max_grad_norm: float | None = 1.0,
                penalty: Callable[[], torch.Tensor] | None = None,
                progress: Callable[[int, float], None] | None = None,
                reparam: Reparametrization | None = None, compute: Compute = Compute()) -> TrainStats:
    """Train the parameters with ``requires_grad`` for ``steps`` optimizer steps (AdamW, no weight decay).

    Each step accumulates ``grad_accum`` micro-batches of ``batch_size`` examples; the loss
    is the mean over response tokens (plus ``penalty()``, e.g. FedProx's proximal term); the
    gradient is clipped to norm ``max_grad_norm`` (None: not clipped). Batches come from ``seed``
    alone, and dropout from the global torch RNG, which the caller seeds: the same seed and state
    give the same result. ``progress(step, loss)`` is called after each step.

    ``compute``: how the steps run fast (:class:`Compute`, applied by :func:`speedups`).
    ``reparam``: step its ``params``, which generate the model's trainable tensors
    (:class:`Reparametrization`); the model ends holding what the final ``params`` generate.
    """
    params = list(reparam.params) if reparam is not None else [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("train_local: the model has no trainable parameters (is the LoRA attached?).")
    device = params[0].device
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    batches = batch_order(len(encoded), steps * grad_accum, batch_size, torch.Generator().manual_seed(int(seed)))
    was_training = model.training
    model.train()
    t0, total, n_tok, n_target, seen = time.perf_counter(), 0.0, 0, 0, 0
    with speedups(model, compute, device):
        for step in range(steps):
            opt.zero_grad(set_to_none=True)
            if reparam is not None:
                reparam.load()  # the generated tensors into the model
            step_loss = 0.0
            for micro in range(grad_accum):
                examples = [encoded[i] for i in batches[step * grad_accum + micro]]
                batch = compute.batch(examples, device)
                with compute.autocast(device):
                    loss_sum, n = lm_loss(model, batch)  # forward: summed cross-entropy over n response tokens
                loss = loss_sum / max(n, 1)
                if penalty is not None:
                    loss = loss + penalty()
                (loss / grad_accum).backward()
                step_loss += float(loss_sum.detach()) / max(n, 1) / grad_accum
                n_tok += sum(len(e["input_ids"]) for e in examples)
                n_target += n
                seen += len(examples)
            if reparam is not None:
                reparam.backward()  # the model tensors' gradients on into reparam.params
            if max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            opt.step()
            total += step_loss
            if progress is not None:
                progress(step, step_loss)
    model.train(was_training)
    opt.zero_grad(set_to_none=True)
    if reparam is not None:
        reparam.load()
    return TrainStats(loss=total / max(steps, 1), steps=steps, samples=seen, tokens=n_tok,
                      target_tokens=n_target, seconds=time.perf_counter() - t0)
