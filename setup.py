"""Builds eae_kernels and its compiled extension eae_kernels._C against the installed PyTorch,
and installs the model package.

    pip install --no-build-isolation -e ".[test]"     # development: editable, with the test tools
    pip install --no-build-isolation ".[train]"       # a user: the library and the model package

--no-build-isolation matters: the extension must be compiled against the torch you run with,
not a fresh copy pip would download into an isolated build environment.

The model package lives in python/ (so that ``python -m python.train`` works in a checkout) and
is installed under the name ``eae_models`` (package_dir maps it; its modules import each other
relatively, so the same files serve both names), with the console commands eae-train,
eae-sample, eae-evaluate and eae-compare. Its runtime needs are the ``train`` extra.

The CPU kernels are always built. The CUDA kernels (csrc/cuda/*.cu) are built as well when the
installed torch is a CUDA build and a CUDA toolkit (nvcc) is found; EAE_KERNELS_NO_CUDA=1 skips
them. DEBUG=1 builds without optimisation and with debug symbols. TORCH_CUDA_ARCH_LIST selects
the GPU architectures; the default "8.0;9.0+PTX" builds machine code for A100 (sm_80) and H100/H200
(sm_90) and embeds sm_90 PTX, which the driver JIT-compiles on newer GPUs (Blackwell and later)
on first use instead of failing to launch. Set it to your GPU's (e.g. "8.6", "10.0") for the
fastest build.
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
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"  # A100, H100/H200, and PTX that newer GPUs JIT-compile

# The model package's runtime needs (python/, installed as eae_models).
TRAIN_REQUIRES = ["scikit-learn>=1.2", "tqdm", "pillow"]
CONSOLE_SCRIPTS = [f"eae-{tool} = eae_models.{tool}:main" for tool in ("train", "sample", "evaluate", "compare", "evidence")]


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
    cxx_flags = (["-O0", "-g"] if DEBUG else ["-O3"]) + ["-ffp-contract=off"]
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
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    # No --use_fast_math: it makes divisions and logs approximate and flushes denormals. The
    # kernels rely on IEEE division and on explicit roundings (fma for the distance keys,
    # __fmul_rn/__fadd_rn for the gradient weights and sums, csrc/core/kl_math.h) to compute the
    # CPU kernel's keys (hence its neighbours) and its gradient roundings. H is not bit-identical
    # to the CPU's (another log, another summation order): see README, "What is bit for bit".
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
    packages=find_packages(include=["eae_kernels", "eae_kernels.*"]) + ["eae_models"],
    package_dir={"eae_models": "python"},
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
    ext_modules=extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    install_requires=["torch>=2.4", "numpy"],
    extras_require={
        "train": TRAIN_REQUIRES,
        # Everything the test suite uses: the model package's needs, and matplotlib for the
        # benchmark plots.
        "test": TRAIN_REQUIRES + [
            "pytest>=7",
            "pytest-benchmark>=4",
            "scipy",  # the independent KD-tree references of the KSG and estimator tests
            "matplotlib",
            "triton>=3.0; platform_system == 'Linux' and platform_machine == 'x86_64'",
        ],
        # Optional baselines of the benchmarks.
        "bench": ["pykeops", "faiss-cpu"],
    },
    zip_safe=False,
)
