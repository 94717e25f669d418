"""Ollama Modelfile whose TEMPLATE renders exactly what the model was trained on.

Ollama's built-in templates often differ from a family's published chat template (default system
prompts, date headers, where Mistral puts the system text), so we write our own Go template per
registry family, plus one built from a custom ``{INPUT}``/``{OUTPUT}`` template. Ollama leaves BOS to the
tokenizer, so templates never write it. A Modelfile ``SYSTEM`` is inserted by Ollama as the system
message when a chat has none, which is how default system prompts are reproduced.

gpt-oss' harmony template has no Ollama form here (``ChatTemplateSpec.ollama``): it writes today's
date (``strftime_now``) into every prompt, and no reference Ollama template for it is at hand to check
one against, so its Modelfile has no TEMPLATE (with a warning).
"""

from __future__ import annotations

import warnings
from typing import Any

from loris.data.chat_templates import split_prologue
from loris.data.custom_template import CustomChatTemplate
from loris.data.registry import ChatTemplateSpec, resolve_template, spec_for_template_text

__all__ = ["modelfile_for", "ollama_template"]

_ROLE_TURNS = '{{- range .Messages }}{{ if eq .Role "user" }}'


def _chatml(eos: str) -> str:
    return "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"


def _llama3(eos: str) -> str:
    return (
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
        "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def _llama31(eos: str) -> str:
    # The published template always writes this header; "26 Jul 2024" is its date when none is passed.
    return (
        "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
        "Today Date: 26 Jul 2024\n\n{{ if .System }}{{ .System }}{{ end }}<|eot_id|>"
        '{{- range .Messages }}{{ if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n'
        "{{ .Content }}<|eot_id|>{{ end }}{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def _mistral(eos: str) -> str:
    # Mistral v0.3 puts the system text into the *last* user turn.
    return (
        "{{- range $i, $_ := .Messages }}{{- $last := eq (len (slice $.Messages $i)) 1 }}"
        '{{- if eq .Role "user" }}[INST] {{ if and $last $.System }}{{ $.System }}\n\n{{ end }}{{ .Content }}[/INST]'
        '{{- else if eq .Role "assistant" }} {{ .Content }}' + eos + "{{ end }}{{ end }}"
    )


def _gemma(eos: str) -> str:
    # Gemma 3 folds the system text into the first user turn (Gemma 2's own template refuses it).
    return (
        "{{- $first := true }}{{- range .Messages }}"
        '{{- if ne .Role "system" }}<start_of_turn>{{ if eq .Role "assistant" }}model{{ else }}{{ .Role }}{{ end }}\n'
        "{{ if and $first $.System }}{{ $.System }}\n\n{{ end }}{{ $first = false }}{{ .Content }}<end_of_turn>\n"
        "{{ end }}{{ end }}<start_of_turn>model\n"
    )


def _phi3(eos: str) -> str:
    return "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n"


def _phi35(eos: str) -> str:
    return (
        '{{- range .Messages }}{{ if or (ne .Role "system") .Content }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n'
        "{{ end }}{{ end }}<|assistant|>\n"
    )


def _phi4(eos: str) -> str:
    return (
        "{{- range .Messages }}<|im_start|>{{ .Role }}<|im_sep|>{{ .Content }}<|im_end|>{{ end }}"
        "<|im_start|>assistant<|im_sep|>"
    )


def _zephyr(eos: str) -> str:
    return "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}" + eos + "\n{{ end }}<|assistant|>\n"


def _instruction_format(sep: str, user: str, user_end: str, assistant: str, assistant_end: str, gen: str):
    def build(eos: str) -> str:
        return (
            "{{- if .System }}{{ .System }}" + sep + "{{ end }}"
            + _ROLE_TURNS + user + "{{ .Content }}" + user_end
            + '{{ else if eq .Role "assistant" }}' + assistant + "{{ .Content }}" + eos + assistant_end
            + "{{ end }}{{ end }}" + gen
        )  # fmt: skip

    return build


_GO_TEMPLATES = {
    "chatml": _chatml,
    "smollm2": _chatml,
    "qwen-2.5": _chatml,
    "qwen-3": _chatml,
    "llama-3": _llama3,
    "llama-3.1": _llama31,
    "llama-3.2": _llama31,
    "mistral": _mistral,
    "gemma": _gemma,
    "gemma2": _gemma,
    "gemma-3": _gemma,
    "phi-3": _phi3,
    "phi-3.5": _phi35,
    "phi-4": _phi4,
    "zephyr": _zephyr,
    "alpaca": _instruction_format(
        "\n\n", "### Instruction:\n", "\n\n", "### Response:\n", "\n\n", "### Response:\n"
    ),
    "vicuna": _instruction_format("\n\n", "USER: ", "\n", "ASSISTANT: ", "\n", "ASSISTANT:"),
    "unsloth": _instruction_format("\n", ">>> User: ", "\n", ">>> Assistant: ", "\n", ">>> Assistant: "),
}


def _go_literal(text: str) -> str:
    """Literal text for a Go template: only ``{{`` needs escaping."""
    return text.replace("{{", '{{ "{{" }}')


def _custom_go_template(custom: CustomChatTemplate, eos: str) -> str:
    lit = _go_literal
    if custom.has_system:
        head = (
            "{{- if .System }}"
            + lit(custom.system_prefix)
            + "{{ .System }}"
            + lit(custom.system_suffix)
            + "{{ end }}"
        )
    else:
        head = lit(custom.system_prefix)
    end = "" if custom.eos_in_suffix else lit(eos)
    return (
        head + "{{ $first := true }}" + _ROLE_TURNS
        + "{{ if $first }}" + lit(custom.instruction) + "{{ else }}" + lit(custom.instruction_next) + "{{ end }}"
        + '{{ .Content }}{{ else if eq .Role "assistant" }}' + lit(custom.response) + "{{ .Content }}" + end
        + lit(custom.suffix) + '{{ end }}{{ if ne .Role "system" }}{{ $first = false }}{{ end }}{{ end }}'
        + lit(custom.response)
    )  # fmt: skip


def ollama_template(chat_template: str | Any) -> tuple[str, str | None, tuple[str, ...]] | None:
    """(Go TEMPLATE, default SYSTEM, stop strings) for a registry name or a tokenizer; None if unknown."""
    system: str | None = None
    if isinstance(chat_template, str):
        spec = resolve_template(chat_template)
        if not spec.ollama:
            return None
        eos = spec.eos_token or "</s>"
        return _GO_TEMPLATES[spec.name](eos), spec.default_system_message, _stops(spec, eos)
    template = getattr(chat_template, "chat_template", None)
    if not isinstance(template, str):
        return None
    eos = getattr(chat_template, "eos_token", None) or "</s>"
    settings, base = split_prologue(template)
    if settings is not None:
        system = settings.system_message
    custom = CustomChatTemplate.from_jinja(base)
    if custom is not None:
        stops = (eos, *custom.extra_eos_tokens, custom.instruction.strip(), custom.response.strip())
        if system is None:
            system = custom.default_system_message
        return _custom_go_template(custom, eos), system, tuple(dict.fromkeys(s for s in stops if s))
    spec = spec_for_template_text(base)
    if spec is None or not spec.ollama:
        return None
    if system is None:
        system = spec.default_system_message
    return _GO_TEMPLATES[spec.name](eos), system, _stops(spec, eos)


def _stops(spec: ChatTemplateSpec, eos: str) -> tuple[str, ...]:
    stops = [spec.stop_token or eos, *spec.extra_stop_tokens]
    return tuple(dict.fromkeys(s for s in stops if s))


def _quoted(text: str, what: str) -> str:
    if '"""' in text:
        raise ValueError(f'The {what} contains """, which a Modelfile cannot quote.')
    return '"""' + text + '"""'


def modelfile_for(
    tokenizer_or_template_name: Any,
    gguf_filename: str,
    system_message: str | None = None,
    parameters: dict[str, Any] | None = None,
) -> str:
    """An Ollama Modelfile for ``gguf_filename`` with a TEMPLATE matching the chat template.

    ``tokenizer_or_template_name`` is a registry name or a tokenizer whose template came from
    ``get_chat_template`` / ``apply_chat_template``. Anything else gets a warning and a Modelfile without
    TEMPLATE (Ollama then guesses one, which may not match training). ``system_message`` overrides the
    default SYSTEM; ``parameters`` adds ``PARAMETER`` lines (e.g. ``{"temperature": 1.5}``).
    """
    lines = [f"FROM {gguf_filename}"]
    found = ollama_template(tokenizer_or_template_name)
    stops: tuple[str, ...] = ()
    if found is None:
        warnings.warn(
            "The tokenizer's chat template is not one loris knows how to express as an Ollama template; the "
            "Modelfile has no TEMPLATE. Use get_chat_template(...) or apply_chat_template(...) before export, "
            "or add a TEMPLATE by hand.",
            stacklevel=2,
        )
        eos = getattr(tokenizer_or_template_name, "eos_token", None)
        stops = (eos,) if eos else ()
        system = system_message
    else:
        template, default_system, stops = found
        system = system_message if system_message is not None else default_system
        try:
            lines.append("TEMPLATE " + _quoted(template, "chat template"))
        except ValueError as err:
            warnings.warn(f"{err} The Modelfile has no TEMPLATE.", stacklevel=2)
    if system:
        lines.append("SYSTEM " + _quoted(system, "system message"))
    lines += [f'PARAMETER stop "{s}"' for s in stops if '"' not in s and "\n" not in s]
    for key, value in (parameters or {}).items():
        lines.append(f"PARAMETER {key} {value}")
    return "\n".join(lines) + "\n"
