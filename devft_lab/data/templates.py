"""Prompt templates: how an instruction example becomes ``prompt`` + ``response`` text.

The loss (training) and the log-likelihood (evaluation) are both taken on the response
only, so a template gives the two halves separately:

``plain``   the instruction as is, then the response after one space
            (lm-evaluation-harness style: ``"...\\nA:"`` + ``" yes"``).
``alpaca``  the Alpaca prompt (Taori et al. 2023; the format of Alpaca-GPT4, the paper's data).
``chat``    the model's own chat template (``tokenizer.apply_chat_template``), user turn(s)
            then the generation prompt; the response is the assistant turn.

Training appends the tokenizer's EOS after the response (see :mod:`devft_lab.core.train`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
TEMPLATES = ("plain", "alpaca", "chat")


@dataclass(frozen=True)
class PromptTemplate:
    """Renders an example into (prompt, response) strings; see the module docstring."""

    name: str = "plain"
    system: str | None = None  # chat only: a system message (None: the template's default)

    def __post_init__(self):
        if self.name not in TEMPLATES:
            raise ValueError(f"Unknown prompt template {self.name!r}; choose one of {TEMPLATES}.")

    def prompt(self, example: dict[str, Any], tokenizer=None) -> str:
        """The text before the response (what the model conditions on)."""
        instruction, inp = example.get("instruction", example.get("prompt", "")), example.get("input", "")
        if self.name == "plain":
            return f"{instruction}\n{inp}" if inp else instruction
        if self.name == "alpaca":
            if inp:
                return ALPACA_WITH_INPUT.format(instruction=instruction, input=inp)
            return ALPACA_NO_INPUT.format(instruction=instruction)
        return chat_prompt(example, tokenizer, self.system)

    def response(self, text: str) -> str:
        """The response as it follows the prompt (``plain`` puts one space before it)."""
        return " " + text.lstrip() if self.name == "plain" else text

    @property
    def adds_special_tokens(self) -> bool:
        """Whether the tokenizer should add its own BOS (the chat template writes its own)."""
        return self.name != "chat"


def chat_prompt(example: dict[str, Any], tokenizer, system: str | None = None) -> str:
    """Render the user side of ``example`` with the tokenizer's chat template."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("The 'chat' template needs a tokenizer with a chat_template; "
                         "use template 'alpaca' or 'plain' for base models.")
    if example.get("messages"):
        messages = [dict(m) for m in example["messages"][:-1]]  # the last turn is the response
    else:
        inp = example.get("input", "")
        text = example.get("instruction", example.get("prompt", ""))
        messages = [{"role": "user", "content": f"{text}\n\n{inp}" if inp else text}]
    if system is not None and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": system}, *messages]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def get_template(name_or_template: str | PromptTemplate) -> PromptTemplate:
    """A :class:`PromptTemplate` from its name (or the template itself)."""
    if isinstance(name_or_template, PromptTemplate):
        return name_or_template
    return PromptTemplate(str(name_or_template))
