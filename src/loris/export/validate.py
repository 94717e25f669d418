"""Check an export by reloading what was written and comparing it with the model in memory.

One `Verdict` per artifact, printed as a line such as::

    merged_16bit  OK        max |Δlogit| 3.1e-06 over 3 prompts (loris); transformers 4.0e-06
    gguf q8_0     OK        tokenization equal (3 prompts); greedy 16/16 tokens equal (max |Δlogit| 0.012)
    Modelfile     MISMATCH  TEMPLATE render differs from the chat template at char 41 (chat 'multi-turn'): ...

What is compared:

* **merged** (``merged_16bit``, ``lora`` adapter, ``merged_4bit_forced``): the folder is loaded with loris
  (and with ``transformers`` for 16-bit folders of a family it knows) in the dtype it was saved in, and
  its logits on a few chat-formatted prompts are compared with the in-memory model's (LoRA live).
  Tolerances, per the coarser of the two dtypes (`MERGED_TOLERANCE`): float32 max |Δlogit| ≤ 1e-3;
  float16 relative error ‖Δ‖/‖ref‖ ≤ 0.02; bfloat16 ≤ 0.08 (merged-in-bf16 SmolLM2 + LoRA measured 3.9%).
  NF4 (``merged_4bit_forced``) re-quantizes, so only a loose bound holds: relative error ≤ 0.5.
* **GGUF** (needs llama-cpp-python; otherwise the verdict is SKIPPED, never OK): llama.cpp's tokenization
  of each chat-formatted prompt equals the Hugging Face tokenizer's, with and without BOS; then loris'
  greedy continuation (``n_tokens``) is fed to llama.cpp in one pass and llama.cpp's own greedy choice is
  read at every step (equal at every step ⇔ llama.cpp's free-running greedy continuation is the same).
  For f32/f16/bf16/q8_0 every step must agree, except at a near-tie: llama.cpp's token scoring within
  `TIE_TOLERANCE` logits of loris' best in loris' own logits. Lower-bit quants are compared loosely, and
  the verdict says so: llama.cpp's token must be in loris' top-5 at half the steps or more.
* **Modelfile**: its TEMPLATE is executed for a few sample chats the way Ollama does (Go's
  ``text/template`` when ``go`` is installed, else loris' renderer of the Go-template subset loris writes,
  `loris.export.gotemplate`), with the Modelfile SYSTEM inserted where a chat has none, and compared with
  the tokenizer's chat template render. Known, documented differences are allowed and nothing else: Ollama
  leaves BOS to the tokenizer (the chat template's leading BOS text is dropped before comparing), and the
  Llama-3.1 date header is rendered with ``date_string="26 Jul 2024"``, the date loris' TEMPLATE writes.
  The text the chat template writes after an assistant reply must start with one of the ``PARAMETER
  stop`` strings, and FROM must name a file beside the Modelfile.

`validate_export` runs the checks for a list of written artifacts, prints each verdict as it comes and
raises `ExportValidationError` (naming each artifact and what differs) if any is a MISMATCH.
"""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ExportValidationError",
    "Verdict",
    "validate_export",
    "validate_merged",
    "validate_gguf",
    "validate_modelfile",
    "MERGED_TOLERANCE",
    "TIE_TOLERANCE",
]

OK, MISMATCH, SKIPPED = "OK", "MISMATCH", "SKIPPED"

# (metric, bound) per dtype: "max" is max |Δlogit|, "rel" is ‖Δ‖ / ‖reference‖ over all logits.
MERGED_TOLERANCE: dict[torch.dtype, tuple[str, float]] = {
    torch.float32: ("max", 1e-3),
    torch.float16: ("rel", 0.02),
    torch.bfloat16: ("rel", 0.08),
}
NF4_TOLERANCE = ("rel", 0.5)
_PRECISION = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}

# Greedy comparison of a GGUF: a different llama.cpp token is accepted only where loris scores it within
# this many logits of its own best token (a near-tie), for the methods checked strictly.
TIE_TOLERANCE: dict[str, float] = {"f32": 0.01, "f16": 0.05, "bf16": 0.5, "q8_0": 1.0}
# ... plus this much where the in-memory model itself computes in 16 bits
_MODEL_DTYPE_SLACK = {torch.float32: 0.0, torch.float16: 0.05, torch.bfloat16: 0.25}
LOOSE_TOP_K = 5

