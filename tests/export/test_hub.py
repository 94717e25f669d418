"""Hub uploads against a recording fake Hub on 127.0.0.1 (HF_ENDPOINT); nothing leaves the machine."""

from __future__ import annotations

import json
import socket

import pytest
import torch
import yaml

from hub_server import FakeHub
from loris import FastLanguageModel
from loris.export.hub import HubUploadError
from loris.lora import lora_modules
from tiny_models import save_bpe_llama

TOKEN = "hf_test_token_123"
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


@pytest.fixture
def no_network(monkeypatch):
    """Any connection or DNS lookup other than to 127.0.0.1 fails the test."""
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(self, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "localhost"):
            raise AssertionError(f"test tried to connect to {address}")
        return real_connect(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost"):
            raise AssertionError(f"test tried to resolve {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def isolated_auth(monkeypatch, tmp_path):
    """No token from the environment or a login file on this machine."""
    from huggingface_hub import constants

    for var in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_OIDC_RESOURCE",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # a request that ignored our endpoint would go here (a closed local port), never to the internet
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")


@pytest.fixture
def hub(monkeypatch, no_network, isolated_auth):
    with FakeHub(token=TOKEN) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        yield fake
    assert {r.client for r in fake.requests} == {"127.0.0.1"}
    assert all(r.headers["host"].startswith("127.0.0.1:") for r in fake.requests)


def _bpe_llama(folder):
    return save_bpe_llama(folder, TEMPLATE)


@pytest.fixture
def bpe_lora_model(tmp_path):
    model, tok = FastLanguageModel.from_pretrained(
        str(_bpe_llama(tmp_path / "bpe-llama")), dtype=torch.float32, load_in_4bit=False
    )
    from loris.chat_templates import get_chat_template

    tok = get_chat_template(tok, "chatml")  # a template loris can write as an Ollama TEMPLATE
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8, use_gradient_checkpointing=False)
    return model.eval(), tok


@pytest.fixture
def lora_model(saved_family):
    _, folder = saved_family("llama")
    model, tok = FastLanguageModel.from_pretrained(str(folder), dtype=torch.float32, load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8, use_gradient_checkpointing=False)
    g = torch.Generator().manual_seed(1)
    for _, m in lora_modules(model):
        with torch.no_grad():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.05)
    tok.chat_template = TEMPLATE
    return model.eval(), tok


def _front_matter(readme: bytes) -> dict:
    text = readme.decode()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def _commit_requests(hub: FakeHub):
    return [r for r in hub.requests if "/commit/" in r.path]


@pytest.mark.parametrize("xet", [True, False], ids=["xet-pipeline", "single-commit"])
def test_push_adapter_uploads_what_save_pretrained_writes(hub, lora_model, tmp_path, monkeypatch, xet):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", not xet)  # both upload paths of huggingface_hub
    model, tok = lora_model
    info = model.push_to_hub("me/tiny-lora", tok, token=TOKEN, private=True, commit_message="first upload")
    assert info.commit_url.startswith(hub.url)

    files = hub.files("me/tiny-lora")
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer_config.json"} <= set(
        files
    )
    local = model.save_pretrained(tmp_path / "local", tok)
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json"):
        assert files[name] == (local / name).read_bytes(), name
    meta = _front_matter(files["README.md"])
    assert meta["library_name"] == "peft"
    assert {"loris", "lora", "peft"} <= set(meta["tags"])
    assert "base_model" not in meta  # a local folder is not a Hub id
    card = files["README.md"].decode()
    assert "LoRA rank 4, alpha 8" in card and "q_proj" in card and "AutoPeftModelForCausalLM" in card

    create = [r for r in hub.requests if r.path == "/api/repos/create"]
    assert len(create) == 1
    payload = json.loads(create[0].body)
    assert (payload["name"], payload["organization"], payload["visibility"]) == ("tiny-lora", "me", "private")
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in hub.requests)
    assert _commit_requests(hub)[0].body.splitlines()[0].decode().find("first upload") > 0


def test_push_again_reuses_the_repo_and_public_by_default(hub, lora_model):
    model, tok = lora_model
    model.push_to_hub("me/again", tok, token=TOKEN)
    model.push_to_hub("me/again", tok, token=TOKEN)  # 409 from create_repo is fine (exist_ok)
    assert len(hub.repos["me/again"].commits) == 2
    create = [json.loads(r.body) for r in hub.requests if r.path == "/api/repos/create"]
    assert len(create) == 2 and all("visibility" not in c for c in create)  # private=None: server default


def test_token_from_environment(hub, lora_model, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    model, tok = lora_model
    model.push_to_hub("me/env-token", tok)
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in hub.requests)


