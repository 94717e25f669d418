"""Where this process stands among its peers: rank, world size, device, process group, collectives.

torchrun and ``accelerate launch`` both start one process per GPU and describe it in the
environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``); `init` reads them and opens the default process group (NCCL on CUDA, gloo on
CPU). A script run with plain ``python`` sees ``WORLD_SIZE`` unset and stays a single process: every
helper here then answers rank 0 of 1 and does nothing. Reading the environment happens when these
functions are called, never at import.

Collectives go through `reduce_sum` / `all_gather_rows` / `barrier`, which name this rank and the
operation when the peer group fails (a rank died, ran out of memory, or did not reach the same call
within the process group's timeout), instead of hanging or printing a bare backend error.
"""

from __future__ import annotations

import contextvars
import datetime
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 1800  # transformers' ddp_timeout default
T = TypeVar("T")
_IN_MAIN_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("loris_main_only", default=False)


class RankFailure(RuntimeError):
    """A collective failed or timed out; the message names this rank, the operation and what to check."""


@dataclass(frozen=True)
class RankInfo:
    """This process's place in the launch: global rank, rank on its node, and how many there are."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} in the environment is not a whole number.") from None


def launch_info() -> RankInfo:
    """What the launcher (torchrun, accelerate) put in the environment; rank 0 of 1 without one.

    An initialised default process group wins over the environment (a test or a notebook may have
    opened one itself)."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = _env_int("LOCAL_RANK", rank)
        return RankInfo(rank, local, world, _env_int("LOCAL_WORLD_SIZE", world))
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank if world > 1 else 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world} in the environment are inconsistent.")
    return RankInfo(rank, local, world, _env_int("LOCAL_WORLD_SIZE", world))


def launched() -> bool:
    """True when a launcher started several processes (``WORLD_SIZE`` > 1) or a group is open."""
    return launch_info().distributed


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return launch_info().rank


def world_size() -> int:
    return launch_info().world_size


def is_main_process() -> bool:
    return launch_info().is_main


