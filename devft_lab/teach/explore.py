"""Analyses behind the teaching notebooks: stage costs, probe texts, LoRA gradients of
simulated clients, the spectral embedding, fusion diagnostics and sweeps.

Everything returns plain Python / torch data; :mod:`devft_lab.teach.viz` draws it and
:mod:`devft_lab.teach.widgets` wires it to sliders. Nothing here trains: the notebooks 01-03
look at the *starting point* of each stage (LoRA B = 0), which is what DGLG and DBLF see.
"""
from __future__ import annotations

import math
import random
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from devft_lab.core.layers import decoder_layers, num_layers
from devft_lab.method.fusion import DEFAULT_BETA, anchor_position, fuse_tensors, fusion_weights
from devft_lab.method.grouping import Groups, affinity, cut_value, group_layers
from devft_lab.method.submodel import Submodel, build_submodel, default_lora_config, layer_key_pattern_of
from devft_lab.core.evaluate import perplexity
from devft_lab.fl.accounting import training_flops
from devft_lab.method.similarity import client_update_conflict

# Short plain sentences in four clearly different registers, written for devft_lab (free to
# reuse). They play the clients' local data in notebook 02: non-IID = one category per client.
TEXT_CATEGORIES: dict[str, list[str]] = {
    "science": [
        "Water is made of two hydrogen atoms bound to one oxygen atom.",
        "Plants turn sunlight, water and carbon dioxide into sugar and oxygen.",
        "The speed of light in a vacuum is about three hundred thousand kilometres per second.",
        "An electron carries a negative charge and orbits the nucleus of an atom.",
        "Sound travels faster in water than in air.",
        "The heart pumps blood through the arteries to every part of the body.",
        "Gravity pulls objects towards the centre of the Earth.",
        "Ice melts when its temperature rises above zero degrees Celsius.",
    ],
    "cooking": [
        "Whisk the eggs with a pinch of salt before pouring them into the pan.",
        "Let the dough rest for an hour so that it can rise.",
        "Chop the onions finely and fry them in butter until golden.",
        "Add the rice to the boiling water and cook it for twelve minutes.",
        "Season the soup with pepper and a little lemon juice.",
        "Bake the cake at one hundred and eighty degrees for forty minutes.",
        "Slice the tomatoes and lay them on the bread with fresh basil.",
        "Stir the sauce gently so that it does not burn at the bottom.",
    ],
    "history": [
        "The Roman Empire built roads that connected cities across Europe.",
        "In the Middle Ages most people lived in small villages and worked the land.",
        "The printing press made books cheaper and spread new ideas quickly.",
        "Ancient Egyptians built the pyramids as tombs for their kings.",
        "The first steam engines powered factories in the eighteenth century.",
        "Explorers sailed across the ocean in small wooden ships.",
        "The old castle was besieged for many months during the war.",
        "Merchants travelled along the Silk Road to trade spices and cloth.",
    ],
    "code": [
        "def add(a, b):\n    return a + b",
        "for i in range(10):\n    print(i * i)",
        "import numpy as np\nx = np.zeros((3, 4))",
        "if value is None:\n    raise ValueError('missing value')",
        "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y",
        "with open('data.txt') as f:\n    lines = f.readlines()",
        "numbers = [n for n in range(100) if n % 7 == 0]",
        "while queue:\n    node = queue.pop(0)\n    visit(node)",
    ],
}


def all_texts(categories: Mapping[str, Sequence[str]] = TEXT_CATEGORIES) -> list[str]:
    """Every probe text, category by category."""
    return [t for texts in categories.values() for t in texts]


def batches(tokenizer, texts: Sequence[str], batch_size: int = 8, max_length: int = 128) -> list[dict]:
    """Tokenizer batches (input_ids, attention_mask) of ``texts``."""
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[i:i + batch_size]), return_tensors="pt", padding=True,
                        truncation=True, max_length=max_length)
        out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return out


def split_clients(categories: Mapping[str, Sequence[str]] = TEXT_CATEGORIES, num_clients: int | None = None,
                  iid: bool = True, seed: int = 0) -> list[list[str]]:
    """Simulated clients' texts.

    non-IID: client c holds category c only (``num_clients`` = number of categories);
    IID: the same texts shuffled and dealt round-robin, so every client sees every category.
    Both splits hold exactly the same texts, so only the *distribution* differs.
    """
    k = num_clients or len(categories)
    if not iid:
        if k != len(categories):
            raise ValueError(f"non-IID split gives one category per client: num_clients must be "
                             f"{len(categories)}, got {k}.")
        return [list(t) for t in categories.values()]
    texts = all_texts(categories)
    random.Random(seed).shuffle(texts)
    return [texts[c::k] for c in range(k)]


