"""The Triton backend (``backend="triton"``): the fused entropy and k-NN ops on Triton kernels.

The kernels are in ``triton_kernels.py``; this module holds the op glue ``ops.py`` uses:

    unavailable_reason(z) -> str | None   why the backend cannot run on z (None: it can)
    kl_entropy_op()  -> the op  (z, k, p, eps, compute_grad, deterministic, row_begin=0,
                                 row_end=-1) -> (h, dh/dz, nbr), as torch.ops.eae_kernels.kl_entropy
    knn_op()         -> the op  (z, k, p) -> (dist, idx), as torch.ops.eae_kernels.knn
    set_op(name)     -> the op on batches of sets, name in SET_OPS (kl_entropy_sets,
                        kl_cross_entropy, kl_divergence, koleo, knn_sets), with the signature
                        and outputs of torch.ops.eae_kernels.<name>

The ops are registered on first use as ``torch.ops.eae_kernels.<name>_triton`` with
``torch.library.triton_op`` (so ``torch.compile`` sees the kernels) or, in the interpreter and on
torch < 2.6, ``torch.library.custom_op`` with the fake kernels of _fake.py. Their autograd is the
C++ ops' (csrc/autograd.cpp): backward = grad_h * dh/dz, double backward adds ``kl_entropy_hvp``
(``kl_entropy_sets_hvp`` for batches); knn's backward is ``knn_backward`` (``knn_sets_backward``);
kl_cross_entropy, kl_divergence and koleo scale their saved gradients, once differentiable.
Importing this module is cheap and works without triton: triton is imported on first use.

How a kl_entropy call runs (N rows, M = row_end - row_begin of them in the range):

* small batches (N <= 1024, d <= 256 and M*N*d <= SMALL_BATCH_MAX_WORK): one launch of a
  one-program kernel computes H and the whole gradient, without atomics (always deterministic);
* otherwise: a search kernel over row blocks (per-row log terms, the neighbour list and
  gradient weights, or with deterministic=False the gradient by float atomics into a zeroed
  output), a one-program kernel that sums the terms into H in a fixed order, and with
  deterministic=True (or half inputs) a gather kernel that builds the gradient from the
  neighbour list without atomics.
Besides the outputs, both paths use an (M,) float64 buffer of the per-row log terms and, for
the gather, an (M,) buffer of gradient weights. The input is made contiguous first (a copy for
other layouts), so every layout runs the same kernels and gets the same bits.

How a call of an op on batches of sets runs (B sets, x (B, Mx, d), y (B, Ny, d), optional
lengths read on the device): every kernel covers the whole batch in one launch (a flat grid over
(set, row block), see triton_kernels.py). Sets of at most 1024 rows, d <= 256, with per-set work
Mx (Mx + Ny) d <= SMALL_BATCH_MAX_WORK or at least SMALL_PATH_MIN_SETS sets: ONE launch, one
program per set (search, value, gradients). Otherwise: search, per-set value, and one gather
per gradient (x; y for the cross ops). No atomics on either path: always deterministic. Scratch:
(B, Mx) per-row terms, neighbours and weights per search. Set sizes are validated by the public
functions (which read the lengths); here only what needs no host synchronisation is checked,
and the kernels clamp the lengths to [0, M].

Deterministic results (the small path, deterministic=True) are the same bits whichever
autotuning candidate wins: the candidates differ in block sizes only, and no sum's order depends
on them (see triton_kernels.py). Not bit-identical to the CPU or CUDA backends (the compiler may
fuse multiply-adds, log is another implementation): same neighbours, values to rounding.

Every launch goes to the current CUDA stream; nothing synchronises with the host after the first
call for a given shape class (N's bit length, d, k, p, dtype: that call compiles and autotunes).
Warm up with eae_kernels.warmup() before capturing a CUDA graph; a first call during capture raises a
RuntimeError that says so. On CPU tensors the kernels run in Triton's interpreter when
TRITON_INTERPRET=1 is set before this backend's first call (for tests; slow), with fixed block
sizes instead of autotuning.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import struct
from types import SimpleNamespace
from typing import Optional

import torch

from ._validate import accumulation_dtype, check_eps, check_k, check_p, check_z, HALF_DTYPES
from . import _fake
from ._constants import EULER_GAMMA, kl_constant, log_unit_ball_volume

__all__ = ["unavailable_reason", "kl_entropy_op", "knn_op", "set_op", "SET_OPS"]

# The small-batch path runs everything in one program (one SM): it wins while launch overhead
# dominates. Bounds of the paper's regime, and a work bound (pair-coordinates, M*N*d) beyond
# which the multi-program path is faster. 2**22 (N = 256, d = 64) is an estimate from the
# H100's per-SM fp32 rate, not a measurement: tune it on the GPU.
SMALL_BATCH_MAX_ROWS = 1024
SMALL_BATCH_MAX_DIM = 256
SMALL_BATCH_MAX_WORK = 1 << 22

# Batches of sets: one program per set runs a whole set (search, value, gradients). Beyond the
# per-set work bound above, a batch of at least this many sets still takes that path: it fills
# the GPU by itself (an H100/H200 has 132 SMs), so splitting each set into row blocks only adds
# launches. An estimate, not a measurement: tune it on the GPU.
SMALL_PATH_MIN_SETS = 128

_NORM_CODES = {1.0: 1, 2.0: 2, math.inf: 0}  # p -> the kernels' NORM (the C++ core's Norm codes)


# ---------------------------------------------------------------------------------------------
# Availability
# ---------------------------------------------------------------------------------------------


def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_triton_status: str | None = None  # None: not tried yet; "": triton imported; else why not


# torch.compile calls assume_constant_result functions eagerly while tracing and keeps their
# results as constants: the first call may come from inside a compiled region (fullgraph=True)
# without tracing the import or the op registration.
@torch.compiler.assume_constant_result
def _triton_import_error() -> str | None:
    global _triton_status
    if _triton_status is None:
        try:
            import triton  # noqa: F401
        except Exception as exc:  # ImportError, or a broken install
            _triton_status = f"triton could not be imported ({type(exc).__name__}: {exc}); `pip install triton`"
        else:
            _triton_status = ""
    return _triton_status or None


def unavailable_reason(z: torch.Tensor) -> str | None:
    """Why the Triton backend cannot run on ``z``, or None when it can: it needs triton and a
    CUDA tensor, or a CPU tensor with TRITON_INTERPRET=1 (Triton's interpreter, for tests)."""
    if z.device.type == "cuda" or (z.device.type == "cpu" and _interpret_requested()):
        return _triton_import_error()
    return f"triton backend needs a CUDA tensor or TRITON_INTERPRET=1; z is on {z.device}"


def kl_entropy_op():
    """The Triton kl_entropy op, same signature and semantics as torch.ops.eae_kernels.kl_entropy."""
    _ensure_registered()
    return torch.ops.eae_kernels.kl_entropy_triton.default


def knn_op():
    """The Triton knn op, same signature and semantics as torch.ops.eae_kernels.knn."""
    _ensure_registered()
    return torch.ops.eae_kernels.knn_triton.default


# The ops on batches of sets, each with the signature and semantics of the C++ op of the same name.
SET_OPS = ("kl_entropy_sets", "kl_cross_entropy", "kl_divergence", "koleo", "knn_sets")


def set_op(name: str):
    """The Triton op ``name`` (one of SET_OPS): torch.ops.eae_kernels.<name>_triton, with the
    signature and semantics of torch.ops.eae_kernels.<name>."""
    if name not in SET_OPS:
        raise ValueError(f"the triton backend's set ops are {', '.join(SET_OPS)}; got {name!r}")
    _ensure_registered()
    return getattr(torch.ops.eae_kernels, f"{name}_triton").default


# ---------------------------------------------------------------------------------------------
# Host-side helpers
# ---------------------------------------------------------------------------------------------


def _f64_bits(x: float) -> int:
    """A float64 as its int64 bit pattern (Triton would pass a Python float as float32)."""
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


@functools.lru_cache(maxsize=256)
def _kl_constant(n: int, d: int, k: int, p: float) -> float:
    """psi(N) - psi(k) + log V(d, p), in pure Python (no tensor: this runs inside traced ops)."""
    return kl_constant(n, d, k, p)


def _check_row_range(n: int, row_begin: int, row_end: int) -> tuple[int, int]:
    end = n if row_end < 0 else row_end
    if not 0 <= row_begin <= end <= n:
        raise ValueError(
            f"row_begin and row_end must satisfy 0 <= row_begin <= row_end <= N (row_end=-1 means N); "
            f"got row_begin={row_begin}, row_end={row_end}, N={n}"
        )
    return row_begin, end


def _device_guard(z: torch.Tensor):
    return torch.cuda.device(z.device) if z.device.type == "cuda" else contextlib.nullcontext()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


# ---------------------------------------------------------------------------------------------
# Kernel launchers: autotuned on the GPU, fixed block sizes in the interpreter
# ---------------------------------------------------------------------------------------------

# Block sizes in the interpreter (CPU tests): small, so that small test inputs still span
# several row blocks and column tiles. Tests may change them.
INTERPRETER_SEARCH_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 16}


