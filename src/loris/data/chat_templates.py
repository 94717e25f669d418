"""``get_chat_template``: put a named (or custom) chat template on a tokenizer, Unsloth-style.

Published templates are set byte-for-byte. Two options need the messages changed before the template
sees them: ``mapping`` (ShareGPT keys such as ``from``/``value``, ``human``/``gpt``) and
``system_message`` (a default system prompt). Rather than editing the published text, we put a short
Jinja *prologue* in front of it that rewrites ``messages``; ``split_prologue`` recovers both parts.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from loris.data.registry import ChatTemplateSpec, resolve_template, spec_for_template_text

__all__ = [
    "DEFAULT_MAPPING",
    "MessageMapping",
    "PrologueSettings",
    "get_chat_template",
    "wrap_template",
    "split_prologue",
    "spec_for_tokenizer",
    "jinja_string",
]

DEFAULT_MAPPING: dict[str, str] = {
    "role": "role",
    "content": "content",
    "user": "user",
    "assistant": "assistant",
}

_PROLOGUE_START = "{#- loris-prologue "
_PROLOGUE_META_END = " #}"
_PROLOGUE_END = "{#- end loris-prologue #}{{- '' }}"


@dataclass(frozen=True)
class MessageMapping:
    """Which message keys and role values the data uses (``mapping`` argument of ``get_chat_template``)."""

    role: str = "role"
    content: str = "content"
    user: str = "user"
    assistant: str = "assistant"
    system: str = "system"

    @classmethod
    def from_dict(cls, mapping: Mapping[str, str] | None) -> MessageMapping:
        mapping = dict(mapping or {})
        unknown = set(mapping) - {"role", "content", "user", "assistant", "system"}
        if unknown:
            raise ValueError(
                f"mapping has unknown keys {sorted(unknown)}; use role, content, user, assistant, system, "
                'e.g. {"role": "from", "content": "value", "user": "human", "assistant": "gpt"}.'
            )
        return cls(**mapping)

    @property
    def is_identity(self) -> bool:
        return self == MessageMapping()


@dataclass(frozen=True)
class PrologueSettings:
    """What a loris prologue does to ``messages`` before the wrapped template renders them."""

    mapping: MessageMapping = MessageMapping()
    system_message: str | None = None


def jinja_string(text: str) -> str:
    """``text`` as a Jinja string literal (JSON escapes are valid Jinja escapes)."""
    return json.dumps(text, ensure_ascii=False)


def wrap_template(
    template: str, mapping: Mapping[str, str] | None = None, system_message: str | None = None
) -> str:
    """Return ``template`` preceded by a prologue that maps message keys/roles and adds a default system.

    With the default mapping and no system message the template is returned unchanged. An existing
    loris prologue is replaced, so wrapping twice does not stack.
    """
    _, template = split_prologue(template)
    mm = MessageMapping.from_dict(mapping)
    if mm.is_identity and system_message is None:
        return template
    meta = json.dumps({"mapping": asdict(mm), "system_message": system_message}, ensure_ascii=False)
    parts = [_PROLOGUE_START, meta.replace("#}", "#\\u007d"), _PROLOGUE_META_END]
    if not mm.is_identity:
        q = jinja_string
        role_of = f"(m[{q(mm.role)}] if {q(mm.role)} in m else m['role'])"
        content_of = f"(m[{q(mm.content)}] if {q(mm.content)} in m else m['content'])"
        parts.append(
            "{%- set loris_ns = namespace(messages=[]) %}"
            "{%- for m in messages %}"
            f"{{%- set r = {role_of} %}}"
            f"{{%- if r == {q(mm.user)} %}}{{%- set r = 'user' %}}"
            f"{{%- elif r == {q(mm.assistant)} %}}{{%- set r = 'assistant' %}}"
            f"{{%- elif r == {q(mm.system)} %}}{{%- set r = 'system' %}}{{%- endif %}}"
            f"{{%- set loris_ns.messages = loris_ns.messages + [{{'role': r, 'content': {content_of}}}] %}}"
            "{%- endfor %}"
            "{%- set messages = loris_ns.messages %}"
        )
    if system_message is not None:
        parts.append(
            "{%- if messages | length == 0 or messages[0]['role'] != 'system' %}"
            f"{{%- set messages = [{{'role': 'system', 'content': {jinja_string(system_message)}}}] + messages %}}"
            "{%- endif %}"
        )
    parts.append(_PROLOGUE_END)
    return "".join(parts) + template


def split_prologue(template: str) -> tuple[PrologueSettings | None, str]:
    """Split a template made by ``wrap_template`` into (settings, wrapped template); (None, t) otherwise."""
    if not template.startswith(_PROLOGUE_START):
        return None, template
    meta_end = template.index(_PROLOGUE_META_END, len(_PROLOGUE_START))
    end = template.index(_PROLOGUE_END, meta_end)
    meta = json.loads(template[len(_PROLOGUE_START) : meta_end])
    settings = PrologueSettings(MessageMapping(**meta["mapping"]), meta["system_message"])
    return settings, template[end + len(_PROLOGUE_END) :]


def spec_for_tokenizer(tokenizer: Any) -> ChatTemplateSpec | None:
    """The registry entry whose template the tokenizer carries (prologue ignored), if any."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        return None
    return spec_for_template_text(split_prologue(template)[1])


