"""Compiles Triton kernel variants for sm_80 and sm_90 without a GPU (Triton's bundled ptxas), in a
process without TRITON_INTERPRET: catches what the interpreter cannot (lowering, typing, Triton's
compile-time checks). Each case: kernel, signature dtypes, constexprs, num_warps. Run by
tests/test_triton.py; prints one "compiled" line per kernel and arch.
"""

import inspect
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from eae_kernels import triton_kernels as tk

if "constexprs" not in inspect.signature(ASTSource).parameters:  # triton < 3.3
    raise SystemExit("UNSUPPORTED: this triton's ASTSource takes no constexprs")

def sig(kernel, dtypes):
    names = [p.name for p in kernel.params if not p.is_constexpr]
    return {name: dtypes.get(name, "i32") for name in names}

search = {"terms_ptr": "*fp64", "nbr_ptr": "*i64", "eps_bits": "i64", "scale_bits": "i64"}
small = {"h_ptr": "*fp32", "terms_ptr": "*fp64", "nbr_ptr": "*i64", "eps_bits": "i64", "const_bits": "i64",
         "scale_bits": "i64"}
gather = {"nbr_ptr": "*i64", "scale_bits": "i64"}
cases = [
    (tk._knn_kernel, {"z_ptr": "*fp32", "dist_ptr": "*fp32", "idx_ptr": "*i64"},
     dict(K=3, KP=4, NORM=2, BLOCK_M=16, BLOCK_N=512), 4),
    (tk._kl_search_kernel, dict(search, z_ptr="*fp32", weight_ptr="*fp32", grad_ptr="*fp32"),
     dict(K=1, KP=1, NORM=0, STORE_NBR=True, STORE_WEIGHT=False, SCATTER=True, EPI_D=32, BLOCK_M=8,
          BLOCK_N=1024), 4),
    (tk._kl_search_kernel, dict(search, z_ptr="*bf16", weight_ptr="*fp32", grad_ptr="*bf16"),
     dict(K=3, KP=4, NORM=1, STORE_NBR=True, STORE_WEIGHT=True, SCATTER=False, EPI_D=32, BLOCK_M=64,
          BLOCK_N=32), 4),
    (tk._kl_search_kernel, dict(search, z_ptr="*fp64", weight_ptr="*fp64", grad_ptr="*fp64"),
     dict(K=9, KP=16, NORM=2, STORE_NBR=True, STORE_WEIGHT=False, SCATTER=True, EPI_D=32, BLOCK_M=16,
          BLOCK_N=64), 4),
    (tk._kl_small_kernel, dict(small, z_ptr="*fp16", weight_ptr="*fp32", grad_ptr="*fp16"),
     dict(K=3, KP=4, NORM=2, COMPUTE_GRAD=True, BLOCK_G=8, GATHER_SCAN=64, SUM_BLOCK=1024, DP=256,
          BLOCK_M=16, BLOCK_N=128), 4),
    (tk._sum_terms_kernel, {"terms_ptr": "*fp64", "h_ptr": "*fp32", "const_bits": "i64", "scale_bits": "i64"},
     dict(BLOCK=1024), 4),
    (tk._kl_gather_kernel, dict(gather, z_ptr="*fp32", weight_ptr="*fp32", grad_ptr="*fp32"),
     dict(NORM=0, BLOCK_G=16, BLOCK_N=64, DP=128), 4),
    (tk._kl_gather_kernel, dict(gather, z_ptr="*fp64", weight_ptr="*fp64", grad_ptr="*fp64"),
     dict(NORM=1, BLOCK_G=16, BLOCK_N=64, DP=64), 4),
]
# The kernels of batches of sets (`triton_aot_compile.py sets`, run by tests/test_triton_estimators.py):
# self / cross / both searches, KoLeo's term, ragged lengths, every gradient kernel, fp32/bf16/fp64.
sets_buffers = {"terms_s_ptr": "*fp64", "terms_c_ptr": "*fp64", "nbr_s_ptr": "*i64", "nbr_c_ptr": "*i64",
                "lx_ptr": "*i64", "ly_ptr": "*i64", "eps_bits": "i64", "logv_bits": "i64", "euler_bits": "i64"}
