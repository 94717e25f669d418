"""Export validation (`loris.export.validate`): passes on a correct export of a tiny model, and catches
planted mismatches — merged weights altered on disk, a GGUF whose tokenizer metadata was rewritten (a
token's text; the merges), a Modelfile with a wrong TEMPLATE or stops — through the functions, the
save methods and ``loris export --validate``. The pure-Python Go-template renderer is checked against
Go's own renders (skipped without ``go``) and against Ollama's expected renders of its built-in templates.

llama.cpp checks need llama-cpp-python (``loris[gguf-check]``); without it they are skipped, and the
verdict itself must say so.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from loris import FastLanguageModel
from loris.chat_templates import apply_chat_template, get_chat_template
from loris.cli import main
from loris.data.registry import TEMPLATES
from loris.export import gotemplate, validate
from loris.export.gguf import save_gguf
from loris.export.hf import save_merged
from loris.export.ollama import modelfile_for, ollama_template
from loris.export.validate import (
    MISMATCH,
    OK,
    SKIPPED,
    ExportValidationError,
    gguf_artifacts,
    validate_export,
    validate_gguf,
    validate_merged,
    validate_modelfile,
)
from loris.lora import lora_modules
from tiny_models import save_bpe_llama

try:
    import llama_cpp  # noqa: F401

    HAVE_LLAMA_CPP = True
except ImportError:
    HAVE_LLAMA_CPP = False
needs_llama_cpp = pytest.mark.skipif(not HAVE_LLAMA_CPP, reason="pip install 'loris[gguf-check]'")
needs_go = pytest.mark.skipif(not gotemplate.go_available(), reason="the go toolchain is absent")
REFERENCE = Path(
    os.environ.get("LORIS_REFERENCE_DIR", Path(__file__).resolve().parents[1] / "fixtures" / "reference")
)
METHODS = ["f16", "q8_0", "q4_k_m"]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A tiny BPE llama (ChatML) with a random LoRA, exported merged (fp32) and to GGUF + Modelfile."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("validate")
    base = save_bpe_llama(root / "base", "chatml")
    model, tok = FastLanguageModel.from_pretrained(str(base), dtype=torch.float32, load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8, use_gradient_checkpointing=False)
    g = torch.Generator().manual_seed(1)
    for _, m in lora_modules(model):
        with torch.no_grad():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.05)
    merged = save_merged(model, root / "merged", tok, save_method="merged_32bit")
    paths = dict(zip(METHODS, save_gguf(model, root / "gguf", tok, quantization_method=METHODS), strict=True))
    yield dict(model=model.eval(), tok=tok, base=base, merged=merged, gguf=paths, root=root)
    torch.set_num_threads(old)


def _copy(src: Path, dst: Path) -> Path:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    return dst


# ---------------------------------------------------------------------------------- a correct export


def test_correct_export_passes(export, capsys):
    artifacts = [("merged_32bit", export["merged"]), *gguf_artifacts(export["gguf"].values())]
    verdicts = validate_export(export["model"], export["tok"], artifacts)
    lines = capsys.readouterr().out.splitlines()
    by_name = {v.artifact: v for v in verdicts}
    assert list(by_name) == ["merged_32bit", "gguf f16", "gguf q8_0", "gguf q4_k_m", "Modelfile"]
    merged = by_name["merged_32bit"]
    assert merged.status == OK and "over 3 prompts (loris, float32)" in merged.detail
    assert "transformers max |Δlogit|" in merged.detail
    assert by_name["Modelfile"].status == OK and "on 4 chats" in by_name["Modelfile"].detail
    for method in METHODS:
        v = by_name[f"gguf {method}"]
        if not HAVE_LLAMA_CPP:
            assert v.status == SKIPPED and "install loris[gguf-check]" in v.detail
            continue
        assert v.status == OK, v.detail
        assert "tokenization equal (3 prompts)" in v.detail
        if method == "q4_k_m":
            assert "compared loosely" in v.detail and "top-5" in v.detail
        else:
            assert "greedy 16/16 tokens equal" in v.detail or "near-ties" in v.detail, v.detail
    assert [line.split()[0] for line in lines] == ["merged_32bit", "gguf", "gguf", "gguf", "Modelfile"]


def test_gguf_without_llama_cpp_is_skipped_not_passed(export, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp → ImportError
    v = validate_gguf(export["model"], export["gguf"]["f16"], export["tok"])
    assert v.status == SKIPPED and v.detail == "skipped: install loris[gguf-check] (llama-cpp-python)"
    assert validate_export(export["model"], export["tok"], [("gguf", export["gguf"]["f16"])], report=None)


# ---------------------------------------------------------------------------------- merged: planted


def test_merged_weights_altered_on_disk(export, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(export["merged"], tmp_path / "merged")
    tensors = load_file(folder / "model.safetensors")
    name = "model.layers.1.self_attn.o_proj.weight"
    tensors[name] = tensors[name] * 1.05
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    v = validate_merged(export["model"], folder, export["tok"], artifact="merged_32bit")
    assert v.status == MISMATCH and "> max bound 0.001" in v.detail and "(loris, float32)" in v.detail
    with pytest.raises(ExportValidationError, match=r"merged_32bit \(.*merged\): max \|Δlogit\|"):
        validate_export(export["model"], export["tok"], [("merged_32bit", folder)], report=None)


def test_merged_that_does_not_load(export, tmp_path):
    folder = _copy(export["merged"], tmp_path / "merged")
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    v = validate_merged(export["model"], folder, export["tok"])
    assert v.status == MISMATCH and v.detail.startswith("loris cannot load it")


@pytest.mark.slow  # NF4 quantizing on CPU: ~7 s
def test_nf4_and_adapter_folders(export, tmp_path):
    """merged_4bit_forced is compared loosely (and says so); an adapter folder reloads with its base."""
    model, tok = export["model"], export["tok"]
    nf4 = save_merged(model, tmp_path / "nf4", tok, save_method="merged_4bit_forced")
    adapter = save_merged(model, tmp_path / "lora", tok, save_method="lora")
    v_nf4, v_lora = validate_export(model, tok, [("merged_4bit_forced", nf4), ("lora", adapter)], report=None)
    assert v_nf4.status == OK and "NF4 compared loosely" in v_nf4.detail
    assert 1e-3 < float(v_nf4.detail.split("rel ")[1].split()[0]) <= validate.NF4_TOLERANCE[1]
    assert v_lora.status == OK and v_lora.artifact == "lora" and "max |Δlogit|" in v_lora.detail
    (adapter / "adapter_model.safetensors").write_bytes(b"broken")
    assert validate_merged(model, adapter, tok).status == MISMATCH


def test_tolerance_is_per_dtype(export):
    """A bf16 reload of the fp32 model passes the bf16 bound (rel 0.08) and names the dtype."""
    v = validate_merged(export["model"].to(torch.bfloat16), export["merged"], export["tok"])
    export["model"].to(torch.float32)
    assert v.status == OK and "(loris, float32)" in v.detail
    rel = float(v.detail.split("rel ")[1].split()[0])
    assert 1e-4 < rel <= validate.MERGED_TOLERANCE[torch.bfloat16][1]  # really compared in bf16


# ---------------------------------------------------------------------------------- GGUF: planted


def _rewrite_string(path: Path, key: str, index: int, new: str) -> str:
    """Overwrite element ``index`` of the GGUF string array ``key`` in place (same byte length)."""
    import gguf

    reader = gguf.GGUFReader(str(path), "r+")
    field = reader.fields[key]
    part = field.parts[field.data[index]]
    old = bytes(part).decode()
    encoded = new.encode()
    assert len(encoded) == len(part), (old, new)
    part[:] = list(encoded)
    reader.data.flush()
    del reader
    return old


@needs_llama_cpp
def test_gguf_with_a_token_text_rewritten(export, tmp_path):
    path = _copy(export["gguf"]["f16"], tmp_path / "m.F16.gguf")
    tok = export["tok"]
    _rewrite_string(path, "tokenizer.ggml.tokens", tok.convert_tokens_to_ids("<|im_start|>"), "<|im_stArt|>")
    v = validate_gguf(export["model"], path, tok)
    assert v.status == MISMATCH and v.artifact == "gguf f16"
    assert "tokenization of sample prompt 1 differs: first difference at token 0" in v.detail
    assert "'<|im_start|>'" in v.detail  # the HF tokenizer's token, named


@pytest.fixture
def first_merge_len(export):
    import gguf

    field = gguf.GGUFReader(str(export["gguf"]["q8_0"])).fields["tokenizer.ggml.merges"]
    return len(bytes(field.parts[field.data[0]]))


@needs_llama_cpp
def test_gguf_with_merges_altered(export, tmp_path, first_merge_len):
    """The most frequent pair's merge made unmatchable (same byte length): llama.cpp splits differently."""
    path = _copy(export["gguf"]["q8_0"], tmp_path / "m.Q8_0.gguf")
    left = "~" * ((first_merge_len - 1) // 2)
    _rewrite_string(path, "tokenizer.ggml.merges", 0, left + " " + "~" * (first_merge_len - 1 - len(left)))
    v = validate_gguf(export["model"], path, export["tok"])
    assert v.status == MISMATCH and "tokenization of sample prompt" in v.detail


@needs_llama_cpp
def test_gguf_add_bos_flag_flipped(export, tmp_path):
    import gguf

    path = _copy(export["gguf"]["f16"], tmp_path / "m.F16.gguf")
    reader = gguf.GGUFReader(str(path), "r+")
    field = reader.fields["tokenizer.ggml.add_bos_token"]
    field.parts[field.data[0]][0] = 1 - int(field.parts[field.data[0]][0])
    reader.data.flush()
    del reader
    v = validate_gguf(export["model"], path, export["tok"])
    assert v.status == MISMATCH and "tokenization with BOS differs" in v.detail


def _steps(vocab: int, tokens: list[int], gaps: list[float]):
    """Loris step logits where token ``tokens[k]`` leads token ``tokens[k] + 1`` by ``gaps[k]``."""
    ref = []
    for t, gap in zip(tokens, gaps, strict=True):
        r = -1e-3 * torch.arange(vocab, dtype=torch.float32)  # a strict order below the two leaders
        r[t], r[t + 1] = 5.0, 5.0 - gap
        ref.append(r)
    return ref


@pytest.mark.parametrize(
    ("method", "gap", "status"),
    [("f16", 0.01, OK), ("f16", 1.0, MISMATCH), ("q8_0", 0.3, OK), ("q8_0", 2.0, MISMATCH)],
)
def test_greedy_near_tie_rule(method, gap, status):
    """llama.cpp picks the runner-up at step 3: fine at a near-tie, a mismatch otherwise."""
    tokens = [10, 11, 12, 13]
    ref = _steps(32, tokens, [3.0, 3.0, gap, 3.0])
    theirs = [r.clone() for r in ref]
    theirs[2][13] += 2 * gap + 0.1  # llama.cpp's argmax at step 3 is 13, not 12
    v = validate._greedy_verdict("gguf " + method, None, method, torch.float32, tokens, ref, theirs, 3)
    assert v.status == status, v.detail
    if status == MISMATCH:
        assert "greedy differs at step 3 of 4: loris token 12, llama.cpp 13" in v.detail
    else:
        assert "greedy 3/4 tokens equal, the other 1 near-ties" in v.detail


def test_loose_rule_for_low_bit_quants():
    tokens = [10, 11, 12, 13]
    ref = _steps(64, tokens, [1.0] * 4)
    close = [r.clone() for r in ref]
    close[0][11] += 1.5  # runner-up: in the top-5
    v = validate._greedy_verdict("gguf q4_0", None, "q4_0", torch.float32, tokens, ref, close, 3)
    assert v.status == OK and "compared loosely" in v.detail and "top-5 at 4/4 steps" in v.detail
    far = [torch.zeros(64) for _ in ref]
    for k, f in enumerate(far):
        f[40 + k] = 9.0  # tokens loris ranks near the bottom
    v = validate._greedy_verdict("gguf q4_0", None, "q4_0", torch.float32, tokens, ref, far, 3)
    assert v.status == MISMATCH and "top-5 at 0/4 steps" in v.detail


# ---------------------------------------------------------------------------------- Modelfile: planted


def _modelfile_copy(export, tmp_path: Path, text: str | None = None) -> Path:
    folder = tmp_path / "gguf"
    folder.mkdir()
    src = export["gguf"]["f16"].parent / "Modelfile"
    first = Path(export["gguf"]["f16"])
    (folder / first.name).write_bytes(b"")  # FROM must name a file beside the Modelfile
    (folder / "Modelfile").write_text(text if text is not None else src.read_text())
    return folder / "Modelfile"


@pytest.mark.parametrize("renderer", ["python", pytest.param("go", marks=needs_go)])
def test_modelfile_correct(export, tmp_path, renderer):
    v = validate_modelfile(_modelfile_copy(export, tmp_path), export["tok"], renderer=renderer)
    assert v.status == OK, v.detail


@pytest.mark.parametrize("renderer", ["python", pytest.param("go", marks=needs_go)])
def test_modelfile_with_a_wrong_template(export, tmp_path, renderer):
    text = (export["gguf"]["f16"].parent / "Modelfile").read_text()
    assert "{{ .Role }}\n{{ .Content }}" in text
    planted = text.replace("{{ .Role }}\n{{ .Content }}", "{{ .Role }}\n\n{{ .Content }}")
    v = validate_modelfile(_modelfile_copy(export, tmp_path, planted), export["tok"], renderer=renderer)
    assert v.status == MISMATCH, v.detail
    assert v.detail.startswith("TEMPLATE render differs from the chat template (chat 'single turn') at char")
    assert "TEMPLATE gives '<|im_start|>user\\n\\nWhat" in v.detail


def test_modelfile_with_another_familys_template(export, tmp_path):
    llama3, _, _ = ollama_template("llama-3")
    text = (export["gguf"]["f16"].parent / "Modelfile").read_text()
    start, end = text.index('TEMPLATE """'), text.index('"""', text.index('TEMPLATE """') + 12)
    planted = text[:start] + 'TEMPLATE """' + llama3 + text[end:]
    v = validate_modelfile(_modelfile_copy(export, tmp_path, planted), export["tok"], renderer="python")
    assert v.status == MISMATCH and "at char 2: TEMPLATE gives '<|start_header_id|>user" in v.detail


def test_modelfile_without_the_end_of_turn_stop(export, tmp_path):
    text = (export["gguf"]["f16"].parent / "Modelfile").read_text()
    planted = text.replace('PARAMETER stop "<|im_end|>"\n', "")
    assert planted != text
    v = validate_modelfile(_modelfile_copy(export, tmp_path, planted), export["tok"], renderer="python")
    assert v.status == MISMATCH and v.detail.startswith("no PARAMETER stop matches the end of an assistant")


def test_modelfile_with_a_wrong_system(export, tmp_path):
    text = (export["gguf"]["f16"].parent / "Modelfile").read_text()
    planted = text.replace("TEMPLATE", 'SYSTEM """You are a pirate."""\nTEMPLATE', 1)
    v = validate_modelfile(_modelfile_copy(export, tmp_path, planted), export["tok"], renderer="python")
    assert v.status == MISMATCH and "You are a pirate." in v.detail


def test_modelfile_from_missing_file(export, tmp_path):
    path = _modelfile_copy(export, tmp_path)
    path.write_text(path.read_text().replace("FROM ", "FROM missing-"))
    v = validate_modelfile(path, export["tok"])
    assert v.status == MISMATCH and "no such file beside the Modelfile" in v.detail


# ---------------------------------------------------------------------------------- every template loris writes


def _tokenizer(bos: str = "<s>", eos: str = "</s>"):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(dict.fromkeys(["<unk>", bos, eos, "a", "b"]))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token="<unk>")