def local_device() -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` under a launcher, ``cuda`` alone, the CPU without CUDA."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    info = launch_info()
    if not info.distributed:
        return torch.device("cuda")  # the current device, as a single process has always used
    if info.local_rank >= torch.cuda.device_count():
        raise RuntimeError(
            f"LOCAL_RANK={info.local_rank} but only {torch.cuda.device_count()} GPU(s) are visible: start at "
            "most one process per GPU (torchrun --nproc-per-node <= the GPU count)."
        )
    return torch.device("cuda", info.local_rank)


def init(timeout_s: float = DEFAULT_TIMEOUT_S, backend: str | None = None) -> RankInfo:
    """Open the default process group if a launcher asked for several processes; idempotent.

    Backend: NCCL when CUDA is visible, gloo otherwise. On CUDA the process is bound to
    ``cuda:LOCAL_RANK`` first, so each rank's collectives and default tensors use its own GPU."""
    info = launch_info()
    if not info.distributed or is_initialized():
        return info
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed support.")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise RuntimeError(
                f"WORLD_SIZE={info.world_size} but {name} is not set: start the script with torchrun "
                "(torchrun --nproc-per-node N train.py) or accelerate launch, which set it."
            )
    device = local_device()
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    kwargs: dict[str, Any] = {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        kwargs["device_id"] = device
    dist.init_process_group(
        backend,
        timeout=datetime.timedelta(seconds=timeout_s),
        rank=info.rank,
        world_size=info.world_size,
        **kwargs,
    )
    return info


def shutdown() -> None:
    """Close the default process group (end of a script); nothing to do without one."""
    if is_initialized():
        dist.destroy_process_group()


def _named(op: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Re-raise a backend failure inside ``op`` as `RankFailure` naming the rank and what to check."""

    def wrap(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> T:
            try:
                return fn(*args, **kwargs)
            except (RuntimeError, dist.DistError) as exc:
                if isinstance(exc, RankFailure):
                    raise
                info = launch_info()
                raise RankFailure(
                    f"rank {info.rank} of {info.world_size}: {op} failed ({type(exc).__name__}: {exc}). "
                    "Another rank probably died (see its log: out of memory, an exception, a killed "
                    "process) or did not reach the same step within the timeout (ddp_timeout); every rank "
                    "must run the same number of steps on the same settings."
                ) from exc

        return inner

    return wrap


@_named("all_reduce (sum)")
def reduce_sum(value: float | int | torch.Tensor, device: torch.device | None = None) -> Any:
    """The sum of ``value`` over ranks (a float/int comes back as the same type; a tensor in place)."""
    if not is_initialized():
        return value
    if torch.is_tensor(value):
        dist.all_reduce(value)
        return value
    device = device or _collective_device()
    t = torch.tensor(float(value), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    out = float(t)
    return int(round(out)) if isinstance(value, int) and not isinstance(value, bool) else out


def reduce_any(flag: bool, device: torch.device | None = None) -> bool:
    """True when ``flag`` is true on any rank (so every rank takes the same branch)."""
    return bool(reduce_sum(int(bool(flag)), device))


@_named("all_gather")
def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every rank's ``t`` (same shape on each) concatenated along dim 0, in rank order."""
    if not is_initialized():
        return t
    dev = _collective_device()
    local = t.detach().to(dev).contiguous()
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local)
    return torch.cat(parts).to(t.device)


@_named("broadcast")
def broadcast_(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``t`` on every rank with rank ``src``'s values (in place, on ``t``'s device)."""
    if not is_initialized():
        return t
    dev = _collective_device()
    buf = t.detach().to(dev)
    dist.broadcast(buf, src)
    if buf.data_ptr() != t.data_ptr():
        with torch.no_grad():
            t.copy_(buf)
    return t


@_named("barrier")
def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_initialized():
        dist.barrier()


def _collective_device() -> torch.device:
    """Where collective buffers live: the rank's GPU for NCCL, the CPU for gloo."""
    if is_initialized() and dist.get_backend() == "nccl":
        return local_device()
    return torch.device("cpu")


def in_main_only() -> bool:
    """True inside a function `on_main_process` runs on rank 0 alone: no collective may start there."""
    return _IN_MAIN_ONLY.get()


def named_collective(op: str, fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` (a collective made of other libraries' calls) raising `RankFailure` naming ``op``
    when the backend fails, as loris' own collectives do."""
    return _named(op)(fn)


def on_main_process(fn: Callable[..., T]) -> Callable[..., T]:
    """Run ``fn`` on rank 0 only and hand its result to every rank: for writes to a shared folder
    (adapters, exports, logs) and uploads that one process must make. The other ranks wait for it;
    if it raises there, they raise `RankFailure` naming the error. Calls made from inside such a
    function run directly (rank 0 is already alone). One process: just ``fn``."""

    @functools.wraps(fn)
    def inner(*args: Any, **kwargs: Any) -> T:
        if _IN_MAIN_ONLY.get() or not is_initialized():
            return fn(*args, **kwargs)
        box: list[Any] = [None]
        failure: BaseException | None = None
        if is_main_process():
            token = _IN_MAIN_ONLY.set(True)
            try:
                result = fn(*args, **kwargs)
                box[0] = ("ok", result if _picklable(result) else None)
            except BaseException as exc:  # the others must hear of it, or they would wait forever
                failure = exc
                box[0] = ("error", f"{type(exc).__name__}: {exc}")
            finally:
                _IN_MAIN_ONLY.reset(token)
        _broadcast_object(box, fn.__name__)
        if failure is not None:
            raise failure
        status, value = box[0]
        if status == "error":
            raise RankFailure(f"rank {rank()}: {fn.__name__} failed on rank 0 ({value}).")
        return result if is_main_process() else value

    return inner


def _picklable(value: Any) -> bool:
    import pickle

    try:
        pickle.dumps(value)
    except Exception:  # noqa: BLE001 - any reason means: do not send it
        return False
    return True


def _broadcast_object(box: list[Any], what: str) -> None:
    @_named(f"broadcast of {what}'s result")
    def send() -> None:
        dist.broadcast_object_list(box, src=0, device=_collective_device())

    send()