# Autotuning candidates (BLOCK_M, BLOCK_N, num_warps). From the SASS of the sm_90 build (no GPU
# was available to time them): Triton spreads a thread's share of the key tile over all BLOCK_M
# rows, so short wide tiles (8-16 rows, 256-1024 columns) give a thread 64 keys per 16-20 loads,
# about 65% FADD/FFMA in the hot loop, against about 35% for 64 x 64; taller tiles reuse each
# column tile from L2 for more rows. No candidate changes a result: the kernels add coordinates
# and terms in an order that does not depend on the block sizes (see triton_kernels.py).
_SEARCH_SHAPES = [
    (8, 1024, 4), (16, 512, 4), (16, 256, 2), (16, 256, 4), (32, 128, 4), (32, 64, 4), (64, 64, 8),
]  # fmt: skip
_SEARCH_SHAPES_LARGE_K = [(8, 512, 4), (16, 256, 4), (16, 64, 4), (32, 32, 4)]  # KP > 8
# From LARGE_N_BUCKET on (N >= 2^16) one benchmark run of a configuration takes long (at N = 1e6
# the 7 candidates were estimated at minutes): only these are timed, the short wide tiles. Unmeasured.
LARGE_N_BUCKET = 17
_SEARCH_SHAPES_LARGE_N = {(8, 1024, 4), (16, 512, 4), (16, 256, 4), (8, 512, 4)}
# The one-program kernel: N <= 1024, so narrower tiles waste fewer columns. One num_warps for all:
# its H reduction and gather tile then have the same register layout, whichever wins.
_SMALL_SHAPES = [(16, 128, 4), (16, 256, 4), (32, 64, 4), (8, 256, 4), (64, 64, 4)]
_SMALL_SHAPES_LARGE_K = [(8, 128, 4), (16, 64, 4), (16, 128, 4)]
_SMALL_NUM_WARPS = 4  # also _sum_terms_kernel's: both H reductions run on the same layout


