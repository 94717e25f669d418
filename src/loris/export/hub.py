"""The Hugging Face Hub end of an export: token checks, the model card, ``upload_folder``.

A push (`loris.export.pipeline.push`) saves into a temporary folder with the local exporters (so the
Hub gets byte for byte what a local save writes), adds the README.md written here, then calls
``create_repo(exist_ok=True)`` and ``upload_folder``. The endpoint is read from ``HF_ENDPOINT`` at call time (huggingface_hub reads it
once, at import) so a mirror or a test server set later is honoured.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loris.models.state import model_state

DEFAULT_ENDPOINT = "https://huggingface.co"
_TOKEN_HELP = (
    "pass token='hf_...' (a write token from https://huggingface.co/settings/tokens), run "
    "`huggingface-cli login` (or `hf auth login`), or set the HF_TOKEN environment variable"
)


class HubUploadError(RuntimeError):
    """An upload that could not start or was refused; the message says what to do."""


# ---------------------------------------------------------------------------------- session


def hub_endpoint() -> str:
    """``HF_ENDPOINT`` as set now, else huggingface_hub's own default."""
    env = os.environ.get("HF_ENDPOINT")
    if env:
        return env.rstrip("/")
    from huggingface_hub import constants

    return (getattr(constants, "ENDPOINT", None) or DEFAULT_ENDPOINT).rstrip("/")


def _offline() -> bool:
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return any(str(f).upper() in ("1", "ON", "YES", "TRUE") for f in flags if f) or bool(
        getattr(constants, "HF_HUB_OFFLINE", False)
    )


def resolve_token(token: str | None) -> str:
    """The explicit token, else the one from HF_TOKEN or ``huggingface-cli login``; never None."""
    if token:
        return token
    from huggingface_hub import get_token

    found = get_token()
    if not found:
        raise HubUploadError(f"No Hugging Face token found to upload with: {_TOKEN_HELP}.")
    return found


def check_can_upload(repo_id: str, token: str | None) -> str:
    """Fail fast (before any export work) on a bad repo id, offline mode or a missing token."""
    if not isinstance(repo_id, str) or not re.fullmatch(r"([\w.-]+/)?[\w.-]+", repo_id or ""):
        raise HubUploadError(
            f"repo_id={repo_id!r} is not a Hub repo id: use 'your-username/model-name' (or 'org/model-name')."
        )
    if _offline():
        raise HubUploadError(
            "HF_HUB_OFFLINE is set, so nothing can be uploaded: unset HF_HUB_OFFLINE (and "
            "TRANSFORMERS_OFFLINE), or save locally with save_pretrained / save_pretrained_merged / "
            "save_pretrained_gguf and upload the folder later."
        )
    return resolve_token(token)


def upload_folder(
    folder: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload with loris",
):
    """``create_repo(exist_ok=True)`` then ``upload_folder``; HTTP and network errors made actionable."""
    from huggingface_hub import HfApi

    token = check_can_upload(repo_id, token)
    endpoint = hub_endpoint()
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, token=token, private=private, exist_ok=True, repo_type="model")
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            commit_message=commit_message,
            token=token,
            repo_type="model",
        )
    except Exception as err:  # translated below; anything unrecognised is re-raised as is
        raise _explain(err, repo_id, endpoint) from err


def _explain(err: Exception, repo_id: str, endpoint: str) -> Exception:
    from huggingface_hub.errors import HfHubHTTPError

    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None) if isinstance(err, HfHubHTTPError) else None
    if status == 401:
        return HubUploadError(
            f"The Hub at {endpoint} rejected the token (401 Unauthorized): it is invalid, expired or "
            f"revoked. Create a write token and {_TOKEN_HELP}."
        )
    if status == 403:
        return HubUploadError(
            f"The token may not write to {repo_id} (403 Forbidden). Use a token with 'write' access, "
            "and a repo id under your own username or an organisation you can write to."
        )
    if _is_network_error(err):
        return HubUploadError(
            f"Could not reach the Hub at {endpoint} ({type(err).__name__}: {err}). Check the network "
            "connection (and HF_ENDPOINT if you set it); to work offline, save locally with "
            "save_pretrained / save_pretrained_merged / save_pretrained_gguf and upload the folder later."
        )
    return err


def _is_network_error(err: BaseException) -> bool:
    try:
        import httpx

        if isinstance(err, httpx.TransportError):
            return True
    except ImportError:  # pragma: no cover - huggingface_hub 1.x depends on httpx
        pass
    return isinstance(err, (ConnectionError, TimeoutError))


# ---------------------------------------------------------------------------------- model card


def _base_model_id(model) -> str | None:
    """The base model's Hub id when it looks like one (local paths are not valid ``base_model``)."""
    name = str(model_state(model).name_or_path or "")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not Path(name).exists():
        return name
    return None


def _license(model) -> str | None:
    """The license named in the source checkpoint's README front matter, if any."""
    source = model_state(model).source_folder
    readme = Path(source) / "README.md" if source else None
    if readme is None or not readme.is_file():
        return None
    m = re.match(r"---\n(.*?)\n---", readme.read_text(errors="replace"), re.S)
    if not m:
        return None
    import yaml

    try:
        meta = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError:
        return None
    value = meta.get("license") if isinstance(meta, dict) else None
    return str(value) if value else None