def _registry_tokenizer(name: str):
    spec = TEMPLATES[name]
    return get_chat_template(_tokenizer(spec.bos_token or "<s>", spec.eos_token or "</s>"), name)


CUSTOM = [
    "Below is a task.\n\n### Instruction:\n{INPUT}\n\n### Response:\n{OUTPUT}",
    "<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{INPUT}<|im_end|>\n<|im_start|>assistant\n{OUTPUT}<|im_end|>\n",
    "Q: {INPUT}\nA: {OUTPUT}\n===\nQ: {INPUT}\nA: {OUTPUT}\n",
    "{{odd}} {SYSTEM}\nUSER: {INPUT}\nBOT: {OUTPUT}",
]


def _custom_tokenizer(template: str):
    tok = _tokenizer()
    system = "Be kind." if "{SYSTEM}" in template else None
    rows = [{"conversations": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}]
    apply_chat_template(
        rows, tok, chat_template=template, default_system_message=system, extra_eos_tokens=["</s>"]
    )
    return tok


def _loris_modelfiles() -> list[tuple[str, object]]:
    out = [(name, _registry_tokenizer(name)) for name in sorted(TEMPLATES) if TEMPLATES[name].ollama]
    return out + [(f"custom{i}", _custom_tokenizer(t)) for i, t in enumerate(CUSTOM)]


