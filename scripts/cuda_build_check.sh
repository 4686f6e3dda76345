#!/usr/bin/env bash
# Compile and link eae_kernels' CUDA binding exactly as a GPU user's install does, on a machine
# without a GPU: a virtualenv with the CUDA build of torch, CUDA_HOME at the toolkit's root, then
# `pip install --no-build-isolation -e .` in this checkout; then checks that eae_kernels._C was
# built with its CUDA kernels (with_cuda, CUDA registrations of the ops, links to the CUDA runtime,
# and, where cuobjdump exists, sm_80/sm_90 machine code and PTX in the library).
#
# Not part of CI (the CUDA build of torch is about 3 GB). Run it whenever csrc/ changes:
#
#   scripts/cuda_build_check.sh                                  # makes .cuda-venv on first use
#   EAE_CUDA_VENV=/path/to/venv scripts/cuda_build_check.sh      # a venv that has the CUDA torch
#
# The editable install writes eae_kernels/_C*.so into THIS checkout, replacing a CPU build there:
# run it in a scratch copy (cp -r, without .venv) to keep your CPU build.
#
# Environment:
#   EAE_CUDA_VENV          virtualenv to use or create (default: .cuda-venv in the checkout). A venv
#                          that existed before is left as it was found: eae-kernels is uninstalled
#                          from it at the end (EAE_CUDA_KEEP_INSTALL=1 keeps it).
#   CUDA_HOME              toolkit root, the folder whose include/ holds cuda_runtime.h (default:
#                          /usr/local/cuda, else the newest /usr/local/cuda-*). Not the folder of
#                          the nvcc on PATH, which may be a link from elsewhere.
#   TORCH_CUDA_ARCH_LIST   GPU architectures (default: setup.py's, "8.0;9.0+PTX").
#   MAX_JOBS               parallel compile jobs (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

VENV=${EAE_CUDA_VENV:-$REPO/.cuda-venv}
TORCH_VERSION=${EAE_CUDA_TORCH_VERSION:-2.13.0}
export MAX_JOBS=${MAX_JOBS:-2}

if [[ -z "${CUDA_HOME:-}" ]]; then
  for candidate in /usr/local/cuda $(ls -d /usr/local/cuda-* 2>/dev/null | sort -V -r); do
    if [[ -f "$candidate/include/cuda_runtime.h" ]]; then CUDA_HOME=$candidate; break; fi
  done
fi
if [[ -z "${CUDA_HOME:-}" || ! -f "$CUDA_HOME/include/cuda_runtime.h" ]]; then
  echo "error: set CUDA_HOME to the CUDA toolkit's root (the folder whose include/ holds cuda_runtime.h)" >&2
  exit 2
fi
export CUDA_HOME
export PATH="$CUDA_HOME/bin:$PATH"

existing_venv=0
if [[ -x "$VENV/bin/python" ]]; then
  existing_venv=1
else
  echo "== creating $VENV with the CUDA build of torch $TORCH_VERSION (about 3 GB)"
  python3 -m venv "$VENV"
  # --isolated: ignore pip configuration that points at a CPU-only index
  "$VENV/bin/pip" install --isolated "torch==$TORCH_VERSION" setuptools wheel ninja
fi
PY="$VENV/bin/python"

"$PY" - <<'PYEOF'
import sys
import torch
if torch.version.cuda is None:
    sys.exit(f"error: torch {torch.__version__} in this venv is a CPU build; the check needs the CUDA build "
             "(pip install --isolated torch==...)")
print(f"torch {torch.__version__} (CUDA {torch.version.cuda})")
PYEOF

cleanup() {
  if [[ $existing_venv == 1 && "${EAE_CUDA_KEEP_INSTALL:-0}" != 1 ]]; then
    "$PY" -m pip uninstall -q -y eae-kernels >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

echo "== build: CUDA_HOME=$CUDA_HOME TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-<setup.py default>} MAX_JOBS=$MAX_JOBS"
# the nvcc -gencode flags torch derives from the arch list (a private helper: best effort)
ARCHS=${TORCH_CUDA_ARCH_LIST:-$(sed -n 's/^DEFAULT_CUDA_ARCHS = "\([^"]*\)".*/\1/p' setup.py)}
TORCH_CUDA_ARCH_LIST=$ARCHS "$PY" -c "from torch.utils import cpp_extension as c; print('nvcc:', ' '.join(c._get_cuda_arch_flags()))" 2>/dev/null || true
started=$(date +%s)
"$PY" -m pip install --no-build-isolation --no-deps -e .
echo "built in $(( $(date +%s) - started )) s"

echo "== checks"
"$PY" - <<'PYEOF'
import sys
import torch
import eae_kernels
from eae_kernels import _extension

ext = _extension._C
if ext is None:
    sys.exit("FAIL: eae_kernels._C did not load")
problems = []
if not ext.with_cuda:
    problems.append("eae_kernels._C.with_cuda is False: the CUDA kernels were not compiled in")
for op in ("kl_entropy", "knn"):
    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"eae_kernels::{op}", "CUDA"):
        problems.append(f"eae_kernels::{op} has no CUDA kernel registered")
print("library:", ext.__file__)
print("with_cuda:", ext.with_cuda)
if problems:
    sys.exit("FAIL: " + "; ".join(problems))
PYEOF

SO=$("$PY" -c "from eae_kernels import _extension; print(_extension._C.__file__)")
# (no grep -q: it may exit before ldd has written everything, and pipefail then fails the pipe)
if ! ldd "$SO" | grep -E "libcudart|libc10_cuda" > /dev/null; then
  echo "FAIL: $SO does not link the CUDA runtime (ldd):" >&2
  ldd "$SO" >&2
  exit 1
fi
echo "links: $(ldd "$SO" | grep -Eo 'lib(cudart|c10_cuda)[^ ]*' | sort -u | tr '\n' ' ')"
if command -v cuobjdump >/dev/null; then
  echo "embedded GPU code: $(cuobjdump --list-elf --list-ptx "$SO" | grep -Eo 'sm_[0-9]+|compute_[0-9]+' | sort -u | tr '\n' ' ')"
fi
echo "OK: eae_kernels._C is built and linked with its CUDA kernels"
