"""Everything under examples/ works: each YAML recipe loads and validates (its data source too), and
each notebook script runs 2 steps on a tiny model folder."""

from __future__ import annotations

import runpy
import shutil
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RECIPES = sorted(EXAMPLES.rglob("*.yaml"))
NOTEBOOKS = sorted((EXAMPLES / "notebooks").glob("*.py"))


@pytest.fixture(autouse=True)
def one_cpu_thread():
    """Tiny matmuls run far faster on one thread when the CPU is shared (OpenMP barriers spin)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_there_are_examples():
    assert any(p.name == "demo_sft.yaml" for p in RECIPES)
    assert {p.name for p in NOTEBOOKS} >= {"llama31_alpaca.py", "llama32_conversational.py"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_recipe_validates_and_its_data_loads(path):
    from loris.train_recipe import format_rows, load_recipe, load_rows

    recipe = load_recipe(path)
    assert recipe.train.max_steps > 0 or recipe.train.num_train_epochs > 0
    if recipe.model.name_or_path.startswith("pkg:"):
        try:
            assert Path(recipe.model.resolved_path()).is_file()
        except ValueError as exc:  # the optional demo model package is not installed here
            pytest.skip(str(exc))
    rows = load_rows(recipe)
    assert len(rows) > 0
    if recipe.method != "sft":
        from loris.train_recipe import check_preference_columns

        check_preference_columns(recipe.method, rows)
    elif recipe.data.formatting == "chat":
        column = recipe.data.text_field or "messages"
        assert all(m["role"] in ("system", "user", "assistant") for m in rows[0][column])
    else:
        _, column = format_rows(recipe, rows, tokenizer=None)
        assert isinstance(rows[0][column], str)


def chat_tiny_model(saved_family, folder: Path) -> Path:
    """The tiny llama with a word-level tokenizer that also knows Llama-3's header tokens (same 160 ids).

    Its decoder glues tokens together, so a header marker decodes back to itself (the whitespace-split
    vocabulary has no newline token), as it does with Llama-3's own tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    shutil.copytree(saved_family("llama")[1], folder)
    special = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({f"w{i}": i for i in range(4, 150)})
    vocab.update({"user": 150, "assistant": 151, "system": 152})
    vocab.update({tok: 153 + i for i, tok in enumerate(special)})
    vocab.update({f"w{i}": i for i in range(157, 160)})
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="<pad>", additional_special_tokens=special)  # fmt: skip
    assert len(tok) == 160
    tok.save_pretrained(folder)
    return folder