# --------------------------------------------------------------------------- reference losses
@dataclass(frozen=True)
class UniformGuess:
    """The model that guesses every next token uniformly from a vocabulary of V tokens.

    The reference a language-model loss is read against: its loss is ln V nats per token
    and its perplexity is V. A loss above ln V is *worse* than guessing: the model is
    confidently wrong.
    """

    vocab_size: int

    @property
    def nats(self) -> float:
        """Loss per token, ln V."""
        return math.log(self.vocab_size)

    @property
    def perplexity(self) -> float:
        """exp(ln V) = V."""
        return float(self.vocab_size)


def uniform_guess(vocab) -> UniformGuess:
    """:class:`UniformGuess` for a tokenizer (its ``len``, special tokens included) or a vocabulary size."""
    size = vocab if isinstance(vocab, (int, np.integer)) else len(vocab)
    if int(size) < 2:
        raise ValueError(f"a vocabulary needs at least 2 tokens for a uniform guess, got {size}.")
    return UniformGuess(int(size))


# --------------------------------------------------------------------------- stage costs
@dataclass(frozen=True)
class StageCost:
    """What one stage's submodel weighs and costs (per client, per token / per round)."""

    capacity: int
    decoder_params: int  # parameters of the representative layers
    lora_params: int  # trainable LoRA parameters
    run_params: int  # parameters on the forward path: decoder + LM head
    lora_bytes: int  # one LoRA upload (uplink) or download of the adapters
    submodel_bytes: int  # the fused decoder layers a client must receive when the stage starts
    train_flops_per_token: float  # (4 N + 6 N_lora), see devft_lab.fl.accounting.training_flops


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def stage_cost(full_model: nn.Module, capacity: int, lora_config=None) -> StageCost:
    """Costs of a stage of ``capacity`` layers; they depend only on the layer count.

    Every decoder layer of one model has the same shape, so the representative layers of a
    capacity-k submodel weigh k / L of the full stack, whatever the grouping.
    """
    cfg = lora_config or default_lora_config()
    layer = decoder_layers(full_model)[0]
    per_layer = _numel(layer)
    lora_per_layer = 0
    for name, mod in layer.named_modules():
        if name.split(".")[-1] in set(cfg.target_modules) and isinstance(mod, nn.Linear):
            lora_per_layer += cfg.r * (mod.in_features + mod.out_features)
    head = full_model.get_output_embeddings()
    run = capacity * per_layer + (head.weight.numel() if head is not None else 0)
    elem = next(layer.parameters()).element_size()
    lora = capacity * lora_per_layer
    return StageCost(capacity, capacity * per_layer, lora, run, lora * elem, capacity * _bytes(layer),
                     training_flops(run, 1, lora_params=lora, lora_only=True))


# --------------------------------------------------------------------------- building stages
def quiet_build(full_model: nn.Module, groups: Groups, beta: float = DEFAULT_BETA, method: str = "dblf",
                **kwargs) -> Submodel:
    """:func:`build_submodel` with DBLF's negative-anchor warning silenced (the notebooks show
    the anchor weights explicitly instead)."""
    if method == "dblf" and beta == 0:
        method = "r-one"  # the beta -> 0 limit of DBLF
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return build_submodel(full_model, groups, beta=beta, method=method, **kwargs)


def submodel_perplexity(full_model: nn.Module, tokenizer, texts: Sequence[str], groups: Groups,
                        beta: float = DEFAULT_BETA, method: str = "dblf") -> float:
    """Perplexity of the (untrained) stage submodel built from ``groups``."""
    sub = quiet_build(full_model, groups, beta=beta, method=method)
    try:
        return perplexity(sub.model, tokenizer, list(texts))
    finally:
        del sub


def identity_submodel(full_model: nn.Module, lora_config=None, seed: int = 0) -> Submodel:
    """The full model as a PEFT 'submodel' of singleton groups (copies of every layer with
    LoRA attached); the full model itself is left untouched (apart from PEFT freezing the
    shared embeddings / head)."""
    L = num_layers(full_model)
    return quiet_build(full_model, [[i] for i in range(L)], method="r-one", lora_config=lora_config, seed=seed)