@pytest.mark.parametrize("renderer", ["python", pytest.param("go", marks=needs_go)])
def test_every_loris_modelfile_validates(tmp_path, renderer):
    """No false alarms: the Modelfile loris writes for every registry and custom template is OK."""
    (tmp_path / "m.gguf").write_bytes(b"")
    for label, tok in _loris_modelfiles():
        (tmp_path / "Modelfile").write_text(modelfile_for(tok, "m.gguf"))
        v = validate_modelfile(tmp_path / "Modelfile", tok, renderer=renderer)
        assert v.status == OK, (label, v.detail)


@needs_go
def test_python_renderer_matches_go_on_loris_templates():
    chats = list(validate.SAMPLE_CHATS.values()) + [
        [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],  # merged by Ollama
        [
            {"role": "system", "content": "x"},
            {"role": "system", "content": "y"},
            {"role": "user", "content": "z"},
        ],
    ]
    jobs = []
    for _, tok in _loris_modelfiles():
        template, system, _ = ollama_template(tok)
        for chat in chats:
            for default in (None, system or "Default system."):
                jobs.append((template, gotemplate.ollama_chat(chat, default)))
    assert len(jobs) > 250
    want = gotemplate.render_with_go(jobs)
    got = [gotemplate.render_template(t, d) for t, d in jobs]
    mismatches = [(t[:50], g, w) for (t, _), g, w in zip(jobs, got, want, strict=True) if g != w]
    assert not mismatches, mismatches[:3]