def tiny_chat_model(
    saved_family, family: str, folder: Path, specials: list[str], template: str | None
) -> Path:
    """A tiny random model of ``family`` with a word-level tokenizer that knows the chat template's
    special tokens (same 160 ids), and that template set with `get_chat_template`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from loris.chat_templates import get_chat_template

    shutil.copytree(saved_family(family)[1], folder)
    words = ["user", "assistant", "system", "model"]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for tok in specials + words:
        vocab[tok] = len(vocab)
    vocab.update({f"w{i}": i for i in range(len(vocab), 160)})
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="<pad>", additional_special_tokens=specials)  # fmt: skip
    if template is not None:
        get_chat_template(tok, chat_template=template)
    assert len(tok) == 160
    tok.save_pretrained(folder)
    return folder


def run_script(path: Path, argv: list[str]) -> None:
    module = runpy.run_path(str(path), run_name="example")  # defines main() without running it
    module["main"](argv)


pytestmark = pytest.mark.filterwarnings("error:An optimizer step had no label tokens")

SFT_ARGS = ["--max-steps", "2", "--max-new-tokens", "4"]


def check_sft_run(printed: str, out: Path) -> None:
    assert "seconds used for training" in printed
    assert "'step': 2" in printed
    assert (out / "lora_model" / "adapter_config.json").is_file()
    assert (out / "checkpoints" / "loss.png").is_file()


def test_notebook_scripts_run_two_steps(saved_family, tmp_path, capsys):
    model = chat_tiny_model(saved_family, tmp_path / "model")
    for name in ("llama31_alpaca.py", "llama32_conversational.py"):
        out = tmp_path / name
        run_script(
            EXAMPLES / "notebooks" / name, ["--model", str(model), *SFT_ARGS, "--output-dir", str(out)]
        )
        printed = capsys.readouterr().out
        check_sft_run(printed, out)
    assert "this model has no Llama-3 header tokens" not in printed  # it used the notebook's template


def test_qwen3_reasoning_conversational(saved_family, tmp_path, capsys):
    specials = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>"]
    model = tiny_chat_model(saved_family, "qwen3", tmp_path / "model", specials, "qwen3")
    out = tmp_path / "out"
    run_script(EXAMPLES / "notebooks" / "qwen3_reasoning_conversational.py",
               ["--model", str(model), *SFT_ARGS, "--output-dir", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    check_sft_run(printed, out)
    assert "--- enable_thinking=False" in printed and "--- enable_thinking=True" in printed


def test_phi4_conversational(saved_family, tmp_path, capsys):
    specials = ["<|im_start|>", "<|im_sep|>", "<|im_end|>", "<|endoftext|>"]
    model = tiny_chat_model(saved_family, "phi3", tmp_path / "model", specials, "phi-4")
    out = tmp_path / "out"
    run_script(EXAMPLES / "notebooks" / "phi4_conversational.py",
               ["--model", str(model), *SFT_ARGS, "--output-dir", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    check_sft_run(printed, out)
    assert "keeping its own chat template" not in printed  # it used the notebook's "phi-4"


def test_gemma3_conversational(saved_family, tmp_path, capsys):
    specials = ["<bos>", "<start_of_turn>", "<end_of_turn>"]
    model = tiny_chat_model(saved_family, "gemma3", tmp_path / "model", specials, "gemma-3")
    out = tmp_path / "out"
    run_script(EXAMPLES / "notebooks" / "gemma3_conversational.py",
               ["--model", str(model), *SFT_ARGS, "--output-dir", str(out), "--skip-gguf"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "seconds used for training" in printed and "'step': 2" in printed
    assert "keeping its own chat template" not in printed
    assert (out / "gemma-3" / "adapter_config.json").is_file()
    assert (out / "gemma-3-finetune" / "model.safetensors").is_file()


def test_llama3_ollama_ends_with_gguf_and_modelfile(tmp_path, capsys):
    from tiny_models import save_bpe_llama

    model = save_bpe_llama(tmp_path / "model")  # GGUF needs a BPE vocabulary
    out = tmp_path / "out"
    run_script(EXAMPLES / "notebooks" / "llama3_ollama.py",
               ["--model", str(model), *SFT_ARGS, "--output-dir", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    check_sft_run(printed, out)
    assert [p.name for p in (out / "model").glob("*.gguf")] == ["model.Q8_0.gguf"]
    modelfile = (out / "model" / "Modelfile").read_text()
    assert modelfile.startswith("FROM model.Q8_0.gguf")
    assert "### Instruction:\n" in modelfile and "### Response:\n" in modelfile  # the custom template
    assert f"ollama create unsloth_model -f {out / 'model' / 'Modelfile'}" in printed


GRPO_ARGS = [
    "--max-steps",
    "2",
    "--num-generations",
    "2",
    "--max-completion-length",
    "4",
    "--max-new-tokens",
    "4",
]


def check_grpo_run(printed: str, out: Path, adapter: str = "grpo_saved_lora") -> None:
    assert "seconds used for training" in printed and "'step': 2" in printed
    assert "rewards/" in (out / "outputs" / "log.jsonl").read_text()
    assert (out / adapter / "adapter_config.json").is_file()


def test_qwen25_grpo(saved_family, tmp_path, capsys):
    specials = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]
    model = tiny_chat_model(saved_family, "qwen2", tmp_path / "model", specials, "qwen-2.5")
    out = tmp_path / "out"
    run_script(
        EXAMPLES / "notebooks" / "qwen25_grpo.py",
        ["--model", str(model), *GRPO_ARGS, "--output-dir", str(out)],
    )
    printed = capsys.readouterr().out
    check_grpo_run(printed, out)
    assert "--- without the GRPO LoRA:" in printed and "--- with the GRPO LoRA:" in printed
    log = (out / "outputs" / "log.jsonl").read_text()
    for name in ("xmlcount_reward_func", "soft_format_reward_func", "strict_format_reward_func",
                 "int_reward_func", "correctness_reward_func"):  # fmt: skip
        assert f"rewards/{name}/mean" in log


def test_llama31_grpo(saved_family, tmp_path, capsys):
    model = chat_tiny_model(saved_family, tmp_path / "model")  # knows Llama-3's header tokens
    from transformers import AutoTokenizer

    from loris.chat_templates import get_chat_template

    tok = AutoTokenizer.from_pretrained(model)
    get_chat_template(tok, "llama-3.1").save_pretrained(model)
    out = tmp_path / "out"
    run_script(
        EXAMPLES / "notebooks" / "llama31_grpo.py",
        ["--model", str(model), *GRPO_ARGS, "--output-dir", str(out)],
    )
    check_grpo_run(capsys.readouterr().out, out)


def test_gemma3_grpo(saved_family, tmp_path, capsys):
    specials = ["<bos>", "<start_of_turn>", "<end_of_turn>"]
    model = tiny_chat_model(saved_family, "gemma3", tmp_path / "model", specials, "gemma-3")
    out = tmp_path / "out"
    run_script(EXAMPLES / "notebooks" / "gemma3_grpo.py",
               ["--model", str(model), *GRPO_ARGS, "--output-dir", str(out), "--skip-gguf"])  # fmt: skip
    check_grpo_run(capsys.readouterr().out, out, adapter="gemma-3")
    assert (out / "gemma-3-finetune" / "model.safetensors").is_file()
    log = (out / "outputs" / "log.jsonl").read_text()
    assert all(f"rewards/{f}/mean" in log for f in ("match_format_exactly", "check_answer", "check_numbers"))


def test_qwen3_grpo(saved_family, tmp_path, capsys):
    model = tiny_chat_model(saved_family, "qwen3", tmp_path / "model", ["<|im_end|>"], None)
    out = tmp_path / "out"
    run_script(EXAMPLES / "notebooks" / "qwen3_grpo.py",
               ["--model", str(model), *GRPO_ARGS, "--sft-epochs", "1", "--output-dir", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    check_grpo_run(printed, out)
    assert "the saved LoRA is non-zero" in printed and "--- with the GRPO LoRA:" in printed
    assert "rewards/match_format_approximately/mean" in (out / "outputs" / "log.jsonl").read_text()


PREFERENCE_ARGS = ["--max-steps", "2", "--max-new-tokens", "4"]


def test_zephyr_dpo(saved_family, tmp_path, capsys):
    specials = ["<|user|>", "<|assistant|>", "<|system|>"]
    model = tiny_chat_model(saved_family, "llama", tmp_path / "model", specials, "zephyr")
    out = tmp_path / "out"
    run_script(EXAMPLES / "notebooks" / "zephyr_dpo.py",
               ["--model", str(model), *PREFERENCE_ARGS, "--output-dir", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert "seconds used for training" in printed and "'step': 2" in printed
    assert "<|assistant|>" in printed  # the prompt went through Zephyr's chat template
    log = (out / "outputs" / "log.jsonl").read_text()
    assert all(k in log for k in ("rewards/chosen", "rewards/margins", "logps/rejected"))
    assert (out / "lora_model" / "adapter_config.json").is_file()


def test_llama3_orpo(saved_family, tmp_path, capsys):
    model = chat_tiny_model(saved_family, tmp_path / "model")
    out = tmp_path / "out"
    run_script(EXAMPLES / "notebooks" / "llama3_orpo.py",
               ["--model", str(model), *PREFERENCE_ARGS, "--output-dir", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert "seconds used for training" in printed and "'step': 2" in printed
    log = (out / "outputs" / "log.jsonl").read_text()
    assert all(k in log for k in ("nll_loss", "log_odds_ratio", "rewards/accuracies"))
    assert (out / "lora_model" / "adapter_config.json").is_file()
