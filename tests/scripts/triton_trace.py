"""Traces the Triton op the way torch.compile does (AOTAutograd, dynamic shapes), in a process
without TRITON_INTERPRET: the op must decompose into its kernels (small path: 1; tiled: search +
sum; deterministic tiled: + gather), without a GPU because fake tensors never launch anything.
Run by tests/test_triton.py; prints "traced" on success.
"""

import torch
from functorch.compile import aot_function
from eae_kernels import triton_backend

class Traced(Exception):
    pass

def kernels_in_forward(fn, z):
    found = []

    def compiler(gm, _):
        found.extend(n for n in gm.graph.nodes if "triton_kernel_wrapper" in str(n.target))
        raise Traced

    try:
        aot_function(fn, fw_compiler=compiler, dynamic=True)(z)
    except Traced:
        return len(found)
    raise AssertionError("not traced")

op = triton_backend.kl_entropy_op()
z = torch.randn(40, 3, requires_grad=True)
for work, deterministic, expected in [(1 << 40, False, 1), (0, False, 2), (0, True, 3)]:
    triton_backend.SMALL_BATCH_MAX_WORK = work
    got = kernels_in_forward(lambda x: op(x, 2, 2.0, 1e-8, True, deterministic)[0], z)
    assert got == expected, (work, deterministic, got)
assert kernels_in_forward(lambda x: triton_backend.knn_op()(x, 3, 1.0)[0], z) == 1
print("traced")