def test_push_merged_16bit(hub, lora_model, monkeypatch):
    model, tok = lora_model
    model.push_to_hub_merged("org/merged", tok, save_method="merged_16bit", token=TOKEN, private=False)
    files = hub.files("org/merged")
    cfg = json.loads(files["config.json"])
    assert "quantization_config" not in cfg and cfg["model_type"] == "llama"
    assert {"model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= set(
        files
    )
    assert json.loads(files["tokenizer_config.json"]).get("chat_template") or "chat_template.jinja" in files
    meta = _front_matter(files["README.md"])
    assert meta["library_name"] == "transformers" and "lora" in meta["tags"]
    assert "merged into 16-bit" in files["README.md"].decode()

    from safetensors.torch import load

    tensors = load(files["model.safetensors"])
    merged = tensors["model.layers.0.self_attn.q_proj.weight"]
    assert merged.shape == (64, 64) and merged.dtype == torch.bfloat16  # merged_16bit of an fp32 model


def test_save_pretrained_merged_push_to_hub_routes_to_upload(hub, lora_model):
    model, tok = lora_model
    model.save_pretrained_merged("me/via-save", tok, push_to_hub=True, token=TOKEN)
    assert "model.safetensors" in hub.files("me/via-save")


def test_push_gguf_q8_0(hub, bpe_lora_model):
    model, tok = bpe_lora_model
    model.push_to_hub_gguf("me/tiny-gguf", tok, quantization_method="q8_0", token=TOKEN)
    files = hub.files("me/tiny-gguf")
    assert "tiny-gguf.Q8_0.gguf" in files and files["tiny-gguf.Q8_0.gguf"][:4] == b"GGUF"
    modelfile = files["Modelfile"].decode()
    assert modelfile.startswith("FROM tiny-gguf.Q8_0.gguf") and "TEMPLATE" in modelfile
    assert "config.json" in files
    meta = _front_matter(files["README.md"])
    assert meta["library_name"] == "gguf" and "gguf" in meta["tags"]
    card = files["README.md"].decode()
    assert "llama-cli -m tiny-gguf.Q8_0.gguf" in card
    assert "ollama create tiny-gguf -f Modelfile" in card
    assert "| `tiny-gguf.Q8_0.gguf` | Q8_0 |" in card

    import gguf

    reader = gguf.GGUFReader(_write(files["tiny-gguf.Q8_0.gguf"]))
    assert reader.fields["general.file_type"].parts[-1][0] == gguf.LlamaFileType.MOSTLY_Q8_0


def _write(data: bytes):
    import tempfile

    f = tempfile.NamedTemporaryFile(suffix=".gguf", delete=False)
    f.write(data)
    f.close()
    return f.name


def test_missing_token_is_a_clear_error_and_sends_nothing(lora_model, no_network, isolated_auth, monkeypatch):
    with FakeHub() as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        model, tok = lora_model
        with pytest.raises(
            HubUploadError, match=r"No Hugging Face token.*token=.*huggingface-cli login.*HF_TOKEN"
        ):
            model.push_to_hub("me/x", tok)
        assert fake.requests == []


@pytest.mark.parametrize("status, words", [(401, "rejected the token"), (403, "may not write to me/x")])
def test_server_refusal_is_a_clear_error(lora_model, no_network, isolated_auth, monkeypatch, status, words):
    with FakeHub(status=status) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        model, tok = lora_model
        with pytest.raises(HubUploadError, match=rf"{words}.*\({status}"):
            model.push_to_hub("me/x", tok, token="hf_wrong")
        assert fake.requests and fake.requests[0].headers["authorization"] == "Bearer hf_wrong"


def test_wrong_token_against_a_checking_server(hub, lora_model):
    model, tok = lora_model
    with pytest.raises(HubUploadError, match="401 Unauthorized"):
        model.push_to_hub("me/x", tok, token="hf_not_the_right_one")


def test_offline_is_a_clear_error(lora_model, no_network, isolated_auth, monkeypatch):
    model, tok = lora_model
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUploadError, match="HF_HUB_OFFLINE is set.*save locally"):
        model.push_to_hub_merged("me/x", tok, token=TOKEN)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with FakeHub() as fake:  # a server that is gone: connection refused, said plainly
        url = fake.url
    monkeypatch.setenv("HF_ENDPOINT", url)
    with pytest.raises(HubUploadError, match="Could not reach the Hub at http://127.0.0.1"):
        model.push_to_hub("me/x", tok, token=TOKEN)


def test_bad_repo_id(lora_model, isolated_auth):
    model, tok = lora_model
    with pytest.raises(HubUploadError, match="not a Hub repo id"):
        model.push_to_hub("me/has space", tok, token=TOKEN)


def test_model_card_names_a_hub_base_model_and_its_license(lora_model, tmp_path):
    from loris.export.hub import model_card

    model, _ = lora_model
    model.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model.source_folder = tmp_path
    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\ntags: [x]\n---\n# base\n")
    card = model_card(model, "me/smol-lora", "merged", method="merged_16bit")
    meta = _front_matter(card.encode())
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["license"] == "apache-2.0" and meta["library_name"] == "transformers"
    assert 'AutoModelForCausalLM.from_pretrained("me/smol-lora")' in card
    assert "loris export me/smol-lora --out smol-lora --gguf q4_k_m" in card
    assert "ollama create smol-lora -f Modelfile" in card