def _vocab_has(tokenizer: Any, token: str) -> bool:
    return token in tokenizer.get_vocab()


def _map_eos(tokenizer: Any, stop_token: str) -> None:
    if tokenizer.eos_token == stop_token and _vocab_has(tokenizer, stop_token):
        return
    if _vocab_has(tokenizer, stop_token):
        # Reuse the existing token: no new embedding row, nothing untrained.
        tokenizer.eos_token = stop_token
        return
    tokenizer.add_special_tokens({"eos_token": stop_token})
    warnings.warn(
        f"The chat template's stop token {stop_token!r} was not in the vocabulary; it was added as a new "
        f"special token and made the EOS. Resize the model's embeddings "
        f"(model.resize_token_embeddings({len(tokenizer)})) and train them, or pick a template whose stop "
        "token the model already knows.",
        stacklevel=3,
    )


def get_chat_template(
    tokenizer: Any,
    chat_template: str | tuple[str, str] = "chatml",
    mapping: Mapping[str, str] | None = None,
    map_eos_token: bool = True,
    system_message: str | None = None,
) -> Any:
    """Set ``tokenizer.chat_template`` to a named template (or a ``(jinja, eos_token)`` tuple).

    The tokenizer is changed in place and returned. ``map_eos_token`` makes the template's stop token the
    tokenizer's EOS so generation stops where training taught it to; an existing vocabulary entry is
    reused (no new token), a missing one is added with a warning that embeddings must be resized.
    ``mapping`` lets ShareGPT-style messages (``from``/``value``, ``human``/``gpt``) render directly;
    ``system_message`` sets the default system prompt used when a conversation has none.
    """
    if isinstance(chat_template, tuple):
        if len(chat_template) != 2 or not all(isinstance(x, str) for x in chat_template):
            raise ValueError("A custom chat_template must be a (jinja_template: str, eos_token: str) tuple.")
        template, stop_token = chat_template
        name = "custom"
    elif isinstance(chat_template, str):
        spec = resolve_template(chat_template)
        if system_message is not None and not spec.supports_system:
            raise ValueError(
                f"The {spec.name!r} template rejects system messages, so system_message cannot be used with it; "
                "put the instruction in the first user turn, or use 'gemma-3', which folds the system prompt "
                "into the first user turn."
            )
        template, stop_token, name = spec.template, spec.stop_token, spec.name
    else:
        raise TypeError(
            f"chat_template must be a template name or a (jinja, eos_token) tuple, not {type(chat_template)}."
        )

    if stop_token is not None:
        if map_eos_token:
            _map_eos(tokenizer, stop_token)
        elif not _vocab_has(tokenizer, stop_token):
            warnings.warn(
                f"The {name!r} template ends turns with {stop_token!r}, which is not a token of this tokenizer: "
                "it will be split into pieces and generation will not stop on it. Pass map_eos_token=True.",
                stacklevel=2,
            )
    tokenizer.chat_template = wrap_template(template, mapping, system_message)
    return tokenizer
