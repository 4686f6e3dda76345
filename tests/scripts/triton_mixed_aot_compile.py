"""Compiles the mixed-search kernels (eae_kernels/triton_mixed.py) for sm_80 and sm_90 without a
GPU (Triton's bundled ptxas), in a process without TRITON_INTERPRET: catches what the interpreter
cannot (tl.dot lowering and operand types, layouts, Triton's compile-time checks). Run by
tests/test_triton_mixed.py; prints one "compiled" line per kernel and arch, with "mma <instruction>"
when the candidate kernel's PTX holds tensor-core instructions on tf32/bf16 operands, and "fma"
when the refinement's exact keys are fma.rn.f32 (run it with fusion off to check the latter).
"""

import inspect
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from eae_kernels import triton_mixed as tm

if "constexprs" not in inspect.signature(ASTSource).parameters:  # triton < 3.3
    raise SystemExit("UNSUPPORTED: this triton's ASTSource takes no constexprs")


def sig(kernel, dtypes):
    names = [p.name for p in kernel.params if not p.is_constexpr]
    return {name: dtypes.get(name, "i32") for name in names}


bits = {name: "i64" for name in ("grow_bits", "shrink_bits", "err_rel_bits", "err_abs_bits")}
cand = dict(bits, norm32_ptr="*fp32", norm_ptr="*fp64", delta_ptr="*fp64", consts_ptr="*fp64", cand_ptr="*i32",
            count_ptr="*i32")
refine = dict(cand_ptr="*i32", count_ptr="*i32", consts_ptr="*fp64", terms_ptr="*fp64", nbr_ptr="*i64",
              weight_ptr="*fp32", stats_ptr="*i32", eps_bits="i64")
cases = [
    (tm._mixed_candidates_kernel, dict(cand, y_ptr="*fp32"),
     dict(K=1, KP=1, C=64, DP=128, BK=32, TF32=True, WIDEN=False, BLOCK_M=64, BLOCK_N=64), 4),
    (tm._mixed_candidates_kernel, dict(cand, y_ptr="*bf16"),
     dict(K=5, KP=8, C=128, DP=16, BK=16, TF32=False, WIDEN=False, BLOCK_M=128, BLOCK_N=64), 8),
    (tm._mixed_candidates_kernel, dict(cand, y_ptr="*fp32"),
     dict(K=16, KP=16, C=256, DP=1024, BK=32, TF32=True, WIDEN=False, BLOCK_M=64, BLOCK_N=128), 8),
    (tm._mixed_refine_kernel, dict(refine, z_ptr="*fp32"),
     dict(K=5, KP=8, C=128, STORE_NBR=True, KNN=False, COUNT=False, BLOCK_M=16, BLOCK_N=64), 4),
    (tm._mixed_refine_kernel, dict(refine, z_ptr="*bf16", terms_ptr="*fp32"),
     dict(K=1, KP=1, C=64, STORE_NBR=False, KNN=True, COUNT=True, BLOCK_M=16, BLOCK_N=64), 4),
]
for arch in (80, 90):
    for kernel, dtypes, constexprs, warps in cases:
        src = ASTSource(kernel, sig(kernel, dtypes), constexprs=constexprs)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
        ptx = compiled.asm.get("ptx", "")
        if kernel is tm._mixed_candidates_kernel:  # tensor-core instructions, tf32 or bf16 operands
            kind = "tf32" if constexprs["TF32"] else "bf16"
            mma = [line.split()[0] for line in ptx.splitlines() if "mma" in line and kind in line]
            note = f"mma {mma[0]}" if mma else "NO-MMA"
        else:  # the exact keys: fma.rn.f32 whatever the fusion setting
            note = "fma" if "fma.rn.f32" in ptx else "NO-FMA"
        print("compiled", kernel.__name__, "sm_%d" % arch, note, flush=True)