flags = dict(HAS_LX=True, HAS_LY=True)
sets_cases = [
    (tk._sets_search_kernel, dict(sets_buffers, x_ptr="*fp32", y_ptr="*fp32", w_s_ptr="*fp32", w_c_ptr="*fp32"),
     dict(flags, K=3, KP=4, NORM=2, SELF=True, CROSS=True, SELF_SIGN=-1, STORE_NBR=True, STORE_WEIGHT=True, TERM=0,
          BLOCK_M=16, BLOCK_N=256), 4),
    (tk._sets_search_kernel, dict(sets_buffers, x_ptr="*fp64", y_ptr="*fp64", w_s_ptr="*fp64", w_c_ptr="*fp64"),
     dict(flags, K=1, KP=1, NORM=2, SELF=True, CROSS=False, SELF_SIGN=1, STORE_NBR=True, STORE_WEIGHT=True, TERM=1,
          BLOCK_M=8, BLOCK_N=1024), 4),
    (tk._sets_value_kernel, dict(sets_buffers, value_ptr="*fp32"),
     dict(flags, EST=2, SELF=True, CROSS=True, SELF_SIGN=-1, SUM_BLOCK=1024, K=3), 4),
    (tk._sets_value_kernel, dict(sets_buffers, value_ptr="*fp64"),
     dict(HAS_LX=False, HAS_LY=False, EST=3, SELF=True, CROSS=False, SELF_SIGN=1, SUM_BLOCK=1024, K=1), 4),
    (tk._sets_gather_kernel, dict(sets_buffers, x_ptr="*bf16", y_ptr="*bf16", grad_ptr="*bf16", w_s_ptr="*fp32",
                                  w_c_ptr="*fp32"),
     dict(flags, EST=1, OF_Y=True, SELF=False, CROSS=True, NORM=0, BLOCK_G=16, BLOCK_N=64, DP=128), 4),
    (tk._sets_gather_kernel, dict(sets_buffers, x_ptr="*fp32", y_ptr="*fp32", grad_ptr="*fp32", w_s_ptr="*fp32",
                                  w_c_ptr="*fp32"),
     dict(flags, EST=2, OF_Y=False, SELF=True, CROSS=True, NORM=1, BLOCK_G=32, BLOCK_N=64, DP=64), 4),
    (tk._sets_small_kernel, dict(sets_buffers, x_ptr="*fp32", y_ptr="*fp32", value_ptr="*fp32", gx_ptr="*fp32",
                                 gy_ptr="*fp32", w_s_ptr="*fp32", w_c_ptr="*fp32"),
     dict(flags, K=3, KP=4, NORM=2, EST=2, SELF=True, CROSS=True, SELF_SIGN=-1, STORE_NBR=False, COMPUTE_GRAD=True,
          TERM=0, BLOCK_G=32, GATHER_SCAN=64, SUM_BLOCK=1024, DP=16, BLOCK_M=16, BLOCK_N=128), 4),
    (tk._sets_small_kernel, dict(sets_buffers, x_ptr="*fp16", y_ptr="*fp16", value_ptr="*fp32", gx_ptr="*fp16",
                                 gy_ptr="*fp16", w_s_ptr="*fp32", w_c_ptr="*fp32"),
     dict(HAS_LX=True, HAS_LY=False, K=9, KP=16, NORM=0, EST=0, SELF=True, CROSS=False, SELF_SIGN=1,
          STORE_NBR=True, COMPUTE_GRAD=True, TERM=0, BLOCK_G=8, GATHER_SCAN=64, SUM_BLOCK=1024, DP=256,
          BLOCK_M=8, BLOCK_N=128), 4),
    (tk._knn_sets_kernel, dict(sets_buffers, x_ptr="*fp32", y_ptr="*fp32", dist_ptr="*fp32", idx_ptr="*i64"),
     dict(flags, K=3, KP=4, NORM=2, CROSS=True, BLOCK_M=16, BLOCK_N=512), 4),
    (tk._knn_sets_kernel, dict(sets_buffers, x_ptr="*fp64", y_ptr="*fp64", dist_ptr="*fp64", idx_ptr="*i64"),
     dict(HAS_LX=False, HAS_LY=False, K=1, KP=1, NORM=1, CROSS=False, BLOCK_M=32, BLOCK_N=64), 4),
]
if sys.argv[1:] == ["sets"]:
    cases = sets_cases
for arch in (80, 90):
    for kernel, dtypes, constexprs, warps in cases:
        src = ASTSource(kernel, sig(kernel, dtypes), constexprs=constexprs)
        triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
        print("compiled", kernel.__name__, "sm_%d" % arch, flush=True)
