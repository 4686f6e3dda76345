"""The Triton range-count kernel of the KSG estimator (pass 2; see ``eae_kernels.ksg``).

    counts = range_count(z, radius, inclusive)
    # counts[i] = #{j != i : max_c |z_ic - z_jc| < radius[i]}   (<= when inclusive), int64 (N,)

One program per block of BLOCK_M rows streams the rows in tiles of BLOCK_N columns and keeps a
BLOCK_M x BLOCK_N tile of max-norm distances, max_c fl(|a_c - b_c|) in the input's precision (the
same numbers as the k-NN search and the CPU kernel, so the comparisons are exact); memory is the
(N,) output only. z and radius must be finite (the caller checks). On CPU tensors the kernel runs
in Triton's interpreter when TRITON_INTERPRET=1 is set before first use (tests), with small fixed
blocks. The GPU block sizes are a first choice, not tuned on hardware.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

__all__ = ["range_count"]

INTERPRETER_BLOCKS = {"BLOCK_M": 16, "BLOCK_N": 16}
GPU_BLOCKS = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4}


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def range_count_kernel(
        z_ptr, radius_ptr, out_ptr, n, d, stride_n, stride_d,
        INCLUSIVE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n
        radius = tl.load(radius_ptr + rows, mask=row_ok, other=0)
        count = tl.zeros([BLOCK_M], dtype=tl.int32)
        for start in range(0, n, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            col_ok = cols < n
            dist = tl.zeros([BLOCK_M, BLOCK_N], dtype=z_ptr.dtype.element_ty)
            for c in range(0, d):
                a = tl.load(z_ptr + rows * stride_n + c * stride_d, mask=row_ok, other=0)
                b = tl.load(z_ptr + cols * stride_n + c * stride_d, mask=col_ok, other=0)
                dist = tl.maximum(dist, tl.abs(a[:, None] - b[None, :]))
            if INCLUSIVE:
                within = dist <= radius[:, None]
            else:
                within = dist < radius[:, None]
            within = within & col_ok[None, :] & (rows[:, None] != cols[None, :])
            count += tl.sum(within.to(tl.int32), axis=1)
        tl.store(out_ptr + rows, count.to(tl.int64), mask=row_ok)

    return range_count_kernel


def range_count(z: torch.Tensor, radius: torch.Tensor, inclusive: bool) -> torch.Tensor:
    """Counts of the other rows of ``z`` (N, d) within each row's ``radius`` (N,) in the max-norm:
    strictly (``inclusive=False``) or not. z float32 or float64; radius is cast to z's dtype."""
    if z.dim() != 2 or z.shape[1] < 1 or radius.shape != (z.shape[0],):
        raise ValueError(f"range_count needs z (N, d >= 1) and radius (N,); got {tuple(z.shape)} and {tuple(radius.shape)}")
    n, d = z.shape
    out = torch.empty(n, dtype=torch.int64, device=z.device)
    if n == 0:
        return out
    radius = radius.to(z.dtype).contiguous()
    interpret = z.device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") == "1"
    blocks = INTERPRETER_BLOCKS if interpret else GPU_BLOCKS
    grid = (-(-n // blocks["BLOCK_M"]),)
    guard = torch.cuda.device(z.device) if z.device.type == "cuda" else contextlib.nullcontext()
    with guard:
        _kernel()[grid](z, radius, out, n, d, z.stride(0), z.stride(1), INCLUSIVE=bool(inclusive), **blocks)
    return out