def _lora_summary(model) -> str | None:
    cfg = model_state(model).peft_config
    if cfg is None:
        return None
    targets = cfg.target_modules if isinstance(cfg.target_modules, str) else ", ".join(cfg.target_modules)
    return f"LoRA rank {cfg.r}, alpha {cfg.lora_alpha}{' (rsLoRA)' if cfg.use_rslora else ''}, on {targets}"


def model_card(
    model,
    repo_id: str,
    kind: str,
    method: str | None = None,
    gguf_files: Sequence[Path] = (),
) -> str:
    """README.md text: YAML front matter the Hub indexes, then what it is and how to run it."""
    import yaml

    base_id = _base_model_id(model)
    base_text = base_id or str(model_state(model).name_or_path or "an open model")
    lora = _lora_summary(model)
    tags = ["loris"]
    if lora:
        tags.append("lora")
    tags += {"adapter": ["peft"], "merged": ["transformers", "safetensors"], "gguf": ["gguf"]}[kind]
    tags.append("text-generation")
    meta: dict[str, Any] = {}
    if base_id:
        meta["base_model"] = base_id
    meta["library_name"] = {"adapter": "peft", "merged": "transformers", "gguf": "gguf"}[kind]
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = tags
    license_ = _license(model)
    if license_:
        meta["license"] = license_
    front = yaml.safe_dump(meta, sort_keys=False).strip()
    name = repo_id.split("/")[-1]
    how = "fine-tuned with loris"
    lines = [f"---\n{front}\n---", "", f"# {name}", ""]
    if kind == "adapter":
        lines.append(f"A LoRA adapter (PEFT format) for `{base_text}`, {how}.")
    elif kind == "merged":
        what = "4-bit (bitsandbytes NF4)" if method and "4bit" in method else "16-bit"
        what = "32-bit (float32)" if method == "merged_32bit" else what
        lines.append(f"`{base_text}` {how}, with the LoRA update merged into {what} weights (`{method}`).")
    else:
        lines.append(f"GGUF files of `{base_text}` {how}, for llama.cpp, Ollama and other GGUF runtimes.")
    if lora:
        lines += ["", f"- Method: {lora}"]
    if base_id:
        lines.append(f"- Base model: [{base_id}](https://huggingface.co/{base_id})")
    if gguf_files:
        lines += ["", "| file | quantization | size |", "| --- | --- | --- |"]
        from loris.export.diskspace import format_size

        for p in gguf_files:
            quant = p.name.split(".")[-2]
            lines.append(f"| `{p.name}` | {quant} | {format_size(p.stat().st_size)} |")
    lines += ["", "## How to run it", ""]
    lines += _usage(repo_id, kind, gguf_files)
    return "\n".join(lines).rstrip() + "\n"


def _usage(repo_id: str, kind: str, gguf_files: Sequence[Path]) -> list[str]:
    if kind == "gguf":
        first = gguf_files[0].name if gguf_files else "model.Q8_0.gguf"
        quant = first.split(".")[-2] if gguf_files else "Q8_0"
        return [
            "llama.cpp:",
            "```bash",
            f"huggingface-cli download {repo_id} {first} --local-dir .",
            f'llama-cli -m {first} -p "Hello"',
            f"# or straight from the Hub: llama-cli -hf {repo_id}:{quant}",
            "```",
            "",
            "Ollama (the Modelfile's TEMPLATE matches the chat template the model was trained with):",
            "```bash",
            f"huggingface-cli download {repo_id} --local-dir {repo_id.split('/')[-1]}",
            f"cd {repo_id.split('/')[-1]} && ollama create {repo_id.split('/')[-1].lower()} -f Modelfile",
            f"ollama run {repo_id.split('/')[-1].lower()}",
            "```",
            "",
            "loris:",
            "```python",
            "from loris import FastLanguageModel",
            f'model, tokenizer = FastLanguageModel.from_pretrained("{first}", load_in_4bit=False)  # after downloading',
            "```",
        ]
    loader = (
        "from peft import AutoPeftModelForCausalLM\n"
        f'model = AutoPeftModelForCausalLM.from_pretrained("{repo_id}")'
        if kind == "adapter"
        else "from transformers import AutoModelForCausalLM\n"
        f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")'
    )
    return [
        "loris:",
        "```python",
        "from loris import FastLanguageModel",
        f'model, tokenizer = FastLanguageModel.from_pretrained("{repo_id}", load_in_4bit=False)',
        "FastLanguageModel.for_inference(model)",
        "```",
        "",
        "transformers" + (" + PEFT:" if kind == "adapter" else ":"),
        "```python",
        "from transformers import AutoTokenizer",
        loader,
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
        "```",
        "",
        "llama.cpp / Ollama: export GGUF files with loris and run them there:",
        "```bash",
        f"loris export {repo_id} --out {repo_id.split('/')[-1]} --gguf q4_k_m",
        f"llama-cli -m {repo_id.split('/')[-1]}/gguf/{repo_id.split('/')[-1]}.Q4_K_M.gguf",
        f"cd {repo_id.split('/')[-1]}/gguf && ollama create {repo_id.split('/')[-1].lower()} -f Modelfile",
        "```",
    ]


def write_model_card(folder: Path, model, repo_id: str, kind: str, **kw: Any) -> Path:
    path = Path(folder) / "README.md"
    path.write_text(model_card(model, repo_id, kind, **kw))
    return path
