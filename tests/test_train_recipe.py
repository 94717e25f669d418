"""`loris train config.yaml`: validation errors name the key; a tiny LoRA recipe trains and saves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from loris.train_recipe import Recipe, RecipeError, load_recipe, recipe_from_dict


@pytest.fixture(autouse=True)
def one_cpu_thread():
    """Tiny matmuls run far faster on one thread when the CPU is shared (OpenMP barriers spin)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


GOOD = {
    "model": {"name_or_path": "some/model", "max_seq_length": 64, "dtype": "float32"},
    "lora": {"r": 8, "lora_alpha": 16, "use_gradient_checkpointing": False},
    "data": {"path": "rows.jsonl", "text_field": "text"},
    "train": {"output_dir": "out", "max_steps": 2, "per_device_train_batch_size": 2},
    "save": {"adapter_dir": "adapter"},
}


def with_change(section: str, **values) -> dict:
    raw = json.loads(json.dumps(GOOD))
    raw[section] = {**raw[section], **values}
    return raw


def test_a_good_config_validates():
    recipe = recipe_from_dict(GOOD, base_dir="/base")
    assert isinstance(recipe, Recipe)
    assert recipe.train.max_steps == 2 and recipe.train.max_length is None
    assert recipe.lora.r == 8 and recipe.data_path() == Path("/base/rows.jsonl")


@pytest.mark.parametrize(
    "raw, key",
    [
        (with_change("model", load_in_4bt=True), "model.load_in_4bt: unknown key"),
        (with_change("model", max_seq_length="long"), "model.max_seq_length"),
        (with_change("model", dtype="float8"), "model.dtype"),
        (with_change("model", chat_template="chatmll"), "model.chat_template: unknown template"),
        (with_change("lora", r=0), "lora.r"),
        (with_change("lora", target_modules=["q_prj"]), "lora.target_modules"),
        (with_change("lora", use_gradient_checkpointing="sometimes"), "lora.use_gradient_checkpointing"),
        (with_change("data", formating="chat"), "data.formating: unknown key"),
        (with_change("data", formatting="markdown"), "data.formatting"),
        (with_change("data", name="tatsu-lab/alpaca"), "data: give exactly one of path, name or generator"),
        (with_change("data", path="rows.txt"), "data.path"),
        (with_change("data", path=None, generator="no_colon"), "data.generator"),
        (with_change("train", learning_rat=1e-4), "train.learning_rat"),
        (with_change("train", max_steps=0), "train.max_steps"),
        (with_change("save", merged_method="merged_8bit"), "save.merged_method"),
        ({**GOOD, "optimizer": {}}, "optimizer: unknown section"),
        ({k: v for k, v in GOOD.items() if k != "lora"}, "lora: missing"),
        ({**GOOD, "model": {"max_seq_length": 64}}, "model.name_or_path: is required"),
    ],
)
def test_bad_configs_name_the_key(raw, key):
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(raw)
    assert str(info.value).startswith(key), str(info.value)


def test_full_finetuning_needs_no_lora_but_has_no_adapter():
    raw = {k: v for k, v in GOOD.items() if k != "lora"}
    raw["model"] = {**raw["model"], "full_finetuning": True}
    with pytest.raises(RecipeError, match="save.adapter_dir"):
        recipe_from_dict(raw)
    raw["save"] = {"merged_dir": "merged"}
    assert recipe_from_dict(raw).lora is None


def test_package_model_paths_resolve_without_importing(tmp_path):
    recipe = recipe_from_dict(with_change("model", name_or_path="pkg:yaml/__init__.py"))
    assert recipe.model.resolved_path().endswith("yaml/__init__.py")
    with pytest.raises(RecipeError, match="model.name_or_path: package 'no_such_pkg_x'"):
        recipe_from_dict(with_change("model", name_or_path="pkg:no_such_pkg_x/m.gguf")).model.resolved_path()


