"""Helpers shared by the Triton launchers: tile sizes, output allocation, the chunk cumsums' PyTorch reference and a
launch cache for host-bound calls.

N sequences, E time, H heads, D dim, BT chunk.
"""
from __future__ import annotations

import os

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256
MAX_SLOTS = 128

# Tests set this to fill every kernel output with NaN before the kernel writes it, so an unwritten element fails.
POISON_OUTPUTS = False


# Triton's CPU interpreter computes every product in float32 numpy and gets bfloat16 products wrong, so under it the
# kernels are asked for "ieee" products, which cast every operand to float32 first (the GPU grid tests the others).
INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"


def kernel_precision(prec: str) -> str:
    """The dot precision a kernel is launched with: `prec`, or "ieee" under the interpreter."""
    return "ieee" if INTERPRETER else prec


def block(n: int, least: int = 16) -> int:
    """The power of two >= n (and >= `least`): the tile size every launcher uses for a dimension of size n."""
    return max(least, 1 << (max(n, 1) - 1).bit_length())


def new_output(*shape: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    if POISON_OUTPUTS:  # NaN, or -1 for integer flags (read as "set")
        return torch.full(shape, float("nan") if dtype.is_floating_point else -1, dtype=dtype, device=device)
    return torch.empty(*shape, dtype=dtype, device=device)


def chunk_cumsum(g: torch.Tensor, chunk: int) -> torch.Tensor:
    """`[N, E, H, M]` log gates -> their cumulative sums restarted at every chunk of `chunk` rows (float32)."""
    N, E, H, M = g.shape
    return g.float().view(N, E // chunk, chunk, H, M).cumsum(2).view(N, E, H, M)


class CompiledLaunch:
    """Launches a `@triton.jit` kernel whose integer arguments are constexprs or not specialized, reusing its binary.

    Triton binds and specializes every argument at every call (tens of microseconds for a kernel with twenty
    tensors), which is most of the host time of a decoding step. Here a binary is looked up by what it was
    specialized on: the device, the tensors' dtypes, the scalars' types, the constexprs and the launch options.
    Pointer alignment is the one other thing Triton specializes on, so only calls whose tensors are all 16-byte
    aligned (every allocation is) take the shortcut; any other call, the first one of a key and every call under the
    interpreter go through Triton's own launch, whose binary is kept when it is for aligned tensors.
    """

    def __init__(self, kernel):
        self.kernel = kernel
        self.binaries: dict[tuple, object] = {}

    def __call__(self, grid: tuple[int, ...], tensors: tuple[torch.Tensor, ...], scalars: tuple, constexprs: dict,
                 **options) -> None:
        """`kernel[grid](*tensors, *scalars, **constexprs, **options)`: the kernel takes its tensors first, then
        its scalars (floats, and ints in its `do_not_specialize`), then its constexprs in `constexprs`' order."""
        aligned = all(t.data_ptr() % 16 == 0 for t in tensors)
        key = (tensors[0].device, tuple(t.dtype for t in tensors), tuple(_scalar_type(x) for x in scalars),
               tuple(constexprs.values()), tuple(options.items()))
        binary = self.binaries.get(key) if aligned else None
        if binary is not None:
            binary[(*grid, 1, 1)[:3]](*tensors, *scalars, *constexprs.values())  # a binary takes a 3-D grid
            return
        binary = self.kernel[grid](*tensors, *scalars, **constexprs, **options)
        if aligned and not INTERPRETER and binary is not None:
            self.binaries[key] = binary


def _scalar_type(x) -> str:
    # the type Triton gives a scalar argument: fp32 for a float, i32 or i64 for an int by its value
    if isinstance(x, float):
        return "fp32"
    return "i32" if -2**31 <= x < 2**31 else "i64"
