"""Preference data (DPO, ORPO, SimPO/CPO, KTO): TRL's dataset formats → token ids → padded batches.

Paired rows have ``prompt``/``chosen``/``rejected`` as text, or as conversations (lists of
``{"role", "content"}`` messages, rendered with the tokenizer's chat template); without a ``prompt``
column the prompt is the longest shared run of messages at the start of ``chosen`` and ``rejected``
(TRL's ``extract_prompt``). Unpaired rows (KTO) have ``prompt``/``completion``/``label`` (bool).

Tokenizing follows TRL 1.15's ``DPOTrainer._prepare_dataset``: text completions get the EOS token
appended when missing; prompt and prompt+completion are tokenized whole, and the completion starts
where the two token lists diverge (so a BPE merge across the boundary cannot misplace it). Rows whose
prompt alone fills ``max_length`` are dropped, since nothing of their completion would be left.

Batches are right-padded rows (the layout the losses read); with ``padding_free`` the trainers run
the model on `flatten_rows` of them instead: every real token of the batch in one row, no padding.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from loris.data._rows import column, column_names, filter_rows, is_hf_dataset, map_rows

PAIRED_COLUMNS = ("prompt", "chosen", "rejected")
UNPAIRED_COLUMNS = ("prompt", "completion", "label")


@dataclass
class PreferenceSpec:
    """Lengths applied while tokenizing. ``max_prompt_length`` keeps a prompt's end (older TRL and
    Unsloth notebooks set it); ``max_completion_length`` keeps a completion's start."""

    max_length: int | None = 1024
    max_prompt_length: int | None = None
    max_completion_length: int | None = None
    num_proc: int | None = None