def _write(tmp_path: Path, raw: dict, rows: list[dict], name: str = "rows.jsonl") -> Path:
    data = tmp_path / "cfg" / name
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / "cfg" / "recipe.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    return cfg


def test_cli_trains_a_lora_recipe_and_saves(saved_family, tmp_path, monkeypatch, capsys):
    from loris.cli import main

    monkeypatch.chdir(tmp_path)
    raw = with_change("model", name_or_path=str(saved_family("llama")[1]))
    rows = [{"text": " ".join(f"w{4 + (i + j) % 50}" for j in range(6))} for i in range(6)]
    cfg = _write(tmp_path, raw, rows)
    assert main(["train", str(cfg), "--check"]) == 0
    assert main(["train", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "trained 2 steps" in out and "adapter_dir: adapter" in out
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["r"] == 8
    assert (tmp_path / "out" / "loss.png").is_file()
    assert len((tmp_path / "out" / "log.jsonl").read_text().splitlines()) >= 1

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(with_change("train", learning_rat=1.0)))
    with pytest.raises(SystemExit, match="train.learning_rat"):
        main(["train", str(bad)])


def test_chat_recipe_with_sharegpt_and_responses_only(saved_family, tmp_path, monkeypatch):
    """formatting: chat + standardize_sharegpt + train_on_responses_only (markers from the template)."""
    import shutil

    from loris.train_recipe import format_rows, load_rows, run_recipe
    from tiny_models import tiny_tokenizer

    monkeypatch.chdir(tmp_path)
    model_dir = tmp_path / "model"
    shutil.copytree(saved_family("llama")[1], model_dir)
    tok = tiny_tokenizer()  # its own chat template, with markers the word-level vocabulary knows
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}w10 {{ m['content'] }} "
        "{% else %}w11 {{ m['content'] }} </s> {% endif %}{% endfor %}"
    )
    tok.save_pretrained(model_dir)
    rows = [
        {"conversations": [{"from": "human", "value": f"w{20 + i} w{21 + i}"},
                           {"from": "gpt", "value": f"w{40 + i} w{41 + i}"}]}
        for i in range(4)
    ]  # fmt: skip
    raw = with_change("model", name_or_path=str(model_dir))
    raw["data"] = {"path": "chat.jsonl", "formatting": "chat", "standardize_sharegpt": True,
                   "train_on_responses_only": True}  # fmt: skip
    recipe = load_recipe(_write(tmp_path, raw, rows, "chat.jsonl"))
    formatted, column = format_rows(recipe, load_rows(recipe), tok)
    assert column == "text" and formatted[0]["text"] == "w10 w20 w21 w11 w40 w41 </s> "
    result = run_recipe(recipe)
    assert result["global_step"] == 2 and result["saved"] == {"adapter_dir": "adapter"}


def test_every_row_source(saved_family, tmp_path):
    from datasets import Dataset

    from loris.train_recipe import load_rows

    rows = [{"text": "w5 w6", "n": i} for i in range(5)]
    for name in ("rows.json", "rows.csv", "rows.parquet"):
        path = tmp_path / name
        Dataset.from_list(rows).to_json(path, lines=False) if name.endswith("json") else None
        if name.endswith("csv"):
            Dataset.from_list(rows).to_csv(path)
        if name.endswith("parquet"):
            Dataset.from_list(rows).to_parquet(path)
        raw = with_change("data", path=name, max_rows=3)
        got = load_rows(recipe_from_dict(raw, base_dir=tmp_path))
        assert got["text"] == ["w5 w6"] * 3, name
    raw = with_change("data", path=None, generator="loris.demos.dates:make_split",
                      generator_kwargs={"n": 4, "seed": 1})  # fmt: skip
    got = load_rows(recipe_from_dict(raw))
    assert len(got) == 4 and "messages" in got.column_names
    with pytest.raises(FileNotFoundError, match="data.path"):
        load_rows(recipe_from_dict(GOOD, base_dir=tmp_path / "nowhere"))


