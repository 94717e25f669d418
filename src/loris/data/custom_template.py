"""``apply_chat_template``: a chat template from a plain-text ``{INPUT}`` / ``{OUTPUT}`` example.

Users write one example turn (optionally two, to show exactly what goes between turns), e.g.::

    Below are some instructions that describe some tasks. Write responses that appropriately complete each request.

    ### Instruction:
    {INPUT}

    ### Response:
    {OUTPUT}

We parse it into pieces (``CustomChatTemplate``), build the equivalent Jinja chat template, set it on
the tokenizer and add a ``text`` column. The pieces are stored in a comment at the head of the Jinja
text so that exporters (an Ollama ``TEMPLATE``) can rebuild them from a saved tokenizer.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from loris.data._rows import Rows, column_names, head, is_hf_dataset
from loris.data.chat_templates import jinja_string

__all__ = ["CustomChatTemplate", "apply_chat_template", "custom_template_of", "DEFAULT_INSTRUCTION_TEMPLATE"]

DEFAULT_INSTRUCTION_TEMPLATE = (
    "Below are some instructions that describe some tasks. Write responses that appropriately complete "
    "each request.\n\n### Instruction:\n{INPUT}\n\n### Response:\n{OUTPUT}"
)

_IN, _OUT, _SYS = "{INPUT}", "{OUTPUT}", "{SYSTEM}"
_META_START, _META_END = "{#- loris-custom ", " #}"


def _split_last_line(text: str) -> tuple[str, str]:
    """("head", "last line with its trailing newlines"): where a turn marker starts in the prefix."""
    core = text.rstrip("\n")
    cut = core.rfind("\n")
    return ("", text) if cut == -1 else (text[: cut + 1], text[cut + 1 :])


def _trailing_ws(text: str) -> str:
    return text[len(text.rstrip()) :]


def _leading_ws(text: str) -> str:
    return text[: len(text) - len(text.lstrip())]


@dataclass(frozen=True)
class CustomChatTemplate:
    """The pieces of an ``{INPUT}``/``{OUTPUT}`` template.

    A conversation renders as ``system_block`` (``system_prefix + system + system_suffix`` when the
    template has ``{SYSTEM}``, else the constant ``system_prefix``), then per user turn ``instruction``
    (``instruction_next`` after the first) + content, per assistant turn ``response`` + content + EOS +
    ``suffix`` (no EOS when ``suffix`` already holds it).
    """

    source: str
    system_prefix: str
    system_suffix: str
    has_system: bool
    instruction: str
    instruction_next: str
    response: str
    suffix: str
    default_system_message: str | None = None
    eos_in_suffix: bool = False
    extra_eos_tokens: tuple[str, ...] = field(default_factory=tuple)

    # Unsloth's names for the three parts of one turn.
    @property
    def prefix(self) -> str:
        """Everything before ``{INPUT}`` in the first turn."""
        system = self.system_prefix + (_SYS + self.system_suffix if self.has_system else "")
        return system + self.instruction

    @property
    def infix(self) -> str:
        return self.response

    @classmethod
    def parse(
        cls,
        template: str,
        default_system_message: str | None = None,
        eos_token: str | None = None,
        extra_eos_tokens: Sequence[str] = (),
    ) -> CustomChatTemplate:
        """Split ``template`` into pieces; errors say which placeholder is missing or misplaced."""
        n_in, n_out, n_sys = template.count(_IN), template.count(_OUT), template.count(_SYS)
        if n_in == 0 or n_out == 0:
            raise ValueError(
                "A custom chat_template needs {INPUT} (the user turn) and {OUTPUT} (the assistant turn), "
                f"optionally {{SYSTEM}}; got {template!r}."
            )
        if n_in != n_out or n_in > 2:
            raise ValueError(
                f"Write {{INPUT}} and {{OUTPUT}} once each (or twice each, to show two turns); found "
                f"{n_in} {{INPUT}} and {n_out} {{OUTPUT}}."
            )
        i1 = template.index(_IN)
        o1 = template.index(_OUT)
        if o1 < i1:
            raise ValueError("{OUTPUT} must come after {INPUT} in a custom chat_template.")
        if n_sys > 1 or (n_sys and template.index(_SYS) > i1):
            raise ValueError("{SYSTEM} may appear once, before the first {INPUT}.")
        if default_system_message is not None and not n_sys:
            raise ValueError("default_system_message needs a {SYSTEM} placeholder in the chat_template.")
        prefix = template[:i1]
        response = template[i1 + len(_IN) : o1]
        if n_in == 2:
            i2 = template.index(_IN, o1)
            o2 = template.index(_OUT, i2)
            if template[i2 + len(_IN) : o2] != response:
                raise ValueError(
                    "The two example turns differ between {INPUT} and {OUTPUT}; make them equal."
                )
            between = template[o1 + len(_OUT) : i2]
            suffix = template[o2 + len(_OUT) :]
            after = between[len(suffix) :] if suffix and between.startswith(suffix) else between
        else:
            suffix = template[o1 + len(_OUT) :]
            after = None
        if n_sys:
            s = prefix.index(_SYS)
            system_prefix = prefix[:s]
            system_suffix, instruction = _split_last_line(prefix[s + len(_SYS) :])
        else:
            system_prefix, instruction = _split_last_line(prefix)
            system_suffix = ""
        if after is None:  # one example turn: reuse the separator the template already uses
            block_end = system_suffix if n_sys else system_prefix
            sep = _trailing_ws(block_end) or _leading_ws(response)
            after = instruction if suffix[-1:].isspace() else sep + instruction
        return cls(
            source=template,
            system_prefix=system_prefix,
            system_suffix=system_suffix,
            has_system=bool(n_sys),
            instruction=instruction,
            instruction_next=after,
            response=response,
            suffix=suffix,
            default_system_message=default_system_message,
            eos_in_suffix=bool(eos_token) and eos_token in suffix,
            extra_eos_tokens=tuple(extra_eos_tokens),
        )

    def to_jinja(self) -> str:
        """The Jinja chat template, with the pieces stored in a leading comment."""
        q = jinja_string
        meta = json.dumps(asdict(self), ensure_ascii=False).replace("#}", "#\\u007d")
        default = "none" if self.default_system_message is None else q(self.default_system_message)
        out = [
            _META_START + meta + _META_END,
            "{%- if messages and messages[0]['role'] == 'system' %}"
            "{%- set system_message = messages[0]['content'] %}{%- set loop_messages = messages[1:] %}"
            f"{{%- else %}}{{%- set system_message = {default} %}}{{%- set loop_messages = messages %}}"
            "{%- endif %}",
        ]
        if self.has_system:
            out.append(
                "{%- if system_message %}"
                f"{{{{- {q(self.system_prefix)} + system_message + {q(self.system_suffix)} }}}}"
                "{%- endif %}"
            )
        else:
            out.append(
                "{%- if system_message %}{{- raise_exception('This chat template has no {SYSTEM} slot; add "
                "{SYSTEM} to it to train with system messages.') }}{%- endif %}"
            )
            if self.system_prefix:
                out.append(f"{{{{- {q(self.system_prefix)} }}}}")
        eos = "" if self.eos_in_suffix else " + eos_token"
        out.append(
            "{%- for message in loop_messages %}"
            "{%- if message['role'] == 'user' %}"
            f"{{{{- ({q(self.instruction)} if loop.first else {q(self.instruction_next)}) + message['content'] }}}}"
            "{%- elif message['role'] == 'assistant' %}"
            f"{{{{- {q(self.response)} + message['content']{eos} + {q(self.suffix)} }}}}"
            "{%- else %}{{- raise_exception('Only system, user and assistant roles are supported.') }}"
            "{%- endif %}{%- endfor %}"
            f"{{%- if add_generation_prompt %}}{{{{- {q(self.response)} }}}}{{%- endif %}}"
        )
        return "".join(out)

    @classmethod
    def from_jinja(cls, template: str) -> CustomChatTemplate | None:
        """Recover the pieces from a template made by ``to_jinja`` (None for any other template)."""
        if not template.startswith(_META_START):
            return None
        meta = json.loads(template[len(_META_START) : template.index(_META_END, len(_META_START))])
        meta["extra_eos_tokens"] = tuple(meta.get("extra_eos_tokens", ()))
        return cls(**meta)


def custom_template_of(tokenizer: Any) -> CustomChatTemplate | None:
    """The ``CustomChatTemplate`` that ``apply_chat_template`` put on this tokenizer, if any."""
    template = getattr(tokenizer, "chat_template", None)
    return CustomChatTemplate.from_jinja(template) if isinstance(template, str) else None


def _add_missing_tokens(tokenizer: Any, tokens: Sequence[str]) -> None:
    vocab = tokenizer.get_vocab()
    missing = [t for t in tokens if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
        warnings.warn(
            f"extra_eos_tokens {missing} were not in the vocabulary and were added as special tokens; resize "
            f"the model's embeddings (model.resize_token_embeddings({len(tokenizer)})).",
            stacklevel=3,
        )


def apply_chat_template(
    dataset: Rows,
    tokenizer: Any,
    chat_template: str | None = DEFAULT_INSTRUCTION_TEMPLATE,
    default_system_message: str | None = None,
    extra_eos_tokens: Sequence[str] | None = None,
) -> Rows:
    """Render each row's ``conversations`` into a new ``text`` column.

    ``chat_template`` is an ``{INPUT}``/``{OUTPUT}`` example (see module docstring); it is turned into a
    Jinja template and set on ``tokenizer`` (changed in place). ``None`` keeps the tokenizer's current
    template (e.g. one set by ``get_chat_template``). Conversations must use role/content keys: run
    ``standardize_sharegpt`` first on ShareGPT data.
    """
    if chat_template is not None:
        parsed = CustomChatTemplate.parse(
            chat_template, default_system_message, tokenizer.eos_token, extra_eos_tokens or ()
        )
        if extra_eos_tokens:
            _add_missing_tokens(tokenizer, list(extra_eos_tokens))
        tokenizer.chat_template = parsed.to_jinja()
    elif not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "The tokenizer has no chat template: pass chat_template or call get_chat_template first."
        )

    names = column_names(dataset)
    col = next((c for c in ("conversations", "messages") if c in names), None)
    if col is None:
        raise ValueError(f"No 'conversations' column (columns: {names}); build one with to_sharegpt first.")
    sample = [m for conv in head(dataset, col, 50) for m in (conv or [])]
    if sample and any(isinstance(m, dict) and m.get("role") is None for m in sample):
        raise ValueError(
            f"Messages in {col!r} have no 'role' key (keys: {sorted(sample[0])}); run standardize_sharegpt first."
        )

    def render(conv: list[dict]) -> str:
        return tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=False)

    if is_hf_dataset(dataset):
        return dataset.map(lambda batch: {"text": [render(c) for c in batch[col]]}, batched=True)
    return [{**row, "text": render(row[col])} for row in dataset]