_OLLAMA_MSG = {
    "system": {"role": "system", "content": "You are a helpful assistant."},
    "user1": {"role": "user", "content": "Hello, how are you?"},
    "assistant": {"role": "assistant", "content": "I'm doing great. How can I help you today?"},
    "user2": {"role": "user", "content": "I'd like to show off how chat templating works!"},
}
_OLLAMA_CASES = {
    "user": ["user1"],
    "user-assistant-user": ["user1", "assistant", "user2"],
    "system-user-assistant-user": ["system", "user1", "assistant", "user2"],
}


@pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"reference data {REFERENCE} is absent")
def test_python_renderer_reproduces_ollamas_own_renders():
    """Ollama's built-in templates that stay within the subset render as Ollama's testdata says."""
    meta = json.loads((REFERENCE / "ollama" / "ollama.json").read_text())["templates"]
    rendered, unsupported = 0, []
    for name, entry in meta.items():
        template = (REFERENCE / "ollama" / entry["file"]).read_text()
        if ".Messages" not in template:
            continue  # legacy .Prompt/.Response templates need Ollama's own turn splitting
        for case, keys in _OLLAMA_CASES.items():
            path = REFERENCE / "ollama" / "testdata" / entry["file"] / case
            if not path.exists():
                continue
            try:
                got = gotemplate.render_template(
                    template, gotemplate.ollama_chat([_OLLAMA_MSG[k] for k in keys])
                )
            except gotemplate.UnsupportedTemplate as e:
                unsupported.append((name, str(e)))
                break
            want = path.read_text()
            assert got == want or got.rstrip(" ") == want.rstrip(" "), (name, case)
            rendered += 1
    assert rendered >= 20, (rendered, unsupported)