# ------------------------------------------------------------------------------- preference methods
PREF = {
    "method": "dpo",
    "model": GOOD["model"],
    "lora": GOOD["lora"],
    "data": {"path": "pairs.jsonl"},
    "train": {"output_dir": "out", "max_steps": 2, "per_device_train_batch_size": 2, "beta": 0.2},
}


@pytest.mark.parametrize(
    "raw, key",
    [
        ({**PREF, "method": "ppo"}, "method: 'ppo'"),
        ({**GOOD, "train": {**GOOD["train"], "beta": 0.1}}, "train.beta: unknown key"),  # sft has no beta
        ({**PREF, "data": {"path": "pairs.jsonl", "text_field": "text"}}, "data.text_field: shapes SFT"),
        (
            {**PREF, "data": {"path": "p.jsonl", "train_on_responses_only": True}},
            "data.train_on_responses_only",
        ),
        ({**PREF, "train": {**PREF["train"], "beta": 0}}, "train.beta: beta=0"),
        (
            {**PREF, "method": "kto", "train": {"loss_type": "sigmoid"}},
            "train.loss_type: loss_type='sigmoid'",
        ),
        ({**PREF, "method": "simpo", "train": {"loss_type": "sigmoid"}}, "train.loss_type: method simpo"),
    ],
)
def test_bad_preference_configs_name_the_key(raw, key):
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(raw)
    assert str(info.value).startswith(key), str(info.value)


def test_methods_build_their_trl_named_configs():
    from loris import CPOConfig, DPOConfig, KTOConfig, ORPOConfig

    for method, cls in (("dpo", DPOConfig), ("orpo", ORPOConfig), ("cpo", CPOConfig), ("kto", KTOConfig)):
        recipe = recipe_from_dict({**PREF, "method": method})
        assert type(recipe.train) is cls and recipe.train.beta == 0.2 and recipe.method == method
    simpo = recipe_from_dict({**PREF, "method": "simpo", "train": {"simpo_gamma": 0.7}})
    assert (
        type(simpo.train) is CPOConfig
        and simpo.train.loss_type == "simpo"
        and simpo.train.simpo_gamma == 0.7
        and simpo.train.cpo_alpha == 0
    )
    assert recipe_from_dict(GOOD).method == "sft"


def _pairs(n: int = 4) -> list[dict]:
    words = lambda i, k: " ".join(f"w{4 + (i * 7 + j) % 50}" for j in range(k))  # noqa: E731
    return [
        {"prompt": words(i, 4), "chosen": " " + words(i + 1, 3), "rejected": " " + words(i + 9, 5)}
        for i in range(n)
    ]


def test_cli_dpo_recipe_then_continue_from_its_adapter(saved_family, tmp_path, monkeypatch, capsys):
    """Stage 1 trains a fresh adapter with DPO; stage 2 points model.name_or_path at it with no lora:
    section and goes on with DPO, the saved adapter (frozen) being the reference: at its first step
    policy and reference agree, so every reward is 0 and the loss is log 2."""
    from loris.cli import main

    monkeypatch.chdir(tmp_path)
    raw = {**PREF, "model": {**PREF["model"], "name_or_path": str(saved_family("llama")[1])}}
    raw["train"] = {**raw["train"], "learning_rate": 5e-3, "logging_steps": 1}
    raw["save"] = {"adapter_dir": "stage1"}
    cfg = _write(tmp_path, raw, _pairs(), name="pairs.jsonl")
    assert main(["train", str(cfg), "--check"]) == 0
    assert "valid (dpo, LoRA on" in capsys.readouterr().out
    assert main(["train", str(cfg)]) == 0
    assert "adapter_dir: stage1" in capsys.readouterr().out
    first = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert {"rewards/margins", "rewards/accuracies", "logps/chosen"} <= set(first[0])
    assert first[0]["loss"] == pytest.approx(0.693147, abs=1e-4)  # a fresh adapter: B = 0, policy = base

    stage2 = {k: v for k, v in raw.items() if k != "lora"}
    stage2["model"] = {**raw["model"], "name_or_path": str(tmp_path / "stage1")}
    stage2["train"] = {**raw["train"], "output_dir": "out2"}
    stage2["save"] = {"adapter_dir": "stage2"}
    cfg2 = tmp_path / "cfg" / "stage2.yaml"
    cfg2.write_text(yaml.safe_dump(stage2))
    assert main(["train", str(cfg2), "--check"]) == 0
    assert "valid (dpo, the saved adapter on" in capsys.readouterr().out
    assert main(["train", str(cfg2)]) == 0
    second = [json.loads(line) for line in (tmp_path / "out2" / "log.jsonl").read_text().splitlines()]
    assert second[0]["loss"] == pytest.approx(0.693147, abs=1e-4)
    assert second[0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-5)
    # stage 1 trained the policy away from the base: against the base, stage 2 would start elsewhere
    assert first[-1]["rewards/margins"] != pytest.approx(0.0, abs=1e-4)

    with_lora = {**stage2, "lora": GOOD["lora"]}
    with pytest.raises(RecipeError, match="lora: given with a saved adapter"):
        recipe_from_dict(with_lora)


