"""An NF4 decoder written from the format's definition, independent of loris' and bitsandbytes' code.

The oracle for every NF4 test: bitsandbytes' CPU kernels are not one (on AVX-512 bf16 hosts its CPU
dequantize is wrong whenever a 64-element block straddles two rows), and loris' reference must not
be checked against itself. It walks the elements one index at a time: byte ``j`` holds elements
``2j`` (high nibble) and ``2j + 1`` (low nibble); element ``i`` is ``NF4[nibble] * scale[i // 64]``;
a nested scale is ``dynamic_map[q] * absmax2[b // 256] + offset``. Slow, so keep shapes small.
"""

from __future__ import annotations

import math

import torch

# The 16 NF4 values (QLoRA, Dettmers et al. 2023, appendix E), as fp32.
NF4 = torch.tensor(
    [
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    ],
    dtype=torch.float32,
)  # fmt: skip


def block_scales(state) -> list[float]:
    """One fp32 scale per block, decoding the 8-bit nested scales one by one."""
    absmax = state.absmax.reshape(-1).cpu()
    if state.state2 is None:
        return absmax.float().tolist()
    code2 = state.state2.code.float().cpu()
    absmax2 = state.state2.absmax.float().cpu()
    offset = torch.as_tensor(state.offset, dtype=torch.float32).cpu()
    per = state.state2.blocksize
    return [(code2[int(q)] * absmax2[b // per] + offset).item() for b, q in enumerate(absmax.tolist())]


def dequantize(packed: torch.Tensor, state) -> torch.Tensor:
    """fp32 weights of ``state.shape`` from packed NF4 bytes and a bitsandbytes-style quant state."""
    n = math.prod(state.shape)
    data = packed.reshape(-1).view(torch.uint8).cpu().tolist()
    assert len(data) == (n + 1) // 2, f"{len(data)} packed bytes for {n} elements"
    scales = torch.tensor(block_scales(state), dtype=torch.float32)
    nibbles = [(data[i // 2] >> 4) if i % 2 == 0 else (data[i // 2] & 0xF) for i in range(n)]
    block_of = torch.tensor([i // state.blocksize for i in range(n)])
    return (NF4[torch.tensor(nibbles)] * scales[block_of]).reshape(tuple(state.shape))


def nearest_codes(values: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index of the nearest ``code`` entry for each value (brute force over the whole table)."""
    return (values.reshape(-1, 1).float().cpu() - code.float().cpu().reshape(1, -1)).abs().argmin(dim=1)


def decode_4bit_linears(model: torch.nn.Module) -> torch.nn.Module:
    """Swap each bitsandbytes ``Linear4bit`` of a transformers model for an fp32 ``nn.Linear`` holding
    its weight decoded by :func:`dequantize`, in place; returns the model.

    transformers' own forward through a 4-bit layer calls bitsandbytes' CPU kernels, which fail or
    compute wrong weights on some hosts (AVX-512 bf16). With this the test still reads the checkpoint
    through transformers' bitsandbytes loader (its config, tensor names and quant states) and runs
    transformers' model code; only the NF4 decoding is the oracle's.
    """
    import bitsandbytes as bnb

    swaps = [
        (name, module) for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)
    ]
    assert swaps, "no bitsandbytes 4-bit layers: transformers did not load the checkpoint as 4-bit"
    for name, module in swaps:
        weight = dequantize(module.weight.data, module.weight.quant_state)
        plain = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
        plain.weight.data = weight.to(module.weight.device)
        if module.bias is not None:
            plain.bias.data = module.bias.data.float()
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, plain)
    return model
