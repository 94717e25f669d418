"""One way out for every export: write each artifact atomically, validate it if asked, upload it if asked.

The model's methods (`loris.face.model`), the Hub pushes and ``loris export`` all go through here,
so an artifact is written, checked and uploaded the same way whoever asks:

* `write`: one artifact (``lora`` adapter, ``merged_16bit``, ``merged_32bit``, ``merged_4bit_forced``
  or ``gguf``)
  into a folder, with the exporter that owns its format (`loris.peft_format`, `loris.export.hf`,
  `loris.export.gguf`); each writes to a temporary name and renames it into place.
* `check`: reload what was written and compare it with the model (`loris.export.validate`),
  raising `ExportValidationError` on a mismatch, before anything is uploaded.
* `upload`: a model card, then the folder to a Hub repo (`loris.export.hub`).

`save` is write then check; `push` is write into a temporary folder, check, then upload.

Under several processes (torchrun) each of `write`, `save` and `push` runs on rank 0 alone while the
others wait, and every rank gets rank 0's result (`loris.distributed.env.on_main_process`). A model
sharded with FSDP2 is first gathered to rank 0's CPU by every rank, and rank 0 exports a plain copy
of it (`loris.export.sharded`).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loris.distributed.wrap import export_on_main_process
from loris.export import hub
from loris.export.sharded import check_sharded, unsharded_copy

_on_main_process = export_on_main_process(check_sharded=check_sharded, unsharded=unsharded_copy)

ARTIFACTS = ("lora", "merged_16bit", "merged_32bit", "merged_4bit_forced", "gguf")
REPO_SUFFIXES = {
    "lora": "",
    "merged_16bit": "",
    "merged_32bit": "-fp32",
    "merged_4bit_forced": "-bnb-4bit",
    "gguf": "-GGUF",
}
"""``loris export --push-to-hub REPO``: the first artifact goes to REPO, each further one to REPO plus
its suffix (a Hub repo holds one model)."""


@dataclass(frozen=True)
class Written:
    """One file or folder an export wrote. ``label`` is what users see ("merged_16bit",
    "gguf q4_k_m", "ollama Modelfile"); ``kind`` is what `check` validates it as."""

    label: str
    path: Path
    kind: str


@_on_main_process
def write(
    model,
    tokenizer: Any,
    what: str,
    folder: str | Path,
    *,
    quantization_method: str | Sequence[str] | None = "fast_quantized",
    name: str | None = None,
    max_shard_size: int | str = "5GB",
    first_conversion: str | None = None,
    backend: str = "loris",
) -> list[Written]:
    """Write one artifact into ``folder``; returns what was written (a GGUF export: each file, then
    the Ollama Modelfile when one was written). ``what`` takes `save_pretrained_merged`'s
    ``save_method`` spellings for the merged forms."""
    kind = str(what).lower()
    if kind == "gguf":
        from loris.export.gguf import save_gguf

        paths = save_gguf(
            model,
            folder,
            tokenizer,
            quantization_method=quantization_method,
            first_conversion=first_conversion,
            backend=backend,
            **({"name": name} if name is not None else {}),
        )
        written = [Written(f"gguf {p.name.split('.')[-2].lower()}", p, "gguf") for p in paths]
        modelfile = paths[0].parent / "Modelfile" if paths else None
        if modelfile is not None and modelfile.exists():
            written.append(Written("ollama Modelfile", modelfile, "modelfile"))
        return written
    if kind == "adapter":
        from loris.peft_format import save_adapter

        out = save_adapter(model, folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out))
        return [Written("lora", out, "lora")]
    from loris.export.hf import save_merged

    out = save_merged(model, folder, tokenizer, save_method=what, max_shard_size=max_shard_size)
    return [Written(kind, out, kind)]


def check(model, tokenizer: Any, written: Sequence[Written]) -> None:
    """Validate each written artifact (`loris.export.validate`); raises on any mismatch."""
    from loris.export.validate import validate_export

    validate_export(model, tokenizer, [(w.kind, w.path) for w in written])


@_on_main_process
def save(model, tokenizer: Any, what: str, folder: str | Path, *, validate: bool = False, **kw: Any):
    """`write`, then `check` when ``validate``; returns what was written."""
    written = write(model, tokenizer, what, folder, **kw)
    if validate:
        check(model, tokenizer, written)
    return written


def upload(
    model,
    folder: Path,
    repo_id: str,
    what: str,
    token: str | None,
    private: bool | None,
    commit_message: str,
    gguf_files: Sequence[Path] = (),
):
    """Add the model card to ``folder`` and upload the folder to ``repo_id``."""
    kind = {"adapter": "adapter", "lora": "adapter", "gguf": "gguf"}.get(what, "merged")
    card: dict[str, Any] = {"gguf_files": list(gguf_files)} if kind == "gguf" else {}
    if kind == "merged" or what == "lora":
        card["method"] = what
    hub.write_model_card(folder, model, repo_id, kind, **card)
    return hub.upload_folder(folder, repo_id, token, private, commit_message)


@_on_main_process
def push(
    model,
    tokenizer: Any,
    what: str,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
    validate: bool = False,
    **kw: Any,
):
    """Write ``what`` into a temporary folder, check it when ``validate`` (a mismatch uploads
    nothing), then upload it with a model card; returns the Hub's commit info.

    GGUF files are named after the repo (``<repo name>.<QUANT>.gguf``) and get the model's
    config.json beside them, which lets the Hub show the architecture."""
    token = hub.check_can_upload(repo_id, token)
    kind = str(what).lower()
    with tempfile.TemporaryDirectory(prefix="loris-hub-") as tmp:
        folder = Path(tmp) / {"adapter": "adapter", "gguf": "gguf"}.get(kind, "merged")
        if kind == "gguf":
            kw["name"] = repo_id.split("/")[-1]
        written = save(model, tokenizer, kind, folder, validate=validate, **kw)
        ggufs = [w.path for w in written if w.kind == "gguf"]
        if kind == "gguf":
            hf_config = model.config.hf_config
            if hf_config:  # lets the Hub show the architecture; runtimes ignore it
                text = json.dumps(hf_config, indent=2, sort_keys=True) + "\n"
                (folder / "config.json").write_text(text)
        return upload(
            model,
            folder,
            repo_id,
            kind,
            token,
            private,
            commit_message or _commit_message(kind, ggufs),
            gguf_files=ggufs,
        )


def _commit_message(kind: str, ggufs: Sequence[Path]) -> str:
    if kind == "adapter":
        return "Upload LoRA adapter trained with loris"
    if kind == "gguf":
        return f"Upload GGUF ({', '.join(p.name.split('.')[-2] for p in ggufs)}) made with loris"
    return f"Upload {kind} model trained with loris"