def is_conversation(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and "role" in value[0]


def check_columns(data: Any, needed: Sequence[str], trainer: str) -> None:
    """Stop with a message that names the missing column(s) and the formats that are understood."""
    have = column_names(data)
    missing = [c for c in needed if c not in have]
    if missing:
        paired = needed[1:] == ("chosen", "rejected") or tuple(needed) == ("chosen", "rejected")
        form = (
            "'prompt', 'chosen' and 'rejected' (text, or lists of chat messages; 'prompt' may be left out "
            "when chosen/rejected are whole conversations sharing their first turns)"
            if paired
            else "'prompt', 'completion' and 'label' (True for a desirable completion, False otherwise)"
        )
        raise ValueError(
            f"{trainer} needs the column(s) {missing} in the dataset, which has {have}. Its rows must hold "
            f"{form}. Rename your columns, e.g. dataset.rename_column('question', 'prompt')."
        )


def split_shared_prompt(row: dict) -> dict:
    """TRL's ``extract_prompt``: the prompt is the longest common leading run of chosen and rejected
    (messages, or characters for text, where a space right before the split stays with the answer)."""
    chosen, rejected = row["chosen"], row["rejected"]
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if isinstance(chosen, str) and 0 < n < min(len(chosen), len(rejected)) and chosen[n - 1] == " ":
        n -= 1
    return {"prompt": chosen[:n], "chosen": chosen[n:], "rejected": rejected[n:]}


def _encode(tokenizer, value: Any, add_generation_prompt: bool = False) -> list[int]:
    if is_conversation(value):
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(
                "The dataset holds conversations but the tokenizer has no chat template: set one with "
                "loris.chat_templates.get_chat_template(tokenizer, 'chatml') (or the model's template)."
            )
        out = tokenizer.apply_chat_template(
            value, tokenize=True, return_dict=True, add_generation_prompt=add_generation_prompt
        )
        return list(out["input_ids"])
    if not isinstance(value, str):
        raise TypeError(
            f"A prompt/completion must be text or a list of chat messages, got {type(value).__name__}."
        )
    return list(tokenizer(text=value)["input_ids"])


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _with_eos(text: Any, eos: str | None) -> Any:
    if isinstance(text, str) and eos and not text.endswith(eos):
        return text + eos
    return text


class _Tokenizer:
    """Tokenizes one prompt and its completions; counts prompts that do not prefix their completions."""

    def __init__(self, tokenizer, spec: PreferenceSpec):
        self.tok, self.spec = tokenizer, spec
        self.shifted = 0

    def __call__(self, prompt: Any, completions: list[Any]) -> tuple[list[int], list[list[int]]]:
        conversational = is_conversation(prompt)
        eos = getattr(self.tok, "eos_token", None)
        prompt_ids = _encode(self.tok, prompt, add_generation_prompt=conversational)
        full = []
        for c in completions:
            whole = prompt + c if conversational else prompt + _with_eos(c, eos)
            full.append(_encode(self.tok, whole))
        n = min(_common_prefix(prompt_ids, f) for f in full)
        if n < len(prompt_ids):
            self.shifted += 1
        prompt_ids = prompt_ids[:n]
        comps = [f[n:] for f in full]
        if self.spec.max_prompt_length is not None:
            prompt_ids = prompt_ids[-self.spec.max_prompt_length :] if self.spec.max_prompt_length else []
        if self.spec.max_completion_length is not None:
            comps = [c[: self.spec.max_completion_length] for c in comps]
        return prompt_ids, comps


def _drop_full_prompts(data: Any, spec: PreferenceSpec) -> Any:
    if spec.max_length is None:
        return data
    keep = [len(r["prompt_ids"]) < spec.max_length for r in data]
    if not all(keep):
        warnings.warn(
            f"{keep.count(False)} row(s) have a prompt of max_length={spec.max_length} tokens or more and were "
            "dropped (no completion token would be left). Raise max_length or shorten the prompts.",
            stacklevel=3,
        )
        data = filter_rows(data, keep)
    return data


def _warn_shifted(tok: _Tokenizer) -> None:
    if tok.shifted:
        warnings.warn(
            f"In {tok.shifted} row(s) the tokenized prompt is not a prefix of prompt+completion (the chat "
            "template renders the prompt differently alone, or tokens merge across the boundary): the "
            "completion starts where they diverge, as in TRL.",
            stacklevel=3,
        )


def tokenize_pairs(data: Any, tokenizer, spec: PreferenceSpec, trainer: str = "DPOTrainer") -> Any:
    """Rows with ``prompt_ids``, ``chosen_ids``, ``rejected_ids`` (other columns are dropped)."""
    have = column_names(data)
    if "prompt_ids" in have and "chosen_ids" in have and "rejected_ids" in have:
        return data  # already tokenized
    check_columns(data, ("chosen", "rejected"), trainer)
    if "prompt" not in have:
        data = map_rows(data, split_shared_prompt)
    check_columns(data, PAIRED_COLUMNS, trainer)
    tok = _Tokenizer(tokenizer, spec)

    def encode(row: dict) -> dict:
        prompt_ids, (chosen, rejected) = tok(row["prompt"], [row["chosen"], row["rejected"]])
        return {"prompt_ids": prompt_ids, "chosen_ids": chosen, "rejected_ids": rejected}

    drop = [c for c in column_names(data) if c not in ("ref_chosen_logps", "ref_rejected_logps")]
    data = map_rows(data, encode, remove_columns=drop)
    _warn_shifted(tok)
    return _drop_full_prompts(data, spec)


def tokenize_unpaired(data: Any, tokenizer, spec: PreferenceSpec, trainer: str = "KTOTrainer") -> Any:
    """Rows with ``prompt_ids``, ``completion_ids`` and ``label`` (KTO)."""
    have = column_names(data)
    if "prompt_ids" in have and "completion_ids" in have and "label" in have:
        return data
    check_columns(data, UNPAIRED_COLUMNS, trainer)
    tok = _Tokenizer(tokenizer, spec)

    def encode(row: dict) -> dict:
        prompt_ids, (completion,) = tok(row["prompt"], [row["completion"]])
        return {"prompt_ids": prompt_ids, "completion_ids": completion, "label": bool(row["label"])}

    data = map_rows(data, encode, remove_columns=column_names(data))
    _warn_shifted(tok)
    return _drop_full_prompts(data, spec)


def add_columns(data: Any, columns: dict[str, list[Any]]) -> Any:
    """``data`` with these columns added (or replaced), in row order."""
    if is_hf_dataset(data):
        for name, values in columns.items():
            if name in data.column_names:
                data = data.remove_columns(name)
            data = data.add_column(name, values)
        return data
    return [{**row, **{k: v[i] for k, v in columns.items()}} for i, row in enumerate(data)]


def add_kl_completions(data: Any, group: int) -> Any:
    """KTO's mismatched pairs, as TRL builds them: within each run of ``group`` rows (in dataset
    order), row i gets the completion of row i-1 (the first gets the last one's) as
    ``KL_completion_ids``. Fixed per row, so reference log-probs of the KL pairs can be precomputed."""
    comps = column(data, "completion_ids")
    kl: list[list[int]] = []
    for start in range(0, len(comps), group):
        chunk = comps[start : start + group]
        kl.extend(chunk[-1:] + chunk[:-1])
    return add_columns(data, {"KL_completion_ids": kl})


# -------------------------------------------------------------------------------------------- collating
def _pad(seqs: list[list[int]], value: int, multiple: int | None) -> torch.Tensor:
    width = max((len(s) for s in seqs), default=0)
    if multiple:
        width = -(-width // multiple) * multiple
    out = torch.full((len(seqs), max(width, 1)), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def _sequences(
    prompts: list[list[int]], completions: list[list[int]], max_length: int | None, pad_id: int, multiple
) -> dict[str, torch.Tensor]:
    """Right-padded prompt+completion rows, cut to ``max_length`` from the end (TRL's keep_start)."""
    ids, comp = [], []
    for p, c in zip(prompts, completions, strict=True):
        seq, mask = p + c, [0] * len(p) + [1] * len(c)
        if max_length is not None:
            seq, mask = seq[:max_length], mask[:max_length]
        ids.append(seq)
        comp.append(mask)
    return {
        "input_ids": _pad(ids, pad_id, multiple),
        "attention_mask": _pad([[1] * len(s) for s in ids], 0, multiple),
        "completion_mask": _pad(comp, 0, multiple),
    }


@dataclass
class PreferenceCollator:
    """Pairs → one batch of 2·B rows: the B chosen sequences, then the B rejected ones (TRL's layout),
    so the policy and the reference each run once per micro-batch. Precomputed reference log-probs
    (``ref_chosen_logps``/``ref_rejected_logps``) ride along."""

    pad_token_id: int
    max_length: int | None = None
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        prompts = [r["prompt_ids"] for r in rows] * 2
        completions = [r["chosen_ids"] for r in rows] + [r["rejected_ids"] for r in rows]
        out = _sequences(prompts, completions, self.max_length, self.pad_token_id, self.pad_to_multiple_of)
        for key in ("ref_chosen_logps", "ref_rejected_logps"):
            if key in rows[0]:
                out[key] = torch.tensor([float(r[key]) for r in rows], dtype=torch.float32)
        return out


@dataclass
class UnpairedCollator:
    """KTO rows → prompt+completion batch, plus (``with_kl``) the KL batch: each prompt with a
    mismatched completion (the row's ``KL_completion_ids``, else the previous row's in the batch),
    whose log-ratio estimates the KL term."""

    pad_token_id: int
    max_length: int | None = None
    pad_to_multiple_of: int | None = None
    with_kl: bool = True

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        prompts = [r["prompt_ids"] for r in rows]
        completions = [r["completion_ids"] for r in rows]
        out = _sequences(prompts, completions, self.max_length, self.pad_token_id, self.pad_to_multiple_of)
        if self.with_kl:
            if "KL_completion_ids" in rows[0]:
                rotated = [r["KL_completion_ids"] for r in rows]
            else:
                rotated = completions[-1:] + completions[:-1]
            kl = _sequences(prompts, rotated, self.max_length, self.pad_token_id, self.pad_to_multiple_of)
            out.update({f"KL_{k}": v for k, v in kl.items()})
        out["label"] = torch.tensor([bool(r["label"]) for r in rows])
        for key in ("ref_logps", "ref_KL_logps"):
            if key in rows[0]:
                out[key] = torch.tensor([float(r[key]) for r in rows], dtype=torch.float32)
        return out


def flatten_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The padding-free layout of a padded batch: its real tokens, row after row, as one row
    (1, sum of real lengths), and position ids restarting at 0 for each row. As with SFT's packing
    (`loris.data.sft.pack_dataset`), the model reads the restarts as sequence boundaries and keeps
    attention inside each sequence, so every sequence gets the hidden states it gets alone."""
    real = attention_mask.bool()
    positions = attention_mask.long().cumsum(-1) - 1
    return input_ids[real][None], positions[real][None]