# Sample chats: prompts for logits / tokenization, and the conversations a Modelfile is rendered on.
SAMPLE_CHATS: dict[str, list[dict[str, str]]] = {
    "single turn": [{"role": "user", "content": "What is 12 + 30? Answer in one word."}],
    "with system": [
        {"role": "system", "content": "You answer like a ship's captain."},
        {"role": "user", "content": "Résumé of the trip, s'il vous plaît — 3 lines, naïve café 🙂"},
    ],
    "multi-turn": [
        {"role": "user", "content": "Name a prime number."},
        {"role": "assistant", "content": "7 is prime."},
        {"role": "user", "content": "And one above 100?\n\nThanks!"},
    ],
    "system + multi-turn": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello. What do you need?"},
        {"role": "user", "content": "The capital of France."},
    ],
}
DATE_STRING = "26 Jul 2024"  # what loris' Llama-3.1 TEMPLATE writes (see loris.export.ollama)


class ExportValidationError(RuntimeError):
    """An exported artifact does not reproduce the model; ``verdicts`` holds every check's result."""

    def __init__(self, verdicts: Sequence[Verdict]):
        self.verdicts = list(verdicts)
        bad = [v for v in self.verdicts if v.status == MISMATCH]
        lines = "\n".join(f"  {v.artifact} ({v.path}): {v.detail}" for v in bad)
        super().__init__(f"export validation failed for {len(bad)} artifact(s):\n{lines}")


@dataclass
class Verdict:
    artifact: str
    status: str  # OK | MISMATCH | SKIPPED
    detail: str
    path: Path | None = None

    @property
    def ok(self) -> bool:
        return self.status != MISMATCH

    def __str__(self) -> str:
        return f"{self.artifact:<13} {self.status:<9} {self.detail}"


# ---------------------------------------------------------------------------------- prompts


def _render_chat(tokenizer: Any, chat: list[dict], **kw: Any) -> str:
    return tokenizer.apply_chat_template(chat, tokenize=False, date_string=DATE_STRING, **kw)


def sample_prompts(tokenizer: Any) -> list[tuple[str, list[int]]]:
    """(text, ids) of the sample chats, chat-formatted; plain text where there is no chat template.

    Chat-formatted text is tokenized without adding special tokens (the template writes its own, as
    ``apply_chat_template(tokenize=True)`` does); plain text with them."""
    out = []
    has_template = isinstance(getattr(tokenizer, "chat_template", None), str)
    for chat in SAMPLE_CHATS.values():
        if has_template:
            try:
                text = _render_chat(tokenizer, chat, add_generation_prompt=True)
            except Exception:  # e.g. a template that refuses a system message
                continue
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            text = "\n".join(m["content"] for m in chat)
            ids = tokenizer(text)["input_ids"]
        if ids:
            out.append((text, list(ids)))
        if len(out) == 3:
            break
    if not out:
        raise ValueError("none of the sample chats can be rendered with this tokenizer")
    return out


def _fallback_ids(model) -> list[list[int]]:
    """Prompts without a tokenizer: fixed pseudo-random ids in the vocabulary."""
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    return [torch.randint(min(3, vocab - 1), vocab, (n,), generator=g).tolist() for n in (7, 12, 19)]


