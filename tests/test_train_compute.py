"""The plain loop and its one place for speed (Compute, speedups): the same losses as before the
refactor, and every speed-up undone after training.

``tests/data/train_local_losses.json`` holds the loss sequences, token counts and LoRA digests that
``train_local`` / ``client_update`` produced on tiny random models *before* the speed settings moved
into :class:`~devft_lab.core.train.Compute` (commit dc935eb, the API of ``packing=``, ``attention=``,
``pad_id=`` keywords). The cases and seeds below are those of that run."""
import json
import math
from pathlib import Path

import pytest
import torch

from devft_lab.core.attention import attention_of
from devft_lab.core.dropout import BitsDropout
from devft_lab.core.models import load_model, tiny_model
from devft_lab.core.train import Compute, collate, encode_example, pack, speedups, train_local
from devft_lab.fl.client import LocalTraining, client_update, get_lora_state
from devft_lab.fl.strategies import ClientProfile, get_strategy
from devft_lab.method.submodel import default_lora_config

GOLDEN = json.loads((Path(__file__).parent / "data" / "train_local_losses.json").read_text())
peft = pytest.importorskip("peft")


def _setup():
    torch.manual_seed(0)  # get_peft_model draws LoRA A from the global generator
    model, tok = load_model("tiny-llama", device="cpu")
    pm = peft.get_peft_model(model, default_lora_config(r=4, alpha=8, dropout=0.1))
    enc = [encode_example(tok, {"instruction": "word " * (2 + 5 * i), "response": "yes " * (1 + i % 3)}, "chat", 96)
           for i in range(10)]
    return pm, tok, enc


CASES = {  # name -> (Compute fields, clip norm, FedProx-like penalty)
    "packed": (dict(), 1.0, False),
    "padded": (dict(packing=False), 1.0, False),
    "packed_eager_attention": (dict(attention="eager"), 1.0, False),
    "padded_eager_attention": (dict(packing=False, attention="eager"), 1.0, False),
    "clip_penalty": (dict(), 0.5, True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_train_local_gives_the_losses_recorded_before_the_refactor(name):
    fields, clip, penalised = CASES[name]
    pm, tok, enc = _setup()
    params = [p for p in pm.parameters() if p.requires_grad]
    penalty = (lambda: 0.01 * sum((p ** 2).sum() for p in params)) if penalised else None  # noqa: E731
    torch.manual_seed(0)
    losses = []
    s = train_local(pm, enc, steps=3, batch_size=3, lr=1e-2, grad_accum=2, seed=5, max_grad_norm=clip,
                    penalty=penalty, progress=lambda i, l: losses.append(l),
                    compute=Compute(pad_id=tok.pad_token_id, **fields))
    want = GOLDEN[name]
    assert (s.tokens, s.target_tokens, s.samples) == (want["tokens"], want["target_tokens"], want["samples"])
    # the same float arithmetic gives the same bits (checked on the machine that recorded them); the
    # tolerance is for another CPU's kernels, far below what a changed batch, mask or step would move
    assert len(losses) == 3 and all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(losses, want["losses"]))
    assert math.isclose(s.loss, want["loss"], rel_tol=1e-6)


@pytest.mark.parametrize("strategy", ["fedprox", "c2a"])
@pytest.mark.parametrize("packing", [True, False])
def test_client_update_gives_the_losses_recorded_before_the_refactor(strategy, packing):
    """FedProx trains with a penalty, C2A through a Reparametrization: both still ride the same loop."""
    torch.manual_seed(0)
    model, tok = tiny_model("llama", num_layers=2)
    pm = peft.get_peft_model(model, default_lora_config(r=2, alpha=4, dropout=0.1))
    data = [{"input_ids": tok(w)["input_ids"], "labels": tok(w)["input_ids"]}
            for w in ("abc", "hello there", "xyz", "ok", "four words in here")]
    s = get_strategy(strategy, mu=0.5) if strategy == "fedprox" else get_strategy(strategy)
    s.bind_clients([ClientProfile({"a": 5}, data), ClientProfile({"b": 1}, data[:1])], pm.get_input_embeddings())
    start = s.init_global(get_lora_state(pm))
    res = client_update(pm, start, data, s, LocalTraining(steps=3, batch_size=2, lr=1e-2,
                                                          compute=Compute(packing=packing)),
                        client=0, round_idx=1, seed=7)
    want = GOLDEN[f"client_{strategy}_{'packed' if packing else 'padded'}"]
    assert res.stats.tokens == want["tokens"] and math.isclose(res.stats.loss, want["loss"], rel_tol=1e-6)


def test_the_recorded_packed_and_padded_runs_agree_where_the_masks_do():
    """Packing changes the dropout masks' shapes (so later steps differ) but not the first step's loss."""
    assert GOLDEN["packed"]["losses"][0] == GOLDEN["padded"]["losses"][0]
    assert GOLDEN["packed"]["losses"][1:] != GOLDEN["padded"]["losses"][1:]


def test_compute_batch_is_pack_or_collate_on_the_device():
    _, tok = load_model("tiny-llama", device="cpu")
    enc = [encode_example(tok, {"instruction": "w " * (1 + 3 * i), "response": "ok"}, "chat", 64) for i in range(3)]
    packed = Compute().batch(enc, torch.device("cpu"))
    padded = Compute(packing=False, pad_id=7).batch(enc, torch.device("cpu"))
    assert all(torch.equal(packed[k], v) for k, v in pack(enc).items()) and packed.keys() == pack(enc).keys()
    assert all(torch.equal(padded[k], v) for k, v in collate(enc, 7).items()) and padded.keys() == {
        "input_ids", "attention_mask", "labels"}


def test_autocast_follows_the_dtype_and_auto_is_fp32_on_the_cpu():
    x = torch.randn(4, 4)
    with Compute(dtype="bfloat16").autocast(torch.device("cpu")):
        assert (x @ x).dtype == torch.bfloat16
    for dtype in ("auto", "float32"):
        with Compute(dtype=dtype).autocast(torch.device("cpu")):
            assert (x @ x).dtype == torch.float32


def test_speedups_apply_inside_and_are_undone_after():
    pm, _, _ = _setup()
    before = attention_of(pm)
    dropouts = [type(m) for m in pm.modules() if isinstance(m, torch.nn.Dropout | BitsDropout)]
    with speedups(pm, Compute(attention="eager"), torch.device("cpu")):
        assert attention_of(pm) == {"rows_eager"}  # packed batches: the row-wise kernel
        assert any(isinstance(m, BitsDropout) for m in pm.modules())  # the CPU mask sampler
    assert attention_of(pm) == before
    assert [type(m) for m in pm.modules() if isinstance(m, torch.nn.Dropout | BitsDropout)] == dropouts
    with speedups(pm, Compute(packing=False), torch.device("cpu")):
        assert attention_of(pm) == before  # padded batches, no kernel named: the model's own
