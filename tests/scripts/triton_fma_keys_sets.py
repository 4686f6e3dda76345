"""Compiles the cross-set k-NN kernel of batches of sets for sm_90 with Triton's fusion of
multiply-adds off and prints how many fma.rn.f32 the PTX holds: the p = 2 keys of the set kernels
(_pair_keys) must use an explicit fma too. Run by tests/test_triton_estimators.py."""

import inspect, re
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from eae_kernels import triton_kernels as tk

if "constexprs" not in inspect.signature(ASTSource).parameters:  # triton < 3.3
    raise SystemExit("UNSUPPORTED: this triton's ASTSource takes no constexprs")
kernel = tk._knn_sets_kernel
sig = {p.name: "i32" for p in kernel.params if not p.is_constexpr}
sig.update(x_ptr="*fp32", y_ptr="*fp32", lx_ptr="*i64", ly_ptr="*i64", dist_ptr="*fp32", idx_ptr="*i64")
constexprs = dict(K=1, KP=1, NORM=2, CROSS=True, HAS_LX=True, HAS_LY=True, BLOCK_M=16, BLOCK_N=64)
src = ASTSource(kernel, sig, constexprs=constexprs)
ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "enable_fp_fusion": False}).asm["ptx"]
print("fma", len(re.findall(r"fma\.rn\.f32", ptx)))
