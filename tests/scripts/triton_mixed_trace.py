"""Traces the Triton ops with EAE_KERNELS_SEARCH=mixed the way torch.compile does (AOTAutograd,
dynamic shapes), in a process without TRITON_INTERPRET and without a GPU (fake tensors launch
nothing): the host-side preparation must trace, and the ops must decompose into their kernels
(kl_entropy: candidates + refinement + sum + gather; knn: candidates + refinement). Run by
tests/test_triton_mixed.py; prints "traced" on success.
"""

import os

os.environ["EAE_KERNELS_SEARCH"] = "mixed"

import torch  # noqa: E402
from functorch.compile import aot_function  # noqa: E402
from eae_kernels import triton_backend  # noqa: E402


class Traced(Exception):
    pass


def kernels_in_forward(fn, z):
    found = []

    def compiler(gm, _):
        found.extend(str(n.kwargs.get("kernel_idx", n.target)) for n in gm.graph.nodes
                     if "triton_kernel_wrapper" in str(n.target))  # fmt: skip
        raise Traced

    try:
        aot_function(fn, fw_compiler=compiler, dynamic=True)(z)
    except Traced:
        return len(found)
    raise AssertionError("not traced")


z = torch.randn(40, 3, requires_grad=True)
for deterministic in (False, True):
    got = kernels_in_forward(lambda x: triton_backend.kl_entropy_op()(x, 2, 2.0, 1e-8, True, deterministic)[0], z)
    assert got == 4, (deterministic, got)
assert kernels_in_forward(lambda x: triton_backend.knn_op()(x, 3, 2.0)[0], z) == 2
print("traced")
