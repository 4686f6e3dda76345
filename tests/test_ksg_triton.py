"""The Triton path of ksg_mutual_information: its range-count kernel (eae_kernels/triton_ksg.py)
and the composition with the Triton k-NN op, against the CPU op and an exact count.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1 is set
below, before triton is first used); the interpreter is slow, so the inputs are small, and its
blocks are 16 x 16, so N of 20-50 still spans several row blocks and column tiles.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from eae_kernels import ksg_mutual_information, triton_backend, triton_ksg  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")

if triton_backend.unavailable_reason(torch.zeros(2, 1, device=DEVICE)) is not None:
    pytest.skip(
        f"triton backend unavailable: {triton_backend.unavailable_reason(torch.zeros(2, 1, device=DEVICE))}",
        allow_module_level=True,
    )


@pytest.mark.parametrize("inclusive", (False, True))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
def test_range_count_exact_with_ties(inclusive, dtype):
    g = torch.Generator().manual_seed(0)
    for n, d in ((1, 1), (17, 1), (33, 3)):
        z = torch.randint(-2, 3, (n, d), generator=g).to(dtype)
        radius = torch.randint(0, 4, (n,), generator=g).to(dtype)
        expected = torch.ops.eae_kernels.ksg_range_count(z, radius, inclusive)
        counts = triton_ksg.range_count(z.to(DEVICE), radius.to(DEVICE), inclusive)
        assert torch.equal(counts.cpu(), expected), (n, d)


def test_range_count_non_contiguous():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(40, 6, generator=g, dtype=torch.float64)[::2, ::2]
    radius = torch.rand(20, generator=g, dtype=torch.float64)
    expected = torch.ops.eae_kernels.ksg_range_count(z.contiguous(), radius, False)
    assert torch.equal(triton_ksg.range_count(z.to(DEVICE), radius.to(DEVICE), False).cpu(), expected)


@pytest.mark.parametrize("variant", (1, 2))
def test_mutual_information_matches_cpu(variant):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 36, 2, generator=g, dtype=torch.float64)
    y = torch.randn(3, 36, 1, generator=g, dtype=torch.float64) + x[..., :1]
    lengths = torch.tensor([36, 20, 4])
    ours = ksg_mutual_information(x.to(DEVICE), y.to(DEVICE), 3, variant=variant, lengths=lengths.to(DEVICE), backend="triton")
    expected = ksg_mutual_information(x, y, 3, variant=variant, lengths=lengths, backend="cpu")
    assert ours.shape == (3,) and not ours.requires_grad
    assert torch.allclose(ours.cpu(), expected, rtol=0, atol=1e-12)


# Compiles the kernel for real GPUs in a fresh process (the interpreter off), with Triton's bundled
# ptxas and no GPU: catches lowering and typing errors the interpreter cannot.
_AOT_SCRIPT = textwrap.dedent(
    """
    import inspect
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from eae_kernels import triton_ksg

    if "constexprs" not in inspect.signature(ASTSource).parameters:  # triton < 3.3
        raise SystemExit("UNSUPPORTED: this triton's ASTSource takes no constexprs")
    kernel = triton_ksg._kernel()
    for arch in (80, 90):
        for dtype in ("fp32", "fp64"):
            for inclusive in (False, True):
                names = [p.name for p in kernel.params if not p.is_constexpr]
                dtypes = {"z_ptr": "*" + dtype, "radius_ptr": "*" + dtype, "out_ptr": "*i64"}
                sig = {name: dtypes.get(name, "i32") for name in names}
                blocks = {k: v for k, v in triton_ksg.GPU_BLOCKS.items() if k != "num_warps"}
                src = ASTSource(kernel, sig, constexprs=dict(INCLUSIVE=inclusive, **blocks))
                triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": triton_ksg.GPU_BLOCKS["num_warps"]})
                print("compiled", dtype, inclusive, "sm_%d" % arch, flush=True)
    """
)


def test_kernel_compiles_for_sm80_and_sm90():
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    if "UNSUPPORTED" in done.stderr:
        pytest.skip(done.stderr.strip().splitlines()[-1])
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("compiled") == 8