SYNTAX = [  # (template, what Go renders) on the chat below, with Modelfile SYSTEM "S"
    ("a  {{- 1 -}}  b {{ 2 }}", "a1b 2"),
    ('{{ "{{" }}x{{ `raw` }}', "{{xraw"),
    (
        "{{ range $i, $m := .Messages }}{{ $i }}={{ $m.Role }};{{ end }}",
        "0=system;1=user;2=assistant;3=user;",
    ),
    ("{{ range .Tools }}t{{ else }}none{{ end }}", "none"),
    (
        '{{ $n := 0 }}{{ range .Messages }}{{ if eq .Role "user" }}{{ $n = .Content }}{{ end }}{{ end }}{{ $n }}',
        "u2",
    ),
    (
        '{{ range .Messages }}{{ if eq .Role "x" "user" }}y{{ else if not .Content }}e{{ else }}n{{ end }}{{ end }}',
        "nyny",
    ),
    (
        "{{ or .Missing .System }}|{{ and .System .Missing }}|{{ .Missing }}|{{ and .System .Prompt }}|",
        "S|<no value>|<no value>||",
    ),
    ("{{ len (slice .Messages 2) }} {{ (index .Messages 1).Content }} {{ len .System }}", "2 u1 1"),
    ("{{ with .System }}[{{ . }}]{{ end }}{{ with .Nope }}x{{ else }}y{{ end }}", "[S]y"),
    (
        '{{ range .Messages }}{{ if eq .Role "assistant" }}{{ break }}{{ end }}{{ .Role }} {{ end }}',
        "system user ",
    ),
    (
        '{{ range .Messages }}{{ if eq .Role "assistant" }}{{ continue }}{{ end }}{{ .Role }} {{ end }}',
        "system user user ",
    ),
    ("{{/* a comment */}}ok{{- /* c */ -}}  !", "ok!"),
    ("{{ .System | len }} {{ print 1 true .System }}", "1 1 trueS"),
    ('{{ if and (eq 1 1) (ne .System "") }}y{{ end }}', "y"),
    ("{{ $x := 1 }}{{ if true }}{{ $x := 2 }}{{ $x }}{{ end }}{{ $x }}", "21"),
    ("{{ true }} {{ 3 }} {{ lt 1 2 }}", "true 3 true"),
]
_SYNTAX_CHAT = [
    {"role": "user", "content": "u1"},
    {"role": "assistant", "content": "a1"},
    {"role": "user", "content": "u2"},
]


