"""Run profiles for the notebooks: ``full`` (people, the real model) or ``ci`` (tests, seconds).

The profile is read from the environment variable ``DEVFT_PROFILE``:

=========  =================================================================
``full``   default. The embedded SmolLM2-135M-Instruct (30 layers), full
           text sets, fine sweeps. What the committed notebooks show.
``ci``     the random 8-layer ``tiny-llama`` and small text sets, so that a
           notebook runs in seconds. ``make test`` sets it for nbval
           (``notebooks/conftest.py``).
=========  =================================================================

A notebook asks for sizes with :func:`pick` (``pick(ci=2, full=8)``) and loads its model
with :func:`load_profile_model`. ``DEVFT_NOTEBOOK_MODEL`` overrides the model of either
profile (a preset name, hub id or folder), e.g. to run the full notebooks on Gemma 3.

Profiles change numbers, never the code path: every cell runs in both.
"""
from __future__ import annotations

import os
from typing import Literal, TypeVar

Profile = Literal["ci", "full"]
PROFILES: tuple[Profile, ...] = ("ci", "full")
ENV_VAR = "DEVFT_PROFILE"
MODEL_ENV_VAR = "DEVFT_NOTEBOOK_MODEL"
MODELS: dict[str, str] = {"ci": "tiny-llama", "full": "smollm2-135m"}

T = TypeVar("T")


def profile() -> Profile:
    """The active profile: ``DEVFT_PROFILE`` (``ci`` or ``full``), default ``full``."""
    value = os.environ.get(ENV_VAR, "full").strip().lower() or "full"
    if value not in PROFILES:
        raise ValueError(f"{ENV_VAR}={value!r} is not a profile; use one of {PROFILES} "
                         f"(unset means 'full').")
    return value  # type: ignore[return-value]


def is_ci() -> bool:
    """True in the fast test profile."""
    return profile() == "ci"


def pick(ci: T, full: T) -> T:
    """The value for the active profile, e.g. ``n_texts = pick(ci=4, full=32)``."""
    return ci if is_ci() else full


def profile_model() -> str:
    """Model name of the active profile (``DEVFT_NOTEBOOK_MODEL`` wins when set)."""
    return os.environ.get(MODEL_ENV_VAR) or MODELS[profile()]


def quiet() -> None:
    """No progress bars and only errors from transformers (both profiles, so outputs stay clean)."""
    os.environ.setdefault("DEVFT_QUIET", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation chatter of transformers/peft
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def load_profile_model(device: str = "cpu"):
    """``(model, tokenizer)`` of the active profile, fp32, eval mode, progress bars off."""
    from devft_lab.core.models import load_model

    quiet()
    return load_model(profile_model(), device=device)


def describe() -> str:
    """One line for the notebook's first output, e.g. ``profile=full model=smollm2-135m``."""
    return f"profile={profile()} model={profile_model()}"
