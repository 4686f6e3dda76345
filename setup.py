"""Builds eae_kernels and its compiled extension eae_kernels._C against the installed PyTorch.

    pip install --no-build-isolation -e ".[test]"

--no-build-isolation matters: the extension must be compiled against the torch you run with,
not a fresh copy pip would download into an isolated build environment.

The CPU kernels are always built. The CUDA kernels (csrc/cuda/*.cu) are built as well when the
installed torch is a CUDA build and a CUDA toolkit (nvcc) is found; EAE_KERNELS_NO_CUDA=1 skips
them. DEBUG=1 builds without optimisation and with debug symbols. TORCH_CUDA_ARCH_LIST selects
the GPU architectures (default here: 8.0 and 9.0).
"""

import glob
import os
import sys

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # pragma: no cover - the message is the point
    sys.exit(
        "eae-kernels builds a PyTorch extension, so torch must be installed first, e.g.\n"
        "    pip install torch==2.13.0\n"
        "then install this package without build isolation:\n"
        "    pip install --no-build-isolation -e '.[test]'"
    )

HERE = os.path.dirname(os.path.abspath(__file__))
DEBUG = os.environ.get("DEBUG", "0") == "1"


def cuda_wanted() -> bool:
    if os.environ.get("EAE_KERNELS_NO_CUDA", "0") == "1":
        return False
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def openmp_flags():
    """at::parallel_for is a header template: it runs in parallel only if *this* extension is
    compiled with OpenMP. On Linux, libgomp.so.1 then resolves to the copy torch already loaded,
    so torch.set_num_threads governs our loops too."""
    if sys.platform.startswith("linux") and torch.backends.openmp.is_available():
        return ["-fopenmp"]
    return []


def extensions():
    cxx_flags = ["-O0", "-g"] if DEBUG else ["-O3"]
    cxx_flags += ["-std=c++17", "-fvisibility=hidden"] + openmp_flags()
    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    include_dirs = [os.path.join(HERE, "csrc")]
    if not cuda_wanted():
        return [
            cpp_extension.CppExtension(
                "eae_kernels._C",
                sources,
                include_dirs=include_dirs,
                extra_compile_args={"cxx": cxx_flags},
                extra_link_args=openmp_flags(),
            )
        ]
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    # No --use_fast_math: it makes divisions approximate and flushes denormals, so the GPU
    # gradient would no longer match the CPU kernels bit for bit.
    nvcc_flags = (["-O0", "-g", "-G"] if DEBUG else ["-O3"]) + ["-std=c++17"]
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
    return [
        cpp_extension.CUDAExtension(
            "eae_kernels._C",
            sources + cuda_sources,
            include_dirs=include_dirs,
            define_macros=[("EAE_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            extra_link_args=openmp_flags(),
        )
    ]


def read(name):
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return f.read()


setup(
    name="eae-kernels",
    version="0.1.0",
    description="Fused, differentiable Kozachenko-Leonenko entropy (CPU, CUDA, Triton) and the entropic autoencoder",
    long_description=read("README.md"),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["eae_kernels", "eae_kernels.*"]),
    ext_modules=extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    install_requires=["torch>=2.4", "numpy"],
    extras_require={
        # Everything the test suite and the model package (python -m python.train) use.
        "test": [
            "pytest>=7",
            "pytest-benchmark>=4",
            "scikit-learn>=1.2",
            "scipy",  # the independent KD-tree KSG of tests/test_ksg.py (also a scikit-learn dependency)
            "tqdm",
            "matplotlib",
            "pillow",
            "triton>=3.0; platform_system == 'Linux' and platform_machine == 'x86_64'",
        ],
        # Optional baselines of the benchmarks.
        "bench": ["pykeops", "faiss-cpu"],
    },
    zip_safe=False,
)