@pytest.mark.parametrize("renderer", ["python", pytest.param("go", marks=needs_go)])
def test_renderer_syntax(renderer):
    data = gotemplate.ollama_chat(_SYNTAX_CHAT, "S")
    if renderer == "go":  # the expectations themselves are Go's
        got = gotemplate.render_with_go([(t, data) for t, _ in SYNTAX])
    else:
        got = [gotemplate.render_template(t, data) for t, _ in SYNTAX]
    assert got == [want for _, want in SYNTAX]


def test_python_renderer_errors():
    r = gotemplate.render_template
    data = gotemplate.ollama_chat(_SYNTAX_CHAT)
    with pytest.raises(gotemplate.UnsupportedTemplate, match="json"):
        r("{{ json .Messages }}", data)
    with pytest.raises(gotemplate.GoTemplateError, match="can't evaluate field Name"):
        r("{{ range .Messages }}{{ .Name }}{{ end }}", data)
    with pytest.raises(gotemplate.GoTemplateError, match="missing"):
        r("{{ if .System }}x", data)


# ---------------------------------------------------------------------------------- save methods and CLI


def test_save_methods_validate(export, tmp_path, capsys, monkeypatch):
    model, tok = export["model"], export["tok"]
    model.save_pretrained_merged(tmp_path / "merged", tok, validate=True)
    model.save_pretrained_gguf(tmp_path / "gguf", tok, quantization_method="q8_0", validate=True)
    out = capsys.readouterr().out
    assert "merged_16bit  OK" in out and "Modelfile     OK" in out
    assert ("gguf q8_0     OK" if HAVE_LLAMA_CPP else "gguf q8_0     SKIPPED") in out

    # planted: a config that misstates rms_norm_eps (both loaders then compute other logits)
    from loris.export import hf

    real = hf.export_config
    monkeypatch.setattr(hf, "export_config", lambda *a, **k: {**real(*a, **k), "rms_norm_eps": 0.5})
    with pytest.raises(ExportValidationError, match="merged_16bit"):
        model.save_pretrained_merged(tmp_path / "merged2", tok, validate=True)


