"""vLLM's names for sampling settings and outputs, so `fast_generate` notebooks port unchanged."""

from __future__ import annotations

from dataclasses import dataclass, field

from loris.generation.sampling import SamplingConfig


@dataclass
class SamplingParams:
    """vLLM's `SamplingParams` subset: ``temperature=0`` is greedy; ``top_k`` -1 or 0 is off;
    ``max_tokens`` new tokens at most; ``stop`` strings end a completion (cut from the text unless
    ``include_stop_str_in_output``); ``n`` completions per prompt share one prefill."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int | None = 16
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n={self.n}: ask for at least one completion per prompt")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature}: must be >= 0 (0 = greedy)")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.sampling_config()  # validates top_p / min_p / repetition_penalty

    def sampling_config(self) -> SamplingConfig:
        greedy = self.temperature == 0
        return SamplingConfig(
            do_sample=not greedy,
            temperature=1.0 if greedy else self.temperature,
            top_k=max(self.top_k, 0),
            top_p=self.top_p,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
        )


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop" (EOS or a stop string) or "length"
    stop_reason: int | str | None = None  # the stop string or EOS id that ended it


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = True


@dataclass
class LoRARequest:
    """vLLM's name: an adapter folder to generate with (``model.load_lora(path)`` makes one)."""

    lora_name: str
    lora_int_id: int
    lora_path: str
