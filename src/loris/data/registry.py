"""Registry of named chat templates: the template text plus the facts training needs about it.

The template text lives in package data (``templates/published`` holds byte-exact copies of what each
model family publishes, ``templates/loris`` the formats written here); ``templates/sources.json`` names
where each published file came from. This module only describes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

__all__ = ["ChatTemplateSpec", "TEMPLATES", "template_names", "resolve_template", "spec_for_template_text"]


@dataclass(frozen=True)
class ChatTemplateSpec:
    """One named chat template and what training and export need to know about it.

    ``stop_token`` is the literal token that closes an assistant turn in the rendered text; ``None`` means
    the template writes ``{{ eos_token }}`` there, so whatever the tokenizer's EOS is already is right.
    ``instruction_part`` / ``response_part`` are the texts right before user / assistant content, used to
    mask labels for response-only training. ``adds_bos`` says the template itself writes ``bos_token``
    (so rendered text must be tokenized without adding another BOS).
    """

    name: str
    file: str
    stop_token: str | None
    instruction_part: str
    response_part: str
    adds_bos: bool = False
    bos_token: str | None = None
    eos_token: str | None = None
    default_system_message: str | None = None
    supports_system: bool = True
    published: bool = True
    aliases: tuple[str, ...] = ()
    extra_stop_tokens: tuple[str, ...] = ()
    ollama: bool = True
    """False: loris writes no Ollama TEMPLATE for it (none to check one against, see export/ollama.py)."""

    @property
    def template(self) -> str:
        """The Jinja template text, read from package data."""
        return _read_template(self.file)

    @property
    def stop_tokens(self) -> tuple[str, ...]:
        """Every string that should stop generation (for runtimes such as Ollama)."""
        out = [self.stop_token or self.eos_token] + list(self.extra_stop_tokens)
        return tuple(dict.fromkeys(s for s in out if s))


@cache
def _read_template(file: str) -> str:
    path = resources.files("loris.data").joinpath("templates")
    for part in file.split("/"):
        path = path.joinpath(part)
    return path.read_bytes().decode("utf-8")


_CHATML_USER = "<|im_start|>user\n"
_CHATML_ASSISTANT = "<|im_start|>assistant\n"
_LLAMA3_USER = "<|start_header_id|>user<|end_header_id|>\n\n"
_LLAMA3_ASSISTANT = "<|start_header_id|>assistant<|end_header_id|>\n\n"
_GEMMA_USER = "<start_of_turn>user\n"
_GEMMA_MODEL = "<start_of_turn>model\n"

_SPECS: tuple[ChatTemplateSpec, ...] = (
    ChatTemplateSpec(
        "chatml",
        "loris/chatml.jinja",
        stop_token="<|im_end|>",
        instruction_part=_CHATML_USER,
        response_part=_CHATML_ASSISTANT,
        published=False,
        extra_stop_tokens=("<|im_start|>",),
    ),
    ChatTemplateSpec(
        "smollm2",
        "published/chatml.jinja",
        stop_token="<|im_end|>",
        instruction_part=_CHATML_USER,
        response_part=_CHATML_ASSISTANT,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        default_system_message="You are a helpful AI assistant named SmolLM, trained by Hugging Face",
        aliases=("smollm", "chatml-smollm2"),
        extra_stop_tokens=("<|im_start|>",),
    ),
    ChatTemplateSpec(
        "llama-3",
        "published/llama-3.jinja",
        stop_token="<|eot_id|>",
        instruction_part=_LLAMA3_USER,
        response_part=_LLAMA3_ASSISTANT,
        adds_bos=True,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        aliases=("llama3",),
        extra_stop_tokens=("<|start_header_id|>", "<|end_header_id|>"),
    ),
    ChatTemplateSpec(
        "llama-3.1",
        "published/llama-3.1.jinja",
        stop_token="<|eot_id|>",
        instruction_part=_LLAMA3_USER,
        response_part=_LLAMA3_ASSISTANT,
        adds_bos=True,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        aliases=("llama-31", "llama3.1"),
        extra_stop_tokens=("<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>"),
    ),
    ChatTemplateSpec(
        "llama-3.2",
        "published/llama-3.2.jinja",
        stop_token="<|eot_id|>",
        instruction_part=_LLAMA3_USER,
        response_part=_LLAMA3_ASSISTANT,
        adds_bos=True,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        aliases=("llama-32", "llama3.2"),
        extra_stop_tokens=("<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>"),
    ),
    ChatTemplateSpec(
        "mistral",
        "published/mistral.jinja",
        stop_token=None,
        instruction_part="[INST]",
        response_part="[/INST]",
        adds_bos=True,
        bos_token="<s>",
        eos_token="</s>",
        extra_stop_tokens=("[INST]",),
    ),
    ChatTemplateSpec(
        "gemma2",
        "published/gemma2.jinja",
        stop_token="<end_of_turn>",
        instruction_part=_GEMMA_USER,
        response_part=_GEMMA_MODEL,
        adds_bos=True,
        bos_token="<bos>",
        eos_token="<eos>",
        supports_system=False,
        aliases=("gemma-2",),
        extra_stop_tokens=("<start_of_turn>",),
    ),
    ChatTemplateSpec(
        "gemma",
        "published/gemma2.jinja",
        stop_token="<end_of_turn>",
        instruction_part=_GEMMA_USER,
        response_part=_GEMMA_MODEL,
        adds_bos=True,
        bos_token="<bos>",
        eos_token="<eos>",
        supports_system=False,
        extra_stop_tokens=("<start_of_turn>",),
    ),
    ChatTemplateSpec(
        "gemma-3",
        "published/gemma-3.jinja",
        stop_token="<end_of_turn>",
        instruction_part=_GEMMA_USER,
        response_part=_GEMMA_MODEL,
        adds_bos=True,
        bos_token="<bos>",
        eos_token="<eos>",
        aliases=("gemma3",),
        extra_stop_tokens=("<start_of_turn>",),
    ),
    ChatTemplateSpec(
        "qwen-2.5",
        "published/qwen-2.5.jinja",
        stop_token="<|im_end|>",
        instruction_part=_CHATML_USER,
        response_part=_CHATML_ASSISTANT,
        eos_token="<|im_end|>",
        default_system_message="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        aliases=("qwen-25", "qwen25", "qwen2.5"),
        extra_stop_tokens=("<|im_start|>", "<|endoftext|>"),
    ),
    ChatTemplateSpec(
        "qwen-3",
        "published/qwen-3.jinja",
        stop_token="<|im_end|>",
        instruction_part=_CHATML_USER,
        response_part=_CHATML_ASSISTANT,
        eos_token="<|im_end|>",
        aliases=("qwen3",),
        extra_stop_tokens=("<|im_start|>", "<|endoftext|>"),
    ),
    ChatTemplateSpec(
        "phi-3",
        "published/phi-3.jinja",
        stop_token="<|end|>",
        instruction_part="<|user|>\n",
        response_part="<|assistant|>\n",
        bos_token="<s>",
        eos_token="<|endoftext|>",
        extra_stop_tokens=("<|user|>", "<|assistant|>", "<|endoftext|>"),
    ),
    ChatTemplateSpec(
        "phi-3.5",
        "published/phi-3.5.jinja",
        stop_token="<|end|>",
        instruction_part="<|user|>\n",
        response_part="<|assistant|>\n",
        bos_token="<s>",
        eos_token="<|endoftext|>",
        aliases=("phi-35",),
        extra_stop_tokens=("<|user|>", "<|assistant|>", "<|endoftext|>"),
    ),
    ChatTemplateSpec(
        "phi-4",
        "published/phi-4.jinja",
        stop_token="<|im_end|>",
        instruction_part="<|im_start|>user<|im_sep|>",
        response_part="<|im_start|>assistant<|im_sep|>",
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        extra_stop_tokens=("<|im_start|>", "<|im_sep|>"),
    ),
    ChatTemplateSpec(
        "zephyr",
        "published/zephyr.jinja",
        stop_token=None,
        instruction_part="<|user|>\n",
        response_part="<|assistant|>\n",
        bos_token="<s>",
        eos_token="</s>",
        extra_stop_tokens=("<|user|>", "<|assistant|>", "<|system|>"),
    ),
    ChatTemplateSpec(
        "gpt-oss",
        "published/gpt-oss.jinja",
        # the harmony format: the last (trained) assistant turn ends with <|return|>, earlier ones with
        # <|end|>; responses are the final-channel answers (as Unsloth's gpt-oss recipe masks them)
        stop_token="<|return|>",
        instruction_part="<|start|>user<|message|>",
        response_part="<|start|>assistant<|channel|>final<|message|>",
        bos_token="<|startoftext|>",
        eos_token="<|return|>",
        aliases=("gpt_oss", "harmony"),
        extra_stop_tokens=("<|call|>", "<|endoftext|>"),
        ollama=False,
    ),
    ChatTemplateSpec(
        "alpaca",
        "loris/alpaca.jinja",
        stop_token=None,
        instruction_part="### Instruction:\n",
        response_part="### Response:\n",
        default_system_message=(
            "Below are some instructions that describe some tasks. "
            "Write responses that appropriately complete each request."
        ),
        published=False,
        extra_stop_tokens=("### Instruction:", "### Response:"),
    ),
    ChatTemplateSpec(
        "vicuna",
        "loris/vicuna.jinja",
        stop_token=None,
        instruction_part="USER:",
        response_part="ASSISTANT:",
        default_system_message=(
            "A chat between a curious user and an artificial intelligence assistant. "
            "The assistant gives helpful, detailed, and polite answers to the user's questions."
        ),
        published=False,
        extra_stop_tokens=("USER:", "ASSISTANT:"),
    ),
    ChatTemplateSpec(
        "unsloth",
        "loris/unsloth.jinja",
        stop_token=None,
        instruction_part=">>> User:",
        response_part=">>> Assistant:",
        default_system_message="You are a helpful assistant to the user",
        published=False,
        extra_stop_tokens=(">>> User:",),
    ),
)

TEMPLATES: dict[str, ChatTemplateSpec] = {spec.name: spec for spec in _SPECS}
_ALIASES: dict[str, str] = {alias: spec.name for spec in _SPECS for alias in spec.aliases}


def template_names(include_aliases: bool = True) -> list[str]:
    """Every name ``get_chat_template`` accepts, sorted."""
    names = list(TEMPLATES) + (list(_ALIASES) if include_aliases else [])
    return sorted(names)


def resolve_template(name: str) -> ChatTemplateSpec:
    """Look a template up by name or alias (case-insensitive); unknown names list the valid ones."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in TEMPLATES:
        raise ValueError(
            f"Unknown chat template {name!r}. Choose one of: {', '.join(template_names())}; "
            "or pass a (jinja_template, eos_token) tuple for a custom template."
        )
    return TEMPLATES[key]


def spec_for_template_text(template: str) -> ChatTemplateSpec | None:
    """The registry entry whose text is exactly ``template`` (the first one, for shared files)."""
    for spec in _SPECS:
        if spec.template == template:
            return spec
    return None