def _configs(triton, shapes):
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=1) for m, n, w in shapes]


def _prune_for_large_n(configs, named_args, **_):
    """Autotuner hook: fewer candidates to time for large N (see LARGE_N_BUCKET)."""
    if named_args["n_bucket"] < LARGE_N_BUCKET:
        return configs
    kept = [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps) in _SEARCH_SHAPES_LARGE_N]
    return kept or configs[:2]


@functools.cache
def _kernels() -> SimpleNamespace:
    """The launchable kernels: autotuned on the GPU (once per N-class, d, k, norm and dtype); in
    interpreter mode the plain kernels, to which the callers pass INTERPRETER_SEARCH_CONFIG."""
    import triton

    from . import triton_kernels as tk

    plain_kernels = dict(sum_terms=tk._sum_terms_kernel, gather=tk._kl_gather_kernel,
                         sets_value=tk._sets_value_kernel, sets_gather=tk._sets_gather_kernel)  # fmt: skip
    if _interpret_requested():
        plain = SimpleNamespace(knn=tk._knn_kernel, search=tk._kl_search_kernel, small=tk._kl_small_kernel,
                                knn_sets=tk._knn_sets_kernel, sets_search=tk._sets_search_kernel,
                                sets_small=tk._sets_small_kernel)  # fmt: skip
        return SimpleNamespace(tuned=False, small_k=plain, large_k=plain, **plain_kernels)

    key = ["n_bucket", "d", "K", "NORM"]  # the Autotuner adds the tensors' dtypes

    def tuned(large_k: bool) -> SimpleNamespace:
        configs = _configs(triton, _SEARCH_SHAPES_LARGE_K if large_k else _SEARCH_SHAPES)
        small = _configs(triton, _SMALL_SHAPES_LARGE_K if large_k else _SMALL_SHAPES)
        prune = {"early_config_prune": _prune_for_large_n}
        return SimpleNamespace(
            knn=triton.autotune(configs=configs, key=key, prune_configs_by=prune)(tk._knn_kernel),
            # The atomic variant adds into grad: benchmarking runs must start from zeros.
            search=triton.autotune(configs=configs, key=key, reset_to_zero=["grad_ptr"], prune_configs_by=prune)(
                tk._kl_search_kernel
            ),
            small=triton.autotune(configs=small, key=key)(tk._kl_small_kernel),
            # Batches of sets: n_bucket is the bit length of the larger of Mx and Ny.
            knn_sets=triton.autotune(configs=configs, key=key + ["CROSS"], prune_configs_by=prune)(
                tk._knn_sets_kernel
            ),
            sets_search=triton.autotune(configs=configs, key=sets_key, prune_configs_by=prune)(
                tk._sets_search_kernel
            ),
            sets_small=triton.autotune(configs=small, key=sets_key)(tk._sets_small_kernel),
        )

    sets_key = key + ["SELF", "CROSS", "TERM"]
    return SimpleNamespace(tuned=True, small_k=tuned(False), large_k=tuned(True), **plain_kernels)