@torch.no_grad()
def _logits(model, ids: list[int]) -> torch.Tensor:
    """Full-sequence logits (float32, CPU) of a loris or transformers model, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        out = model(torch.tensor([ids], device=device)).logits[0]
        return out.float().cpu()
    finally:
        model.train(was_training)


def _fmt(x: float) -> str:
    return f"{x:.1e}" if x < 0.01 else f"{x:.3f}"


# ---------------------------------------------------------------------------------- merged


def _saved_dtype(folder: Path) -> torch.dtype:
    import json

    cfg = json.loads((folder / "config.json").read_text())
    name = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    return getattr(torch, str(name).removeprefix("torch."), torch.float32)


def _compare(ref: list[torch.Tensor], got: list[torch.Tensor], tol: tuple[str, float]) -> tuple[bool, str]:
    diff = torch.cat([(a - b).flatten() for a, b in zip(ref, got, strict=True)])
    base = torch.cat([a.flatten() for a in ref])
    max_abs = float(diff.abs().max())
    rel = float(diff.norm() / base.norm().clamp_min(1e-12))
    metric, bound = tol
    value = max_abs if metric == "max" else rel
    ok = value <= bound and bool(torch.isfinite(diff).all())
    text = f"max |Δlogit| {_fmt(max_abs)}, rel {_fmt(rel)}"
    return ok, text + ("" if ok else f" > {metric} bound {bound:g}")


def validate_merged(
    model,
    folder: str | Path,
    tokenizer: Any = None,
    *,
    artifact: str | None = None,
    check_transformers: bool | None = None,
) -> Verdict:
    """Reload a ``save_merged`` folder (merged 16-bit, NF4-forced or an adapter) and compare logits."""
    from loris.models.loading import load_saved

    folder = Path(folder)
    adapter = (folder / "adapter_config.json").exists()
    name = artifact or ("lora" if adapter else folder.name)
    prompts = [ids for _, ids in sample_prompts(tokenizer)] if tokenizer is not None else _fallback_ids(model)
    try:
        saved = model.dtype if adapter else _saved_dtype(folder)
    except (OSError, ValueError) as e:
        return Verdict(name, MISMATCH, f"cannot read config.json: {e}", folder)
    nf4 = not adapter and "quantization_config" in (folder / "config.json").read_text()
    ref = [_logits(model, ids) for ids in prompts]
    coarser = max(saved, model.dtype, key=lambda d: _PRECISION.get(d, 0))
    tol = NF4_TOLERANCE if nf4 else MERGED_TOLERANCE.get(coarser, MERGED_TOLERANCE[torch.bfloat16])
    try:
        reloaded = load_saved(folder, dtype=saved, device=model.device)
    except Exception as e:
        return Verdict(name, MISMATCH, f"loris cannot load it: {type(e).__name__}: {e}", folder)
    try:
        ok, text = _compare(ref, [_logits(reloaded, ids) for ids in prompts], tol)
    finally:
        del reloaded
        gc.collect()
    details = [f"{text} over {len(prompts)} prompts (loris, {str(saved).removeprefix('torch.')})"]
    if nf4:
        details.append("NF4 compared loosely (re-quantized weights)")
    if ok and not nf4 and not adapter and check_transformers is not False:
        t_ok, t_text = _transformers_check(model, folder, saved, prompts, ref, tol)
        ok = ok and t_ok
        details.append(t_text)
    return Verdict(name, OK if ok else MISMATCH, "; ".join(details), folder)


def _transformers_check(model, folder, dtype, prompts, ref, tol) -> tuple[bool, str]:
    try:
        from transformers import CONFIG_MAPPING, AutoModelForCausalLM
    except ImportError:
        return True, "transformers: skipped (not installed)"
    model_type = model.config.hf_config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        return True, f"transformers: skipped (no {model_type!r} family in this version)"
    try:
        hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).to(model.device)
    except Exception as e:
        return False, f"transformers cannot load it: {type(e).__name__}: {e}"
    try:
        ok, text = _compare(ref, [_logits(hf, ids) for ids in prompts], tol)
    finally:
        del hf
        gc.collect()
    return ok, f"transformers {text}"


# ---------------------------------------------------------------------------------- GGUF


def gguf_method(path: Path) -> str:
    """``model.Q4_K_M.gguf`` → ``q4_k_m``."""
    parts = Path(path).name.split(".")
    return parts[-2].lower() if len(parts) >= 3 else "gguf"


def _token_diff(tokenizer: Any, want: list[int], got: list[int]) -> str:
    i = next((k for k, (a, b) in enumerate(zip(want, got, strict=False)) if a != b), min(len(want), len(got)))

    def show(ids: list[int]) -> str:
        piece = ids[i : i + 3]
        return f"{piece} {tokenizer.convert_ids_to_tokens(piece)!r}" if piece else "(end)"

    return f"first difference at token {i} of {len(want)}: HF tokenizer {show(want)}, llama.cpp {show(got)}"


@torch.no_grad()
def _greedy(model, ids: list[int], n: int) -> tuple[list[int], list[torch.Tensor]]:
    """loris greedy decoding with full forwards (the reference, not the fast path): tokens and step logits."""
    seq, steps = list(ids), []
    for _ in range(n):
        logits = _logits(model, seq)[-1]
        steps.append(logits)
        seq.append(int(logits.argmax()))
    return seq[len(ids) :], steps


def validate_gguf(
    model, path: str | Path, tokenizer: Any, *, n_tokens: int = 16, cache: dict | None = None
) -> Verdict:
    """llama.cpp's tokenization and greedy choices on the GGUF vs the tokenizer and loris.

    ``cache`` (any dict) keeps loris' greedy reference between calls for several files of one model."""
    path = Path(path)
    method = gguf_method(path)
    name = f"gguf {method}"
    try:
        import llama_cpp
    except ImportError:
        return Verdict(name, SKIPPED, "skipped: install loris[gguf-check] (llama-cpp-python)", path)
    if tokenizer is None:
        return Verdict(name, SKIPPED, "skipped: no tokenizer to compare with", path)
    prompts = sample_prompts(tokenizer)
    longest = max(len(ids) for _, ids in prompts)
    n_ctx = max(64, longest + n_tokens + 8)
    try:
        llm = llama_cpp.Llama(
            str(path),
            n_ctx=n_ctx,
            n_batch=n_ctx,
            n_threads=max(1, min(8, (os.cpu_count() or 2) // 2)),
            logits_all=True,
            verbose=False,
        )
    except Exception as e:
        return Verdict(name, MISMATCH, f"llama.cpp cannot load it: {type(e).__name__}: {e}", path)
    try:
        for i, (text, want) in enumerate(prompts):
            got = llm.tokenize(text.encode(), add_bos=False, special=True)
            if got != want:
                detail = f"tokenization of sample prompt {i + 1} differs: {_token_diff(tokenizer, want, got)}"
                return Verdict(name, MISMATCH, detail, path)
        text, ids = prompts[0]
        with_bos = list(tokenizer(text)["input_ids"])
        got = llm.tokenize(text.encode(), add_bos=True, special=True)
        if got != with_bos:
            detail = (
                "tokenization with BOS differs (the GGUF's add_bos_token does not match the tokenizer): "
                + _token_diff(tokenizer, with_bos, got)
            )
            return Verdict(name, MISMATCH, detail, path)
        key = (id(model), tuple(ids), n_tokens)
        if cache is None or key not in cache:
            found = _greedy(model, ids, n_tokens)
            if cache is not None:
                cache[key] = found
        tokens, ref = cache[key] if cache is not None else found
        llm.reset()
        llm.eval(ids + tokens[:-1])
        scores = [torch.tensor(llm.scores[len(ids) - 1 + k], dtype=torch.float32) for k in range(n_tokens)]
    finally:
        llm.close()
    return _greedy_verdict(name, path, method, model.dtype, tokens, ref, scores, len(prompts))


def _greedy_verdict(name, path, method, model_dtype, tokens, ref, scores, n_prompts) -> Verdict:
    n = len(tokens)
    theirs = [int(s.argmax()) for s in scores]
    equal = sum(a == b for a, b in zip(tokens, theirs, strict=True))
    max_diff = max(float((s - r).abs().max()) for s, r in zip(scores, ref, strict=True))
    head = f"tokenization equal ({n_prompts} prompts)"
    if method in TIE_TOLERANCE:
        tol = TIE_TOLERANCE[method] + _MODEL_DTYPE_SLACK.get(model_dtype, 0.25)
        for k, (mine, other) in enumerate(zip(tokens, theirs, strict=True)):
            gap = float(ref[k][mine] - ref[k][other])
            if mine != other and gap > tol:
                detail = (
                    f"{head}; greedy differs at step {k + 1} of {n}: loris token {mine}, llama.cpp {other}, "
                    f"which loris scores {gap:.3g} logits lower (> near-tie tolerance {tol:g}); "
                    f"max |Δlogit| {_fmt(max_diff)}"
                )
                return Verdict(name, MISMATCH, detail, path)
        ties = n - equal
        tie_note = f", the other {ties} near-ties (≤ {tol:g} logits apart)" if ties else ""
        detail = f"{head}; greedy {equal}/{n} tokens equal{tie_note} (max |Δlogit| {_fmt(max_diff)})"
        return Verdict(name, OK, detail, path)
    in_top = sum(
        other in torch.topk(r, min(LOOSE_TOP_K, r.numel())).indices.tolist()
        for other, r in zip(theirs, ref, strict=True)
    )
    ok = in_top * 2 >= n
    detail = (
        f"{head}; {method} compared loosely (low-bit quant): llama.cpp's greedy token in loris' "
        f"top-{LOOSE_TOP_K} at {in_top}/{n} steps, need half ({equal}/{n} equal)"
    )
    return Verdict(name, OK if ok else MISMATCH, detail, path)


# ---------------------------------------------------------------------------------- Modelfile


@dataclass
class Modelfile:
    from_: str | None
    template: str | None
    system: str | None
    stops: list[str]


def parse_modelfile(text: str) -> Modelfile:
    """FROM, TEMPLATE, SYSTEM and ``PARAMETER stop`` of a Modelfile (triple- or single-quoted values)."""

    def value(command: str) -> str | None:
        m = re.search(rf'^{command}[ \t]+"""(.*?)"""', text, re.S | re.M | re.I)
        if m:
            return m.group(1)
        m = re.search(rf'^{command}[ \t]+"((?:[^"\\\n]|\\.)*)"[ \t]*$', text, re.M | re.I)
        if m:
            import json

            return json.loads(f'"{m.group(1)}"')
        m = re.search(rf"^{command}[ \t]+(.+?)[ \t]*$", text, re.M | re.I)
        return m.group(1) if m else None

    stops = [
        s.group(1) or s.group(2)
        for s in re.finditer(r'^PARAMETER[ \t]+stop[ \t]+(?:"(.*)"|(\S.*?))[ \t]*$', text, re.M | re.I)
    ]
    return Modelfile(value("FROM"), value("TEMPLATE"), value("SYSTEM"), stops)


def _renderer(choice: str) -> tuple[Callable[[list[tuple[str, dict]]], list[str]], str]:
    from loris.export import gotemplate

    def python(jobs):
        return [gotemplate.render_template(t, d) for t, d in jobs]

    if choice == "python" or (choice == "auto" and not gotemplate.go_available()):
        return python, "loris' Go-template renderer; go not installed"
    if choice not in ("auto", "go"):
        raise ValueError(f"renderer={choice!r}: use 'auto', 'go' or 'python'")
    return gotemplate.render_with_go, "Go text/template"


def _first_difference(got: str, want: str) -> str:
    i = next((k for k, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
    lo = max(0, i - 20)
    return f"at char {i}: TEMPLATE gives {got[lo : i + 30]!r}, chat template {want[lo : i + 30]!r}"


def validate_modelfile(path: str | Path, tokenizer: Any, *, renderer: str = "auto") -> Verdict:
    """Render the Modelfile's TEMPLATE as Ollama does and compare with the tokenizer's chat template."""
    from loris.export.gotemplate import GoTemplateError, UnsupportedTemplate, ollama_chat

    path = Path(path)
    name = "Modelfile"
    try:
        mf = parse_modelfile(path.read_text())
    except OSError as e:
        return Verdict(name, MISMATCH, f"cannot read it: {e}", path)
    if not mf.from_:
        return Verdict(name, MISMATCH, "no FROM line", path)
    if not Path(mf.from_).is_absolute() and not (path.parent / mf.from_).exists():
        return Verdict(name, MISMATCH, f"FROM {mf.from_}: no such file beside the Modelfile", path)
    if tokenizer is None or not isinstance(getattr(tokenizer, "chat_template", None), str):
        return Verdict(name, SKIPPED, "skipped: the tokenizer has no chat template to compare with", path)
    if mf.template is None:
        return Verdict(
            name, SKIPPED, "skipped: no TEMPLATE (Ollama will guess one, which may not match)", path
        )
    bos = getattr(tokenizer, "bos_token", None) or ""
    wants: dict[str, str] = {}
    for label, chat in SAMPLE_CHATS.items():
        try:
            wants[label] = _render_chat(tokenizer, chat, add_generation_prompt=True)
        except Exception:  # the chat template refuses this chat (e.g. a system message): nothing to match
            continue
    if not wants:
        return Verdict(name, SKIPPED, "skipped: the chat template renders none of the sample chats", path)
    render, how = _renderer(renderer)
    jobs = [(mf.template, ollama_chat(SAMPLE_CHATS[label], mf.system)) for label in wants]
    try:
        gots = render(jobs)
    except UnsupportedTemplate as e:
        return Verdict(name, SKIPPED, f"skipped: {e}; install Go to render this TEMPLATE", path)
    except GoTemplateError as e:
        return Verdict(name, MISMATCH, f"TEMPLATE does not render: {e}", path)
    for (label, want), got in zip(wants.items(), gots, strict=True):
        if bos and want.startswith(bos) and not got.startswith(bos):
            want = want[len(bos) :]  # Ollama leaves BOS to the tokenizer
        if got != want:
            detail = f"TEMPLATE render differs from the chat template (chat {label!r}) " + _first_difference(
                got, want
            )
            return Verdict(name, MISMATCH, detail, path)
    stop_problem = _stop_problem(tokenizer, mf.stops)
    if stop_problem:
        return Verdict(name, MISMATCH, stop_problem, path)
    skipped = len(SAMPLE_CHATS) - len(wants)
    note = f" ({skipped} the chat template refuses)" if skipped else ""
    detail = f"TEMPLATE renders like the chat template on {len(wants)} chats{note} ({how}); stops ok"
    return Verdict(name, OK, detail, path)


def _stop_problem(tokenizer: Any, stops: list[str]) -> str | None:
    """The text after an assistant reply (the end-of-turn marker) must begin with a stop string."""
    sentinel = "Reply-sentinel-7f3a"
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": sentinel}]
    try:
        text = _render_chat(tokenizer, chat, add_generation_prompt=False)
    except Exception:
        return None
    after = text.split(sentinel, 1)[1] if sentinel in text else ""
    if not after.strip() or any(s and after.startswith(s) for s in stops):
        return None
    return f"no PARAMETER stop matches the end of an assistant turn {after[:20]!r} (stops: {stops})"


# ---------------------------------------------------------------------------------- all of an export


def validate_artifact(model, kind: str, path: str | Path, tokenizer: Any, **kw: Any) -> Verdict:
    """One artifact: ``kind`` is merged_16bit / merged_4bit_forced / lora / gguf / modelfile."""
    if kind == "gguf":
        return validate_gguf(model, path, tokenizer, **kw)
    if kind == "modelfile":
        return validate_modelfile(path, tokenizer, **kw)
    return validate_merged(model, path, tokenizer, artifact=kind, **kw)


def validate_export(
    model,
    tokenizer: Any,
    artifacts: Iterable[tuple[str, str | Path]],
    *,
    raise_on_mismatch: bool = True,
    report: Callable[[str], None] | None = print,
) -> list[Verdict]:
    """Check each (kind, path) written, report its verdict line, and raise if any is a MISMATCH."""
    verdicts = []
    cache: dict = {}
    for kind, path in artifacts:
        kw = {"cache": cache} if kind == "gguf" else {}
        verdict = validate_artifact(model, kind, path, tokenizer, **kw)
        verdicts.append(verdict)
        if report is not None:
            report(str(verdict))
    if raise_on_mismatch and any(v.status == MISMATCH for v in verdicts):
        raise ExportValidationError(verdicts)
    return verdicts


def gguf_artifacts(paths: Iterable[str | Path]) -> list[tuple[str, Path]]:
    """The artifacts of a ``save_gguf`` call: each file, then the Modelfile beside them if there is one."""
    paths = [Path(p) for p in paths]
    out: list[tuple[str, Path]] = [("gguf", p) for p in paths]
    if paths and (paths[0].parent / "Modelfile").exists():
        out.append(("modelfile", paths[0].parent / "Modelfile"))
    return out