def test_push_validates_before_uploading(export, monkeypatch, capsys):
    from loris.export import hub, ollama

    uploads = []
    monkeypatch.setattr(hub, "check_can_upload", lambda repo_id, token: "hf_test")
    monkeypatch.setattr(hub, "upload_folder", lambda folder, repo_id, *a, **k: uploads.append(repo_id))
    model, tok = export["model"], export["tok"]
    model.push_to_hub_gguf("me/ok-GGUF", tok, quantization_method="q8_0", validate=True)
    assert uploads == ["me/ok-GGUF"] and "Modelfile     OK" in capsys.readouterr().out
    monkeypatch.setattr(ollama, "modelfile_for", _broken_modelfile)
    with pytest.raises(ExportValidationError, match="Modelfile"):
        model.push_to_hub_gguf("me/broken-GGUF", tok, quantization_method="q8_0", validate=True)
    assert uploads == ["me/ok-GGUF"]  # nothing uploaded for the broken export


def _broken_modelfile(tokenizer, gguf_name, **kw):
    return modelfile_for(tokenizer, gguf_name, **kw).replace("<|im_start|>assistant\n", "<|im_start|>bot\n")


def test_cli_export_validate(export, tmp_path, capsys, monkeypatch):
    adapter = tmp_path / "adapter"
    export["model"].save_pretrained(adapter, export["tok"])
    args = ["export", str(adapter), "--out", str(tmp_path / "out"), "--merged-16bit", "--gguf", "q8_0"]
    assert main([*args, "--validate"]) == 0
    out = capsys.readouterr().out
    assert "validating the export" in out and "merged_16bit  OK" in out and "Modelfile     OK" in out
    assert "gguf q8_0" in out

    from loris.export import ollama

    monkeypatch.setattr(ollama, "modelfile_for", _broken_modelfile)
    with pytest.raises(SystemExit) as err:
        main([*args[:3], str(tmp_path / "out2"), "--gguf", "q8_0", "--validate"])
    assert "export validation failed for 1 artifact(s)" in str(err.value.code)
    assert "Modelfile" in str(err.value.code) and "TEMPLATE render differs" in str(err.value.code)
    assert "Modelfile     MISMATCH" in capsys.readouterr().out
    # without --validate the same broken export goes through (the check is what catches it)
    assert main([*args[:3], str(tmp_path / "out3"), "--gguf", "q8_0"]) == 0