# Gradient kernels: rows per program (whole rows of DP coordinates live in registers: at most
# 2048 fp32 or 1024 fp64 values per tile, which the sm_90 build holds without spilling up to
# DP = 256) and neighbour-list entries scanned per step.
def _gather_rows_per_program(dp: int, fp64: bool) -> int:
    return max(1, min(32, (1024 if fp64 else 2048) // dp))


_GATHER_SCAN = 64
_INTERPRETER_GATHER_SCAN = 16
_SUM_BLOCK = 1024


# Shape classes (kernel and autotuning key, described in words) tuned in this process.
_TUNED_CLASSES: set = set()

_CAPTURE_MESSAGE = (
    "eae_kernels triton backend: the first call for this shape class ({what}) came during CUDA-graph "
    "capture, but that call compiles and autotunes its kernels, which synchronises and cannot be "
    "captured. Call eae_kernels.warmup(z) (or the op once) with a tensor of the same shape, dtype "
    "and device, and the same k, p and deterministic, before capturing."
)


def _tracing(z: torch.Tensor) -> bool:
    """True while torch.compile or make_fx traces (fake tensors, symbolic sizes): nothing runs."""
    from torch._subclasses.fake_tensor import is_fake

    return torch.compiler.is_compiling() or is_fake(z) or not all(isinstance(s, int) for s in z.shape)


class _Launcher:
    """Launches the kernels for one call: picks the tuned or the interpreter variant, and goes
    through torch.library.wrap_triton when the op is a triton_op (so torch.compile sees them).
    The first launch of an autotuned shape class may not happen during CUDA-graph capture: it
    raises a RuntimeError that says so (instead of a capture error from inside the autotuner)."""

    def __init__(self, k: int, wrap):
        self.kernels = _kernels()
        self.kp = _next_pow2(k)
        self.family = self.kernels.large_k if self.kp > 8 else self.kernels.small_k
        self.wrap = wrap

    def _run(self, kernel, grid, args, meta, tuned_kernel: bool):
        if tuned_kernel and not self.kernels.tuned:
            meta = {**meta, **INTERPRETER_SEARCH_CONFIG}
        launch = self.wrap(kernel) if self.wrap is not None else kernel
        launch[grid](*args, **meta)

    def searching(self, name: str, grid, args, meta, rows: int | None = None):
        """One of the search kernels (knn, search, small, knn_sets, sets_search, sets_small):
        autotuned block sizes. rows: the N of the shape class (default: args[0]'s rows)."""
        z = args[0]
        tracked = self.kernels.tuned and z.device.type == "cuda" and not _tracing(z)
        if tracked:  # the autotuner's key: N's bit length, d, K, NORM (and the set flags), the dtypes
            n, d = (z.shape[0] if rows is None else rows), z.shape[-1]
            flags = "".join(f", {flag}={meta[flag]}" for flag in ("SELF", "CROSS", "TERM") if flag in meta)
            what = (f"{name} kernel, {2 ** (n.bit_length() - 1)} <= N < {2 ** n.bit_length()}, d={d}, "
                    f"k={meta['K']}, norm code {meta['NORM']}{flags}, {z.dtype}, {z.device}")  # fmt: skip
            if what not in _TUNED_CLASSES and torch.cuda.is_current_stream_capturing():
                raise RuntimeError(_CAPTURE_MESSAGE.format(what=what))
        self._run(getattr(self.family, name), grid, args, meta, True)
        if tracked:
            _TUNED_CLASSES.add(what)

    def plain(self, name: str, grid, args, meta, num_warps: int = 4):
        """A kernel with fixed block sizes (sum_terms, gather)."""
        if self.kernels.tuned:
            meta = {**meta, "num_warps": num_warps}
        self._run(getattr(self.kernels, name), grid, args, meta, False)

    @property
    def gather_scan(self) -> int:
        return _GATHER_SCAN if self.kernels.tuned else _INTERPRETER_GATHER_SCAN


def _concrete(x):
    """A Python int for a size or int argument. Under torch.compile with dynamic shapes these are
    SymInts; the host-side constants (log-volume, digamma, bit patterns) need real values, so
    this specialises (adds a guard) instead."""
    return int(x) if isinstance(x, torch.SymInt) else x


def _kl_entropy_impl(z, k, p, eps, compute_grad, deterministic, row_begin=0, row_end=-1, *, wrap=None):
    """The Triton kl_entropy: see the module docstring and csrc/bindings.cpp for the contract."""
    k = check_k(_concrete(k))
    check_z(z, k)
    p = check_p(p)
    eps = check_eps(eps)
    z = z.contiguous()  # one layout: the same kernels, bits and int64-safe offsets for every stride
    n, d = (_concrete(size) for size in z.shape)
    row_begin, row_end = _check_row_range(n, _concrete(row_begin), _concrete(row_end))
    m = row_end - row_begin
    launcher = _Launcher(k, wrap)
    from . import triton_mixed  # the certified tensor-core search (EAE_KERNELS_SEARCH); same bits, gathered gradient

    mixed = triton_mixed.wanted(z, k, p, m)
    small = not mixed and n <= SMALL_BATCH_MAX_ROWS and d <= SMALL_BATCH_MAX_DIM and m * n * d <= SMALL_BATCH_MAX_WORK
    # Float atomics only where they are allowed and accurate: not deterministic, not half.
    atomics = compute_grad and not small and not mixed and not deterministic and z.dtype not in HALF_DTYPES

    h = z.new_empty((), dtype=accumulation_dtype(z.dtype))
    nbr = z.new_empty((m if compute_grad else 0,), dtype=torch.int64)
    if not compute_grad:
        grad = z.new_empty((0,))
    elif atomics:
        grad = z.new_zeros((n, d))
    else:
        grad = z.new_empty((n, d))

    eps_bits = _f64_bits(eps)
    const_bits = _f64_bits(_kl_constant(n, d, k, p) if row_begin == 0 and m > 0 else 0.0)
    scale_bits = _f64_bits(d / n)
    shape = (n, d, row_begin, row_end, _concrete(z.stride(0)), _concrete(z.stride(1)))
    kind = dict(K=k, KP=launcher.kp, NORM=_NORM_CODES[p])
    dp = _next_pow2(d)
    block_g = _gather_rows_per_program(dp, z.dtype == torch.float64)

    # Per-row log terms (float64) and, for the gather, gradient weights (the accumulation dtype).
    terms = z.new_empty((max(m, 1),), dtype=torch.float64)
    gathers = compute_grad and not atomics
    weights = z.new_empty((max(m, 1) if gathers else 0,), dtype=accumulation_dtype(z.dtype))

    with _device_guard(z):
        if small:
            launcher.searching(
                "small", (1,),
                (z, h, terms, nbr, weights, grad, *shape, eps_bits, const_bits, scale_bits, n.bit_length()),
                dict(kind, COMPUTE_GRAD=compute_grad, BLOCK_G=block_g, GATHER_SCAN=launcher.gather_scan,
                     SUM_BLOCK=_SUM_BLOCK, DP=dp),
            )  # fmt: skip
            return h, grad, nbr

        if mixed:
            triton_mixed.kl_search(z, k, row_begin, row_end, eps_bits, terms, nbr, weights, wrap=wrap)
        elif m > 0:
            launcher.searching(
                "search", lambda meta: (_cdiv(m, meta["BLOCK_M"]),),
                (z, terms, nbr, weights, grad, *shape, eps_bits, scale_bits, n.bit_length()),
                dict(kind, STORE_NBR=compute_grad, STORE_WEIGHT=gathers, SCATTER=atomics, EPI_D=min(dp, 32)),
            )  # fmt: skip
        launcher.plain(
            "sum_terms", (1,), (terms, h, m, const_bits, scale_bits), dict(BLOCK=_SUM_BLOCK), _SMALL_NUM_WARPS
        )
        if gathers:
            launcher.plain(
                "gather", (_cdiv(n, block_g),),
                (z, nbr, weights, grad, *shape, scale_bits),
                dict(NORM=kind["NORM"], BLOCK_G=block_g, BLOCK_N=launcher.gather_scan, DP=dp),
            )  # fmt: skip
    return h, grad, nbr


def _knn_impl(z, k, p, *, wrap=None):
    """The Triton knn: (N, k) ascending distances and int64 indices, as torch.ops.eae_kernels.knn."""
    k = check_k(_concrete(k))
    check_z(z, k)
    p = check_p(p)
    z = z.contiguous()  # as in _kl_entropy_impl
    n, d = (_concrete(size) for size in z.shape)
    launcher = _Launcher(k, wrap)
    dist = z.new_empty((n, k), dtype=accumulation_dtype(z.dtype))
    idx = z.new_empty((n, k), dtype=torch.int64)
    from . import triton_mixed  # the certified tensor-core search (EAE_KERNELS_SEARCH): same bits

    with _device_guard(z):
        if triton_mixed.wanted(z, k, p, n):
            triton_mixed.knn_search(z, k, dist, idx, wrap=wrap)
            return dist, idx
        launcher.searching(
            "knn", lambda meta: (_cdiv(n, meta["BLOCK_M"]),),
            (z, dist, idx, n, d, _concrete(z.stride(0)), _concrete(z.stride(1)), n.bit_length()),
            dict(K=k, KP=launcher.kp, NORM=_NORM_CODES[p]),
        )  # fmt: skip
    return dist, idx


# ---------------------------------------------------------------------------------------------
# Batches of sets: kl_entropy_sets, kl_cross_entropy, kl_divergence, koleo, knn_sets
# ---------------------------------------------------------------------------------------------

# The estimators of the set kernels: (EST code, SELF search, CROSS search, sign of the self term,
# TERM code). EST and TERM as in triton_kernels.py (csrc/core/kl_math.h's estimate_spec).
_SET_ESTIMATORS = {
    "kl_entropy_sets": (0, True, False, 1, 0),
    "kl_cross_entropy": (1, False, True, 1, 0),
    "kl_divergence": (2, True, True, -1, 0),
    "koleo": (3, True, False, 1, 1),
}


def _check_set_tensor(x, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or not x.is_floating_point() or x.shape[2] < 1:
        got = f"{x.dim()}-D {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a floating (B, M, d) tensor with d >= 1; got {got}")


def _check_lengths(lengths, x, name: str):
    """lengths: None or a (B,) int64 tensor on x's device (its values are checked by the public
    functions; the kernels clamp them to [0, M], so a bad value cannot read out of bounds)."""
    if lengths is None:
        return None
    if not isinstance(lengths, torch.Tensor) or lengths.shape != (x.shape[0],) or lengths.dtype != torch.int64:
        raise ValueError(f"{name} must be a ({x.shape[0]},) int64 tensor; got {lengths!r:.80}")
    if lengths.device != x.device:
        raise ValueError(f"{name} must be on {x.device}; got {lengths.device}")
    return lengths.contiguous()


def _check_sets_pair(x, y, lengths_x, lengths_y):
    """Contiguous x, y (or None) and lengths, after the shape-level checks of the C++ ops."""
    _check_set_tensor(x, "x")
    lengths_x = _check_lengths(lengths_x, x, "lengths_x")
    if y is not None:
        _check_set_tensor(y, "y")
        if y.shape[0] != x.shape[0] or y.shape[2] != x.shape[2] or y.dtype != x.dtype or y.device != x.device:
            raise ValueError(
                f"x and y must have the same number of sets, columns, dtype and device; got x {tuple(x.shape)} "
                f"{x.dtype} {x.device} and y {tuple(y.shape)} {y.dtype} {y.device}"
            )
        lengths_y = _check_lengths(lengths_y, y, "lengths_y")
        y = y.contiguous()
    elif lengths_y is not None:
        raise ValueError("lengths_y needs y")
    return x.contiguous(), y, lengths_x, lengths_y


def _check_full_set_sizes(op: str, k: int, mx: int, ny: int, self_search: bool, cross: bool, lengths_x, lengths_y):
    """Without lengths the set sizes are known on the host: the same rule as the C++ ops."""
    if self_search and lengths_x is None and not mx > k:
        raise ValueError(f"{op}: the sets of x have {mx} rows but k={k}: the k-th nearest other row needs more than k rows")
    if cross and lengths_y is None and not ny >= k:
        raise ValueError(f"{op}: the sets of y have {ny} rows but k={k}: the k-th nearest row of y needs at least k rows")
    if cross and lengths_x is None and mx < 1:
        raise ValueError(f"{op}: the sets of x are empty; the estimate needs a query row")


def _estimate_sets_impl(op, x, y, lengths_x, lengths_y, k, p, eps, compute_grad, row_begin=0, row_end=-1, *,
                        wrap=None):  # fmt: skip
    """The Triton estimators on batches of sets (op: a key of _SET_ESTIMATORS), with the outputs of
    the C++ op of the same name (csrc/bindings.cpp): (values (B,), grad_x, grad_y or nbr)."""
    est, self_search, cross, self_sign, term = _SET_ESTIMATORS[op]
    k = check_k(_concrete(k))
    p = check_p(p)
    eps = check_eps(eps)
    x, y, lengths_x, lengths_y = _check_sets_pair(x, y if cross else None, lengths_x, lengths_y)
    sets, mx, d = (_concrete(size) for size in x.shape)
    ny = _concrete(y.shape[1]) if cross else mx
    row_begin, row_end = _concrete(row_begin), _concrete(row_end)
    if (row_begin, row_end) != (0, -1):  # KoLeo's row range (the distributed global batch)
        if sets != 1 or lengths_x is not None:
            raise ValueError("a row range needs one set (B = 1) and no lengths")
        _check_row_range(mx, row_begin, row_end)
    _check_full_set_sizes(op, k, mx, ny, self_search, cross, lengths_x, lengths_y)
    launcher = _Launcher(k, wrap)
    acc = accumulation_dtype(x.dtype)

    values = x.new_empty((sets,), dtype=acc)
    grad_x = x.new_empty(x.shape) if compute_grad else x.new_empty((0,))
    grad_y = y.new_empty(y.shape) if compute_grad and cross else x.new_empty((0,))
    store_nbr = op == "kl_entropy_sets"  # its neighbour list is an output (for the double backward)
    nbr_self = x.new_empty((sets, mx) if store_nbr else (0,), dtype=torch.int64)
    if sets == 0:
        return values, grad_x, (nbr_self if store_nbr else grad_y)

    def per_row(dtype, wanted):  # a (B, Mx) buffer, or a 1-element stand-in the kernels never touch
        return x.new_empty((sets, mx) if wanted else (1,), dtype=dtype)

    terms_s, terms_c = per_row(torch.float64, self_search), per_row(torch.float64, cross)
    if not store_nbr:
        nbr_self = per_row(torch.int64, self_search and compute_grad)
    nbr_c = per_row(torch.int64, cross and compute_grad)
    w_s, w_c = per_row(acc, self_search and compute_grad), per_row(acc, cross and compute_grad)
    y_arg = y if cross else x
    lx = lengths_x if lengths_x is not None else x
    ly = lengths_y if lengths_y is not None else x

    eps_bits = _f64_bits(eps)
    logv_bits = _f64_bits(log_unit_ball_volume(d, p))
    euler_bits = _f64_bits(EULER_GAMMA)
    rows = max(mx, ny)
    flags = dict(SELF=self_search, CROSS=cross, HAS_LX=lengths_x is not None, HAS_LY=lengths_y is not None)
    kind = dict(K=k, KP=launcher.kp, NORM=_NORM_CODES[p])
    dp = _next_pow2(d)
    block_g = _gather_rows_per_program(dp, x.dtype == torch.float64)
    work = mx * ((mx if self_search else 0) + (ny if cross else 0)) * d  # per set
    small = (rows <= SMALL_BATCH_MAX_ROWS and d <= SMALL_BATCH_MAX_DIM
             and (work <= SMALL_BATCH_MAX_WORK or sets >= SMALL_PATH_MIN_SETS))  # fmt: skip
    buffers = (terms_s, terms_c, nbr_self, nbr_c, w_s, w_c)
    shape = (mx, ny, d, row_begin, row_end)

    with _device_guard(x):
        if small:
            launcher.searching(
                "sets_small", (sets,),
                (x, y_arg, lx, ly, values, grad_x, grad_y, *buffers, *shape, eps_bits, logv_bits, euler_bits,
                 rows.bit_length()),
                dict(kind, **flags, EST=est, SELF_SIGN=self_sign, STORE_NBR=store_nbr, COMPUTE_GRAD=compute_grad,
                     TERM=term, BLOCK_G=block_g, GATHER_SCAN=launcher.gather_scan, SUM_BLOCK=_SUM_BLOCK, DP=dp),
                rows=rows,
            )  # fmt: skip
        else:
            launcher.searching(
                "sets_search", lambda meta: (sets * _cdiv(mx, meta["BLOCK_M"]),),
                (x, y_arg, lx, ly, *buffers, *shape, eps_bits, rows.bit_length()),
                dict(kind, **flags, SELF_SIGN=self_sign, STORE_NBR=store_nbr or compute_grad,
                     STORE_WEIGHT=compute_grad, TERM=term),
                rows=rows,
            )  # fmt: skip
            launcher.plain(
                "sets_value", (sets,),
                (lx, ly, terms_s, terms_c, values, *shape, logv_bits, euler_bits),
                dict(flags, EST=est, SELF_SIGN=self_sign, SUM_BLOCK=_SUM_BLOCK, K=k), _SMALL_NUM_WARPS,
            )  # fmt: skip
            if compute_grad:
                for of_y, grad, padded in [(False, grad_x, mx)] + ([(True, grad_y, ny)] if cross else []):
                    if padded == 0:
                        continue
                    launcher.plain(
                        "sets_gather", (sets * _cdiv(padded, block_g),),
                        (x, y_arg, lx, ly, grad, nbr_self, w_s, nbr_c, w_c, *shape),
                        dict(flags, EST=est, OF_Y=of_y, NORM=kind["NORM"], BLOCK_G=block_g,
                             BLOCK_N=launcher.gather_scan, DP=dp),
                    )  # fmt: skip
    return values, grad_x, (nbr_self if store_nbr else grad_y)


def _knn_sets_impl(x, y, lengths_x, lengths_y, k, p, *, wrap=None):
    """The Triton knn_sets: (B, Mx, k) ascending distances and int64 indices, 0 / -1 on padded
    query rows, as torch.ops.eae_kernels.knn_sets."""
    k = check_k(_concrete(k))
    p = check_p(p)
    x, y, lengths_x, lengths_y = _check_sets_pair(x, y, lengths_x, lengths_y)
    sets, mx, d = (_concrete(size) for size in x.shape)
    cross = y is not None
    ny = _concrete(y.shape[1]) if cross else mx
    if mx > 0:  # an empty query set needs nothing
        _check_full_set_sizes("knn_sets", k, mx, ny, not cross, cross, lengths_x, lengths_y)
    launcher = _Launcher(k, wrap)
    dist = x.new_empty((sets, mx, k), dtype=accumulation_dtype(x.dtype))
    idx = x.new_empty((sets, mx, k), dtype=torch.int64)
    if sets * mx == 0:
        return dist, idx
    with _device_guard(x):
        launcher.searching(
            "knn_sets", lambda meta: (sets * _cdiv(mx, meta["BLOCK_M"]),),
            (x, y if cross else x, lengths_x if lengths_x is not None else x,
             lengths_y if lengths_y is not None else x, dist, idx, mx, ny, d, max(mx, ny).bit_length()),
            dict(K=k, KP=launcher.kp, NORM=_NORM_CODES[p], CROSS=cross, HAS_LX=lengths_x is not None,
                 HAS_LY=lengths_y is not None),
            rows=max(mx, ny),
        )  # fmt: skip
    return dist, idx


# ---------------------------------------------------------------------------------------------
# Registration as torch.library ops, with the C++ ops' autograd formulas
# ---------------------------------------------------------------------------------------------

_NO_GRAD_MESSAGE = (
    "eae_kernels.kl_entropy: the gradient was not computed in the forward pass because z did not "
    "require grad (or grad mode was off) when kl_entropy was called"
)


def _kl_setup_context(ctx, inputs, output):
    z, _k, p, eps, compute_grad, _deterministic, *row_range = inputs
    _h, grad, nbr = output
    ctx.save_for_backward(z, grad, nbr)
    ctx.p, ctx.eps, ctx.compute_grad = p, eps, compute_grad
    ctx.row_begin = row_range[0] if row_range else 0
    ctx.mark_non_differentiable(nbr)
    ctx.set_materialize_grads(False)  # unused output gradients stay None: no HVP in a plain backward


def _kl_backward(ctx, grad_h, grad_grad, _grad_nbr):
    if not ctx.compute_grad:
        raise RuntimeError(_NO_GRAD_MESSAGE)
    z, grad, nbr = ctx.saved_tensors
    grad_z = grad * grad_h if grad_h is not None else torch.zeros_like(grad)
    if grad_grad is not None:  # double backward: the Hessian-vector product, neighbours held fixed
        grad_z = grad_z + torch.ops.eae_kernels.kl_entropy_hvp(z, nbr, grad_grad, ctx.p, ctx.eps, ctx.row_begin)
    return grad_z, None, None, None, None, None, None, None


def _knn_setup_context(ctx, inputs, output):
    z, _k, p = inputs
    dist, idx = output
    ctx.save_for_backward(z, dist, idx)
    ctx.p = p
    ctx.mark_non_differentiable(idx)


def _knn_backward(ctx, grad_dist, _grad_idx):
    z, dist, idx = ctx.saved_tensors
    return torch.ops.eae_kernels.knn_backward(grad_dist, z, dist, idx, ctx.p), None, None


def _scale_by_set(saved, grad_value):
    """Each set's incoming gradient (B,) times the saved per-set gradient (B, M, d)."""
    return saved * grad_value.to(saved.dtype).view(-1, 1, 1)


def _check_grad_computed(ctx, op: str) -> None:
    if not ctx.compute_grad:
        raise RuntimeError(
            f"eae_kernels.{op}: the gradient was not computed in the forward pass because no input required "
            "grad (or grad mode was off) when it was called"
        )


def _sets_setup_context(ctx, inputs, output):
    z, _lengths, _k, p, eps, compute_grad = inputs
    _h, grad, nbr = output
    ctx.save_for_backward(z, grad, nbr)
    ctx.p, ctx.eps, ctx.compute_grad = p, eps, compute_grad
    ctx.mark_non_differentiable(nbr)
    ctx.set_materialize_grads(False)


def _sets_backward(ctx, grad_h, grad_grad, _grad_nbr):
    _check_grad_computed(ctx, "kl_entropy")
    z, grad, nbr = ctx.saved_tensors
    grad_z = _scale_by_set(grad, grad_h) if grad_h is not None else torch.zeros_like(grad)
    if grad_grad is not None:  # double backward: the Hessian-vector product, neighbours held fixed
        grad_z = grad_z + torch.ops.eae_kernels.kl_entropy_sets_hvp(z, nbr, grad_grad, ctx.p, ctx.eps)
    return grad_z, None, None, None, None, None


def _pair_setup_context(ctx, inputs, output):
    ctx.compute_grad = inputs[7]
    _value, grad_x, grad_y = output
    ctx.save_for_backward(grad_x, grad_y)
    ctx.mark_non_differentiable(grad_x, grad_y)


def _pair_backward(op: str):
    def backward(ctx, grad_value, _gx, _gy):
        _check_grad_computed(ctx, op)
        grad_x, grad_y = ctx.saved_tensors
        with torch.no_grad():  # once differentiable, as the C++ op: a double backward raises
            return _scale_by_set(grad_x, grad_value), _scale_by_set(grad_y, grad_value), None, None, None, None, None, None

    return backward


def _koleo_setup_context(ctx, inputs, output):
    ctx.compute_grad = inputs[3]
    _loss, grad = output
    ctx.save_for_backward(grad)
    ctx.mark_non_differentiable(grad)


def _koleo_backward(ctx, grad_loss, _grad):
    _check_grad_computed(ctx, "koleo_loss")
    (grad,) = ctx.saved_tensors
    with torch.no_grad():
        return _scale_by_set(grad, grad_loss), None, None, None, None, None


def _knn_sets_setup_context(ctx, inputs, output):
    x, y, _lx, _ly, _k, p = inputs
    dist, idx = output
    ctx.save_for_backward(x, y, dist, idx)
    ctx.p, ctx.cross = p, y is not None
    ctx.mark_non_differentiable(idx)


def _knn_sets_backward(ctx, grad_dist, _grad_idx):
    x, y, dist, idx = ctx.saved_tensors
    grad_x, grad_y = torch.ops.eae_kernels.knn_sets_backward(grad_dist, x, y, dist, idx, ctx.p)
    return grad_x, (grad_y if ctx.cross else None), None, None, None, None


_REGISTERED = False


@torch.compiler.assume_constant_result
def _ensure_registered() -> bool:
    """Registers torch.ops.eae_kernels.kl_entropy_triton and knn_triton (once)."""
    global _REGISTERED
    if not _REGISTERED:
        _register_ops()
        _REGISTERED = True
    return True


def _register_ops() -> None:
    from . import _extension

    if not _extension.available():  # the autograd formulas are the compiled ops kl_entropy_hvp, knn_backward
        raise RuntimeError(f"the triton backend needs eae_kernels' compiled ops: {_extension.unavailable_reason()}")
    # triton_op (torch >= 2.6) lets torch.compile see the kernels. In the interpreter torch cannot
    # trace them (wrap_triton hands interpreted kernels back unwrapped), so there, and on older
    # torch, the op is an opaque custom op with the C++ ops' fake kernels.
    triton_op = None if _interpret_requested() else getattr(torch.library, "triton_op", None)
    wrap = torch.library.wrap_triton if triton_op is not None else None

    # The annotations give the schema of the C++ ops (csrc/bindings.cpp).
    def kl_entropy_triton(
        z: torch.Tensor, k: int, p: float, eps: float, compute_grad: bool, deterministic: bool,
        row_begin: int = 0, row_end: int = -1,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        return _kl_entropy_impl(z, k, p, eps, compute_grad, deterministic, row_begin, row_end, wrap=wrap)

    def knn_triton(z: torch.Tensor, k: int, p: float) -> tuple[torch.Tensor, torch.Tensor]:
        return _knn_impl(z, k, p, wrap=wrap)

    # (Annotations spelled out: with postponed evaluation they are resolved in the module's globals.)
    def kl_entropy_sets_triton(
        z: torch.Tensor, lengths: Optional[torch.Tensor], k: int, p: float, eps: float, compute_grad: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _estimate_sets_impl("kl_entropy_sets", z, None, lengths, None, k, p, eps, compute_grad, wrap=wrap)

    def kl_cross_entropy_triton(
        x: torch.Tensor, y: torch.Tensor, lengths_x: Optional[torch.Tensor], lengths_y: Optional[torch.Tensor],
        k: int, p: float, eps: float, compute_grad: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        return _estimate_sets_impl("kl_cross_entropy", x, y, lengths_x, lengths_y, k, p, eps, compute_grad, wrap=wrap)

    def kl_divergence_triton(
        x: torch.Tensor, y: torch.Tensor, lengths_x: Optional[torch.Tensor], lengths_y: Optional[torch.Tensor],
        k: int, p: float, eps: float, compute_grad: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        return _estimate_sets_impl("kl_divergence", x, y, lengths_x, lengths_y, k, p, eps, compute_grad, wrap=wrap)

    def koleo_triton(
        x: torch.Tensor, lengths: Optional[torch.Tensor], eps: float, compute_grad: bool, row_begin: int = 0,
        row_end: int = -1,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        loss, grad, _ = _estimate_sets_impl(
            "koleo", x, None, lengths, None, 1, 2.0, eps, compute_grad, row_begin, row_end, wrap=wrap
        )
        return loss, grad

    def knn_sets_triton(
        x: torch.Tensor, y: Optional[torch.Tensor], lengths_x: Optional[torch.Tensor],
        lengths_y: Optional[torch.Tensor], k: int, p: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        return _knn_sets_impl(x, y, lengths_x, lengths_y, k, p, wrap=wrap)

    # name -> (implementation, fake kernel, backward, setup_context)
    ops = {
        "kl_entropy": (kl_entropy_triton, _fake.kl_entropy, _kl_backward, _kl_setup_context),
        "knn": (knn_triton, _fake.knn, _knn_backward, _knn_setup_context),
        "kl_entropy_sets": (kl_entropy_sets_triton, _fake.kl_entropy_sets, _sets_backward, _sets_setup_context),
        "kl_cross_entropy": (kl_cross_entropy_triton, _fake.kl_cross_entropy, _pair_backward("kl_cross_entropy"),
                             _pair_setup_context),
        "kl_divergence": (kl_divergence_triton, _fake.kl_divergence, _pair_backward("kl_divergence"),
                          _pair_setup_context),
        "koleo": (koleo_triton, _fake.koleo, _koleo_backward, _koleo_setup_context),
        "knn_sets": (knn_sets_triton, _fake.knn_sets, _knn_sets_backward, _knn_sets_setup_context),
    }  # fmt: skip
    for name, (impl, fake, backward, setup_context) in ops.items():
        if triton_op is not None:
            op = triton_op(f"eae_kernels::{name}_triton", impl, mutates_args=())
        else:
            op = torch.library.custom_op(f"eae_kernels::{name}_triton", impl, mutates_args=())
            op.register_fake(fake)
        op.register_autograd(backward, setup_context=setup_context)