# --------------------------------------------------------------------------- gradients
def lora_gradients(sub: Submodel, tokenizer, texts: Sequence[str], batch_size: int = 8,
                   max_length: int = 128) -> dict[int, dict[str, torch.Tensor]]:
    """Gradient of the mean next-token loss on ``texts`` w.r.t. every LoRA tensor.

    Returns ``{layer position: {"self_attn.q_proj.lora_B.weight": grad, ...}}``. At the start
    of training B = 0, so every gradient of A is exactly 0 (dL/dA = s B^T ...) and the
    information sits in the B gradients.
    """
    from peft import get_peft_model_state_dict  # optional/heavy: peft

    model = sub.model
    was_training = model.training
    model.eval()  # no dropout: a deterministic gradient
    model.zero_grad(set_to_none=True)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    n_batches = 0
    for batch in batches(tokenizer, texts, batch_size, max_length):
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        out = model(**batch, labels=labels)
        out.loss.backward()
        n_batches += 1
    model.train(was_training)
    # Map parameter names to the state-dict keys PEFT uses (drops the adapter name).
    keys = list(get_peft_model_state_dict(model))
    pos_name = _key_to_position(sub)
    grads: dict[int, dict[str, torch.Tensor]] = {}
    for n, p in params.items():
        key = n.replace(".default", "")
        if key not in pos_name:
            continue
        pos, name = pos_name[key]
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        grads.setdefault(pos, {})[name] = (g / max(n_batches, 1)).detach().clone()
    model.zero_grad(set_to_none=True)
    if not grads:
        raise RuntimeError(f"found no LoRA gradients (state keys e.g. {keys[:2]}).")
    return dict(sorted(grads.items()))


def _key_to_position(sub: Submodel) -> dict[str, tuple[int, str]]:
    from peft import get_peft_model_state_dict  # optional/heavy: peft

    pat = layer_key_pattern_of(sub.model)
    out = {}
    for key in get_peft_model_state_dict(sub.model):
        m = pat.match(key)
        if m:
            out[key] = (int(m["i"]), m["name"])
    return out