def test_cli_kto_recipe_and_missing_columns(saved_family, tmp_path, monkeypatch, capsys):
    from loris.cli import main

    monkeypatch.chdir(tmp_path)
    raw = {**PREF, "method": "kto", "model": {**PREF["model"], "name_or_path": str(saved_family("llama")[1])}}
    rows = [
        {"prompt": p["prompt"], "completion": p["chosen" if i % 2 else "rejected"], "label": bool(i % 2)}
        for i, p in enumerate(_pairs())
    ]
    cfg = _write(tmp_path, raw, rows, name="pairs.jsonl")
    assert main(["train", str(cfg)]) == 0
    assert "trained 2 steps" in capsys.readouterr().out

    cfg = _write(tmp_path, {**raw, "method": "orpo"}, rows, name="pairs.jsonl")  # KTO rows, paired method
    with pytest.raises(SystemExit, match=r"data: method orpo needs the column\(s\) \['chosen', 'rejected'\]"):
        main(["train", str(cfg)])


def test_nproc_refused_for_methods_not_checked_across_ranks(tmp_path, monkeypatch):
    """sft, dpo and kto are tested across 2 ranks (tests/distributed); the others refuse --nproc, both
    in the CLI (before torchrun starts) and inside a launched run, naming the methods that work."""
    import loris.cli as cli
    from loris.distributed import env
    from loris.train_recipe import ranks_refusal, run_recipe

    assert [m for m in ("sft", "dpo", "kto", "orpo", "cpo", "simpo") if ranks_refusal(m) is None] == [
        "sft",
        "dpo",
        "kto",
    ]
    launched = []
    monkeypatch.setattr(cli, "_launch_torchrun", lambda args: launched.append(args) or 0)
    monkeypatch.setattr(env, "launched", lambda: False)
    for method in ("dpo", "kto"):
        cfg = tmp_path / f"{method}.yaml"
        cfg.write_text(yaml.safe_dump({**PREF, "method": method}))
        assert cli.main(["train", str(cfg), "--nproc", "2"]) == 0
    assert len(launched) == 2
    cfg = tmp_path / "orpo.yaml"
    cfg.write_text(yaml.safe_dump({**PREF, "method": "orpo"}))
    with pytest.raises(SystemExit, match=r"method orpo trains in one process .*sft, dpo, kto"):
        cli.main(["train", str(cfg), "--nproc", "2"])
    assert len(launched) == 2
    monkeypatch.setattr(env, "world_size", lambda: 2)
    with pytest.raises(RecipeError, match=r"method: simpo trains in one process .*sft, dpo, kto"):
        run_recipe(recipe_from_dict({**PREF, "method": "simpo"}))
