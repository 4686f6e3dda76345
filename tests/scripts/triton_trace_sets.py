"""Traces the Triton ops on batches of sets the way torch.compile does (AOTAutograd, dynamic
shapes), in a process without TRITON_INTERPRET: each op must decompose into its kernels (small
path: 1; tiled: search + value + one gather per gradient), without a GPU because fake tensors never
launch anything. Run by tests/test_triton_estimators.py; prints "traced" on success.
"""

import torch
from functorch.compile import aot_function
from eae_kernels import triton_backend


class Traced(Exception):
    pass


def kernels_in_forward(fn, *inputs):
    found = []

    def compiler(gm, _):
        found.extend(n for n in gm.graph.nodes if "triton_kernel_wrapper" in str(n.target))
        raise Traced

    try:
        aot_function(fn, fw_compiler=compiler, dynamic=True)(*inputs)
    except Traced:
        return len(found)
    raise AssertionError("not traced")


x = torch.randn(3, 40, 4, requires_grad=True)
y = torch.randn(3, 30, 4, requires_grad=True)
lx = torch.tensor([40, 11, 25])
op = triton_backend.set_op
for work, small in [(1 << 40, True), (0, False)]:
    triton_backend.SMALL_BATCH_MAX_WORK = work
    cases = [
        (lambda a, la: op("kl_entropy_sets")(a, la, 2, 2.0, 1e-8, True)[0], (x, lx), 1 if small else 3),
        (lambda a, b, la: op("kl_divergence")(a, b, la, None, 1, 1.0, 1e-8, True)[0], (x, y, lx), 1 if small else 4),
        (lambda a, b: op("kl_cross_entropy")(a, b, None, None, 3, float("inf"), 1e-8, True)[0], (x, y),
         1 if small else 4),
        (lambda a: op("koleo")(a, None, 1e-8, True)[0], (x,), 1 if small else 3),
    ]
    for fn, inputs, expected in cases:
        got = kernels_in_forward(fn, *inputs)
        assert got == expected, (work, got, expected)
assert kernels_in_forward(lambda a, b, la: op("knn_sets")(a, b, la, None, 3, 2.0)[0], x, y, lx) == 1
assert kernels_in_forward(lambda a: op("knn_sets")(a, None, None, None, 1, 1.0)[0], x) == 1
print("traced")
