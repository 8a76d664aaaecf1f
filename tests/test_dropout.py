"""BitsDropout (LoRA dropout masks from 15 random bits an element): nn.Dropout's distribution,
reproducible from torch's seed, swapped into PEFT's LoRA layers for training and back after."""
import pytest
import torch

from devft_lab.core.dropout import BitsDropout, bits_dropout, drop_threshold, mask_sampler
from devft_lab.core.models import load_model
from devft_lab.core.train import Compute, encode_example, train_local


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_drops_a_fraction_p_and_keeps_the_expectation(p):
    drop = BitsDropout(p).train()
    x = torch.ones(1000, 1000)
    y = drop(x)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - p) < 0.003  # 1e6 draws: sd 0.0005
    keep = 1 - drop_threshold(p) / 2 ** 15
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / keep))
    assert abs(y.mean().item() - 1.0) < 0.005
    assert abs(keep - (1 - p)) <= 2 ** -16


@pytest.mark.parametrize("lane", [0, 1, 2, 3])
def test_every_lane_of_a_word_drops_p_independently_of_its_neighbour(lane):
    # four elements share a 64-bit word; each lane drops p, and no two lanes are correlated
    torch.manual_seed(0)
    y = BitsDropout(0.5).train()(torch.ones(4_000_000)).view(-1, 4) == 0
    a, b = y[:, lane].float(), y[:, (lane + 1) % 4].float()
    assert abs(a.mean().item() - 0.5) < 0.003  # 1e6 draws: sd 0.0005
    assert abs((a * b).mean().item() - 0.25) < 0.003


def test_a_mask_of_any_size_covers_every_element():
    torch.manual_seed(0)
    for n in (1, 2, 3, 5, 7):  # not multiples of a word's four lanes
        y = BitsDropout(0.5).train()(torch.ones(n, 3))
        assert y.shape == (n, 3) and set(y.unique().tolist()) <= {0.0, 2.0}


def test_same_seed_same_mask_and_eval_or_p0_is_the_identity():
    x = torch.randn(7, 33)
    drop = BitsDropout(0.2).train()
    torch.manual_seed(3)
    a = drop(x)
    torch.manual_seed(3)
    assert torch.equal(a, drop(x))
    assert not torch.equal(a, drop(x))
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(BitsDropout(0.0).train()(x), x)
    with pytest.raises(ValueError, match="probability"):
        BitsDropout(1.0)


def test_swaps_every_peft_lora_dropout_for_the_body_only():
    from peft import get_peft_model

    from devft_lab.method.submodel import default_lora_config

    model, tok = load_model("tiny-llama", device="cpu")
    pm = get_peft_model(model, default_lora_config(r=4, alpha=8, dropout=0.1))
    drops = [m for m in pm.modules() if type(m) is torch.nn.Dropout and m.p == 0.1]
    assert drops
    with bits_dropout(pm) as n:
        assert n == len(drops)
        assert not any(type(m) is torch.nn.Dropout and m.p == 0.1 for m in pm.modules())
        assert sum(isinstance(m, BitsDropout) for m in pm.modules()) == n
    after = [m for m in pm.modules() if type(m) is torch.nn.Dropout and m.p == 0.1]
    assert len(after) == len(drops) and all(a is b for a, b in zip(after, drops))
    with bits_dropout(pm, enabled=False) as n:
        assert n == 0


def test_cpu_training_draws_bits_dropout_masks(monkeypatch):
    from peft import get_peft_model

    from devft_lab.method.submodel import default_lora_config

    model, tok = load_model("tiny-llama", device="cpu")
    pm = get_peft_model(model, default_lora_config(r=4, alpha=8, dropout=0.1))
    enc = [encode_example(tok, {"instruction": "word " * (2 + i), "response": "yes"}, "chat", 64) for i in range(4)]
    calls = []
    forward = BitsDropout.forward
    monkeypatch.setattr(BitsDropout, "forward", lambda self, x: calls.append(1) or forward(self, x))
    train_local(pm, enc, steps=1, batch_size=4, lr=1e-3, compute=Compute(pad_id=tok.pad_token_id))
    assert calls
    assert not any(isinstance(m, BitsDropout) for m in pm.modules())


def test_the_cpu_samples_bits_and_cuda_keeps_torch_dropout():
    assert mask_sampler("cpu") == "bits15x4"
    assert mask_sampler(torch.device("cuda", 0)) == "torch"