def flatten_layers(grads: Mapping[int, Mapping[str, torch.Tensor]],
                   layers: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """One state dict ``{"<layer>.<name>": tensor}`` over (some) layers, for client conflicts."""
    keep = sorted(grads) if layers is None else list(layers)
    return {f"{i}.{n}": t for i in keep for n, t in grads[i].items()}


def client_conflict_per_layer(client_grads: Sequence[Mapping[int, Mapping[str, torch.Tensor]]]
                              ) -> tuple[np.ndarray, np.ndarray]:
    """Per layer: the mean pairwise cosine and mean sign-conflict rate between clients' gradients."""
    layers = sorted(client_grads[0])
    cos, sign = [], []
    off = ~torch.eye(len(client_grads), dtype=torch.bool)
    for i in layers:
        view = client_update_conflict([g[i] for g in client_grads])
        cos.append(float(view.cosine[off].mean()))
        sign.append(float(view.sign_conflict[off].mean()))
    return np.array(cos), np.array(sign)


# --------------------------------------------------------------------------- grouping views
def spectral_embedding(similarity, k: int, negatives: str = "clip") -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (all, ascending) and the L x k embedding of DGLG's Laplacian Lap = D - W."""
    w = affinity(similarity, negatives)
    lap = np.diag(w.sum(1)) - w
    vals, vecs = np.linalg.eigh(lap)
    return vals, vecs[:, :k]


def compare_groupings(similarity, k: int, rules: Sequence[str] = ("spectral", "contiguous", "even", "random"),
                      negatives: str = "clip", seed: int = 0) -> dict[str, dict]:
    """Groups of every rule for k groups, with their ratio cut and plain cut on ``similarity``."""
    L = len(similarity)
    out = {}
    for rule in rules:
        groups = group_layers(similarity, L, k, method=rule, negatives=negatives, seed=seed)
        out[rule] = {"groups": groups,
                     "ratio_cut": cut_value(similarity, groups, "ratio", negatives),
                     "cut": cut_value(similarity, groups, "cut", negatives),
                     "largest": max(map(len, groups))}
    return out


# --------------------------------------------------------------------------- fusion views
def tensor_difference_norms(full_model: nn.Module, group: Sequence[int],
                            anchor: str = "first") -> tuple[list[str], np.ndarray]:
    """Relative differences ||theta_j,t - theta_a,t|| / ||theta_a,t|| per member j and tensor t.

    These are the differentials DBLF scales by beta. Rows follow ``group``, columns the names.
    """
    layers = decoder_layers(full_model)
    a = group[anchor_position(len(group), anchor)]
    ref = {n: p.detach() for n, p in layers[a].named_parameters()}
    names = list(ref)
    out = np.zeros((len(group), len(names)))
    for r, j in enumerate(group):
        pj = {n: p.detach() for n, p in layers[j].named_parameters()}
        for c, n in enumerate(names):
            out[r, c] = float((pj[n] - ref[n]).norm() / ref[n].norm().clamp_min(1e-12))
    return names, out


def fused_tensor(full_model: nn.Module, group: Sequence[int], name: str, beta: float = DEFAULT_BETA,
                 method: str = "dblf", anchor: str = "first") -> torch.Tensor:
    """One tensor of the representative layer: sum_j w_j theta_j,name."""
    layers = decoder_layers(full_model)
    if method == "dblf" and beta == 0:
        method = "r-one"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        w = fusion_weights(len(group), method, beta, anchor_position(len(group), anchor))
    return fuse_tensors([dict(layers[j].named_parameters())[name] for j in group], w)


def fused_vs_members(full_model: nn.Module, group: Sequence[int], beta: float = DEFAULT_BETA,
                     method: str = "dblf") -> dict[str, np.ndarray]:
    """Cosine and norm ratio between each tensor of the representative and of each member.

    ``cosine[j, t] = cos(rep_t, theta_j,t)``, ``norm_ratio[j, t] = |rep_t| / |theta_j,t|``.
    """
    layers = decoder_layers(full_model)
    names = [n for n, _ in layers[group[0]].named_parameters()]
    cos = np.zeros((len(group), len(names)))
    ratio = np.zeros_like(cos)
    for c, n in enumerate(names):
        rep = fused_tensor(full_model, group, n, beta, method).reshape(-1).float()
        for r, j in enumerate(group):
            t = dict(layers[j].named_parameters())[n].detach().reshape(-1).float()
            cos[r, c] = float(torch.nn.functional.cosine_similarity(rep, t, dim=0))
            ratio[r, c] = float(rep.norm() / t.norm().clamp_min(1e-12))
    return {"names": names, "cosine": cos, "norm_ratio": ratio}


def beta_sweep(full_model: nn.Module, tokenizer, texts: Sequence[str], groups: Groups,
               betas: Sequence[float]) -> list[float]:
    """Perplexity of the stage submodel for every beta (beta = 0 is R-ONE, DBLF's limit)."""
    return [submodel_perplexity(full_model, tokenizer, texts, groups, beta=b) for b in betas]


def fusion_ablation(full_model: nn.Module, tokenizer, texts: Sequence[str], groups: Groups,
                    methods: Sequence[str] = ("r-one", "sum", "mean", "dblf"),
                    beta: float = DEFAULT_BETA) -> dict[str, float]:
    """Perplexity of the untrained stage submodel under each fusion rule (same groups)."""
    return {m: submodel_perplexity(full_model, tokenizer, texts, groups, beta=beta, method=m) for m in methods}


def weight_gradients(full_model: nn.Module, tokenizer, texts: Sequence[str],
                     modules: Sequence[str] = ("q_proj", "v_proj"), batch_size: int = 8,
                     max_length: int = 128) -> dict[int, dict[str, torch.Tensor]]:
    """dL/dW of the adapted base weights of every layer: ``{layer: {"self_attn.q_proj.weight": G}}``.

    The full-rank direction a LoRA update of that module would follow (one LoRA step moves
    W + s B A by about -lr s^2 G A^T A). Unlike the B gradients, whose coordinates depend on
    each layer's own random A, these live in the same coordinates as DGLG's theta, so they
    can be compared *between layers*. The model's requires_grad flags are restored afterwards.
    """
    layers = decoder_layers(full_model)
    flags = {p: p.requires_grad for p in full_model.parameters()}
    targets: dict[int, dict[str, nn.Parameter]] = {}
    for i, layer in enumerate(layers):
        for name, mod in layer.named_modules():
            if name.split(".")[-1] in set(modules) and isinstance(mod, nn.Linear):
                targets.setdefault(i, {})[f"{name}.weight"] = mod.weight
    was_training = full_model.training
    try:
        for p in full_model.parameters():
            p.requires_grad_(False)
            p.grad = None
        for entry in targets.values():
            for p in entry.values():
                p.requires_grad_(True)
        full_model.eval()
        n = 0
        for batch in batches(tokenizer, texts, batch_size, max_length):
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            full_model(**batch, labels=labels).loss.backward()
            n += 1
        out = {i: {k: (p.grad / max(n, 1)).detach().clone() for k, p in entry.items()}
               for i, entry in targets.items()}
    finally:
        for p, f in flags.items():
            p.grad = None
            p.requires_grad_(f)
        full_model.train(was_training)
    return out
