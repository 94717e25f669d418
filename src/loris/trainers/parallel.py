"""The training loop's view of many processes: which rows this rank trains on, how the step's loss
is normalised across ranks, and the DDP/FSDP2 wrapper its forward goes through.

One process (``python train.py``) gets `Ranks` of world size 1, and every method below is then the
identity: the loop runs exactly as it always has. Under torchrun/accelerate (``WORLD_SIZE`` > 1) the
trainer opens the process group itself (`loris.distributed.env.init`) and

- **data**: each micro-batch of the single-process run with ``per_device_train_batch_size × world``
  rows is cut into ``world`` contiguous slices, one per rank, so N ranks × batch b see exactly the
  rows 1 rank × batch N·b sees. A last micro-batch with fewer rows than ranks is skipped;
- **loss**: the step's label-token count is summed over ranks and accumulation micro-batches; each
  rank divides its summed token loss by (global count / world), and DDP/FSDP2 average gradients over
  ranks, so the gradient is that of the mean over every label token of the global step, as on one
  process. The logged loss is the mean over ranks of the ranks' shares, i.e. that same global mean;
- **wrapping**: DDP for LoRA/QLoRA (and full fine-tuning that fits a card), FSDP2 when the config sets
  ``fsdp`` (TRL's field): see `loris.distributed.wrap`. Non-final accumulation micro-batches skip the
  gradient communication.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from loris.distributed import env
from loris.distributed.wrap import ShardSettings, gradient_sync, local_value, shard_fsdp2, wrap_ddp

FSDP_WORDS = ("full_shard", "shard_grad_op", "offload", "auto_wrap")
FSDP_CONFIG_KEYS = (
    "fsdp_version",
    "reshard_after_forward",
    "offload_params",
    "cpu_offload",
    "activation_checkpointing",
    "transformer_layer_cls_to_wrap",
    "auto_wrap_policy",
    "min_num_params",
    "cpu_ram_efficient_loading",
    "sync_module_states",
    "use_orig_params",
    "limit_all_gathers",
    "state_dict_type",
)


@dataclass
class FSDPOptions:
    """``fsdp`` / ``fsdp_config`` (transformers' and accelerate's names) read into loris' settings."""

    reshard_after_forward: bool = True
    cpu_offload: bool = False
    activation_checkpointing: bool = False


def parse_fsdp(fsdp: str | list[str] | bool | None, fsdp_config: dict[str, Any] | None) -> FSDPOptions | None:
    """None when FSDP is off; else the options. Errors name the unknown word or key.

    ``fsdp``: transformers' space-separated words ("full_shard auto_wrap", "shard_grad_op",
    "full_shard offload") or ``True``. ``fsdp_config``: ``fsdp_version`` (2 only),
    ``reshard_after_forward``, ``offload_params``/``cpu_offload``, ``activation_checkpointing``;
    wrapping keys (``transformer_layer_cls_to_wrap``, ``auto_wrap_policy``, ...) are accepted and need
    no value: loris always shards one unit per decoder block."""
    if fsdp is True:
        fsdp = "full_shard"
    if not fsdp:
        if fsdp_config:
            raise ValueError(
                "fsdp_config is set but fsdp is off: set fsdp='full_shard' (or remove fsdp_config)."
            )
        return None
    words = fsdp.split() if isinstance(fsdp, str) else [str(w) for w in fsdp]
    unknown = [w for w in words if w not in FSDP_WORDS]
    if unknown:
        raise ValueError(
            f"fsdp={fsdp!r}: {unknown} not understood. loris uses FSDP2 with {list(FSDP_WORDS)} "
            "(hybrid_shard and no_shard are not supported; for data parallel LoRA leave fsdp unset: DDP)."
        )
    opts = FSDPOptions(reshard_after_forward="shard_grad_op" not in words, cpu_offload="offload" in words)
    cfg = {k.removeprefix("fsdp_") if k != "fsdp_version" else k: v for k, v in (fsdp_config or {}).items()}
    bad = sorted(set(cfg) - set(FSDP_CONFIG_KEYS))
    if bad:
        raise ValueError(f"fsdp_config keys {bad} are not understood; known: {list(FSDP_CONFIG_KEYS)}.")
    if cfg.get("fsdp_version", 2) != 2:
        raise ValueError(
            f"fsdp_config fsdp_version={cfg['fsdp_version']!r}: loris runs FSDP2 only (fsdp_version 2)."
        )
    if "reshard_after_forward" in cfg:
        value = cfg["reshard_after_forward"]
        opts.reshard_after_forward = (
            value if isinstance(value, bool) else str(value).upper() in ("FULL_SHARD", "TRUE")
        )
    for key in ("offload_params", "cpu_offload"):
        if key in cfg:
            opts.cpu_offload = bool(cfg[key])
    opts.activation_checkpointing = bool(cfg.get("activation_checkpointing", False))
    return opts


@dataclass
class Ranks:
    """This trainer's ranks and its wrapped loss module (None: one process, nothing wrapped)."""

    info: env.RankInfo = field(default_factory=env.RankInfo)
    wrapped: nn.Module | None = None
    mode: str = "single"  # "single", "ddp" or "fsdp"

    @property
    def world(self) -> int:
        return self.info.world_size

    @property
    def is_main(self) -> bool:
        return self.info.is_main

    # ------------------------------------------------------------------------------------------ data
    def num_batches(self, num_rows: int, batch_size: int, drop_last: bool) -> int:
        """Micro-batches per epoch, each of ``batch_size`` rows per rank."""
        step = batch_size * self.world
        n = num_rows // step if drop_last else math.ceil(num_rows / step)
        if not drop_last and 0 < num_rows % step < self.world:
            n -= 1  # a last micro-batch too small to give every rank a row is skipped
        return n

    def rows_of_batch(self, order: list[int], index: int, batch_size: int) -> list[int]:
        """This rank's rows of global micro-batch ``index`` of the epoch ``order``."""
        step = batch_size * self.world
        rows = order[index * step : (index + 1) * step]
        if self.world == 1:
            return rows
        base, extra = divmod(len(rows), self.world)
        r = self.info.rank
        start = r * base + min(r, extra)
        return rows[start : start + base + (1 if r < extra else 0)]

    # ------------------------------------------------------------------------------------------ loss
    def loss_normaliser(self, local_items: int | float) -> tuple[int | float, int | float]:
        """(global item count, what each rank divides its summed loss by) for one optimizer step."""
        if self.world == 1 and self.wrapped is None:
            return local_items, local_items
        total = env.reduce_sum(local_items)
        return total, (total if total == 0 else total / self.world)

    def mean(self, value: float) -> float:
        """The mean of ``value`` over ranks."""
        return value if self.world == 1 else env.reduce_sum(float(value)) / self.world

    def total(self, value: int | float) -> int | float:
        """The sum of ``value`` over ranks."""
        return value if self.world == 1 else env.reduce_sum(value)

    def any(self, flag: bool) -> bool:
        return flag if self.world == 1 else env.reduce_any(flag)

    def forward(self, fn, model: nn.Module, *args: Any) -> Any:
        """``fn(model, *args)``, through the DDP/FSDP2 wrapper when there is one."""
        return fn(model, *args) if self.wrapped is None else self.wrapped(fn, *args)

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager:
        """Context for one micro-batch's forward+backward: gradients are communicated on the last only."""
        return gradient_sync(self.wrapped, last)

    def grad_norm(self, norm: torch.Tensor | float) -> float:
        return float(local_value(norm)) if torch.is_tensor(norm) else float(norm)


def setup_ranks(model: nn.Module, args: Any) -> Ranks:
    """Open the process group when launched with several processes, then wrap ``model``'s loss.

    DDP when a process group is open (torchrun/accelerate, or one the caller opened, even of size
    1); FSDP2 instead when ``args.fsdp`` is set. Without a process group nothing is wrapped."""
    env.init(getattr(args, "ddp_timeout", env.DEFAULT_TIMEOUT_S))
    opts = parse_fsdp(getattr(args, "fsdp", None), getattr(args, "fsdp_config", None))
    if not env.is_initialized():
        if opts is not None:
            warnings.warn(
                "fsdp is set but this is a single process (no torchrun/accelerate launch): training unsharded. "
                "Start it with torchrun --nproc-per-node N to shard.",
                stacklevel=3,
            )
        return Ranks()
    info = env.launch_info()
    if opts is None:
        wrapped = wrap_ddp(
            model,
            bucket_cap_mb=getattr(args, "ddp_bucket_cap_mb", None),
            find_unused_parameters=bool(getattr(args, "ddp_find_unused_parameters", False)),
        )
        return Ranks(info, wrapped, "ddp")
    if getattr(args, "fp16", False):
        raise ValueError("fp16 with fsdp is not supported (no sharded gradient scaler): use bf16=True.")
    bf16 = getattr(args, "bf16", False) and env.local_device().type == "cuda"
    settings = ShardSettings(
        reshard_after_forward=opts.reshard_after_forward,
        cpu_offload=opts.cpu_offload,
        param_dtype=torch.bfloat16 if bf16 else None,
        reduce_dtype=torch.float32 if bf16 else None,
    )
    return Ranks(info, shard_fsdp2(model, settings), "fsdp")
