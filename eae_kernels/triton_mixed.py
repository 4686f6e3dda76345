"""The certified tensor-core neighbour search of the Triton backend ("mixed" search): a tl.dot
candidate pass with a rigorous error bound, then exact re-measurement of the candidates with the
exact kernel's own arithmetic, so that neighbours, keys, H and the gradient are bit-identical to
the exact Triton search (ties included). L2 only, float32/float16/bfloat16 inputs, the self search
of the kl_entropy and knn ops.

    EAE_KERNELS_SEARCH = auto | exact | mixed   (read on every call; auto is the default)

``auto`` keeps the exact search until this path has run correctly and faster on a GPU
(AUTO_ON_GPU, off today); then it takes this path on CUDA tensors when d >= AUTO_MIN_DIM and
N >= AUTO_MIN_ROWS (a guess, to be measured on hardware). ``mixed`` takes it whenever it applies
(tests, benchmarks, scripts/gpu_check.sh), ``exact`` never.

The method (u = 2^-24, the float32 unit roundoff):

1. Centre and scale (host side, torch, float64): t_i = (z_i - mu) S with S = 2^-e, e the exponent
   of max |z - mu| (so |t| < 1; products stay far from underflow whatever the data's scale). The
   exact distance is r_ij = |z_i - z_j| = |t_i - t_j| / S. The dot inputs are y_i = t_i rounded to
   tf32 (10 fraction bits, round to nearest even, done here so the hardware's own rounding or
   truncation of the operand is a no-op) or to bf16. Their distance from t_i is measured, not
   estimated, in float64: delta_i = |y_i - t_i| (1 + 2^-40) + 2^-50 sqrt(d) (the last term covers
   the float64 rounding of t). By the triangle inequality
        s_ij - delta_i - delta_j <= S r_ij <= s_ij + delta_i + delta_j,   s_ij = |y_i - y_j|.
2. The tile kernel computes, per pair, w_ij = n_j - 2 g_ij with g_ij = tl.dot(y_i, y_j) (fp32
   accumulation) and n_j = |y_j|^2 (float64, rounded to float32); exactly, s_ij^2 - n_i = n_j - 2 y_i.y_j.
   Error of w:
   * the products of two tf32 (11-bit) or bf16 (8-bit) significands are exact in fp32;
   * the tensor cores add the d products in an unspecified order, in blocks of b >= 1 products
     plus the running sum, aligned to the block's largest exponent and truncated, the result
     truncated to fp32 (the model of Fasi et al., "Numerical behavior of NVIDIA tensor cores",
     2021): a block costs at most (b + 2) 2^-23 times the sum of its inputs' magnitudes, so the
     whole sum at most d (1 + 2/b) 2^-23 <= 3 d 2^-23 times sum_c |y_ic y_jc|. We charge more:
     u_acc = 2^-21 per addition, in any order (Higham, Accuracy and Stability of Numerical
     Algorithms, sec. 4.2): |g~ - g| <= gamma sum_c |y_ic y_jc| <= gamma |y_i||y_j|
     <= gamma (n_i + n_j) / 2, gamma = (d+1) u_acc / (1 - (d+1) u_acc), about 4 (d+1) 2^-23;
   * n_j's rounding to fp32 and the final fp32 combination n_j - 2 g~ (with or without a fused
     multiply-add) each cost at most 2^-22 (n_i + 2 n_j);
   * flushed or underflowing products and partial sums: at most 2^-126 absolute each, doubled
     by the factor 2: (4d + 8) 2^-126 in all.
   With n_max = max_j n_j:  |w_ij - (s_ij^2 - n_i)| <= e_i = (gamma + 2^-21)(n_i + 2 n_max)
   + (4d + 8) 2^-126, times a margin.
3. The exact kernel's key K_ij = sum_c fl(z_ic - z_jc)^2, coordinates in order, one fma each:
   the subtraction's rounding enters squared, each fma rounds a sum of non-negative terms by a
   relative u, or by at most 2^-126 absolute when the result is subnormal or flushed, so
        (1 - u)^(d+2) r^2 - U <= K_ij <= (1 + u)^(d+2) r^2 + U,   U = (d+1) 2^-125,
   no overflow: data with d (2 max|z|)^2 >= 2^126 (or non-finite values) go to the exact search.
   In the scaled units: S^2 K lies within shrink R^2 - U' and grow R^2 + U', R = S r, U' = S^2 U.
4. Row i keeps the k smallest w over the columns seen so far (itself excluded), q_i the largest
   of them. Those k columns have keys at most T_i = grow (sqrt(q_i + n_i + e_i) + delta_i +
   delta_max)^2 + U' (in S^2 units), so every column of the exact top-k (ties included) has
   S^2 K <= T_i, hence S r <= rho_i = sqrt((T_i + U') / shrink), s <= rho_i + delta_i + delta_max
   and w <= W_i = (rho_i + delta_i + delta_max)^2 - n_i + e_i. The columns with w <= W_i are the
   candidates; as q_i only falls, testing each tile after merging it into the list gives a
   superset of the exact top-k. All of this per-row arithmetic is float64 with a relative margin
   of 2^-20 per step (far above float64's 2^-53), W_i is rounded up to float32 for the compare.
5. The candidates (at most capacity(k) per row, 64 to 256) are re-measured exactly (z_i - z_j, fma, coordinates
   in order, half inputs widened: the exact kernel's keys) and merged with the same (key, index)
   order, so the top-k is the exact one. A row block with a row whose list overflowed (near-
   duplicates, tight clusters, tiny d), and every block of a call with non-finite or too large
   values, runs the exact search instead: correctness never depends on the data. (Not done, unlike
   the CPU path: setting far outliers aside. One far row raises n_max and delta_max for every row,
   which widens every band and can send every block to the exact search.)

The per-row log term, gradient weight and the k-th neighbour are then formed with the exact
kernels' own helpers (_log_term, _weight); H and the gradient come from the existing sum and
gather kernels, so they are the bits of the exact path (deterministic gather: the mixed path
never uses the atomic gradient). Nothing of size N x N is allocated: O(N (d + capacity(k))) scratch.
"""

from __future__ import annotations

import math
import os
import struct

import torch
import triton
import triton.language as tl

from .triton_kernels import _best, _f64_from_bits, _log_term, _merge_tile, _weight, _worst

SEARCH_ENV = "EAE_KERNELS_SEARCH"
# The auto rule. Off until scripts/gpu_check.sh has shown the path bit-identical and faster on a GPU
# (no GPU has run it yet); the thresholds are a guess from the H100/H200's tensor-core to SIMT
# ratio, NOT measured on hardware.
AUTO_ON_GPU = False
AUTO_MIN_DIM = 32
AUTO_MIN_ROWS = 8192
MAX_K = 16  # beyond this the candidate lists would be mostly overflow: exact search
# "tf32" (default: the tighter bound) or "bf16" (twice the tensor-core rate, ~8x wider band).
DOT_INPUT = "tf32"

# Block sizes. GPU: unmeasured guesses (no GPU was available). Interpreter (tests): small, so that
# small inputs span several row blocks and column tiles. Tests may change them.
GPU_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "REFINE_M": 16, "REFINE_N": 64}
INTERPRETER_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "REFINE_M": 16, "REFINE_N": 16}

_U_ACC = 2.0**-21
_BIG = tl.constexpr(2**31 - 1)
_INF = tl.constexpr(float("inf"))
_MARGIN = tl.constexpr(1.0 + 2.0**-20)  # exactly representable in float32 and float64


def search_mode() -> str:
    """EAE_KERNELS_SEARCH, read on every call: "exact", "mixed", or "auto" (default, and for
    unknown values, as on the CPU)."""
    mode = os.environ.get(SEARCH_ENV, "auto").strip().lower()
    return mode if mode in ("exact", "mixed") else "auto"


def capacity(k: int) -> int:
    """Candidate slots per row (a power of two)."""
    kp = 1 << max(0, (k - 1).bit_length())
    return max(64, 16 * kp)


def wanted(z: torch.Tensor, k: int, p: float, rows: int) -> bool:
    """Whether a self search of `rows` query rows of z (N, d) takes the mixed path."""
    mode = search_mode()
    n, d = z.shape
    applies = (
        p == 2.0 and z.dtype in (torch.float32, torch.float16, torch.bfloat16)
        and k <= MAX_K and rows > 0 and 1 <= d <= 16384 and n < 2**31 // max(1, capacity(k))
    )  # fmt: skip
    if mode == "exact" or not applies:
        return False
    if mode == "mixed":
        return True
    return AUTO_ON_GPU and z.device.type == "cuda" and d >= AUTO_MIN_DIM and n >= AUTO_MIN_ROWS


# ---------------------------------------------------------------------------------------------
# Host side: centring, rounding, the measured constants of the bound
# ---------------------------------------------------------------------------------------------


def round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 -> the nearest tf32 value (10 fraction bits, ties to even), as float32. Finite |x| < 2^127."""
    bits = x.contiguous().view(torch.int32)
    lsb = (bits >> 13) & 1
    return ((bits + 0xFFF + lsb) & -0x2000).view(torch.float32)


def host_constants(d: int) -> dict:
    """The data-independent constants of the bound (see the module docstring), rounded outward."""
    u = 2.0**-24
    gamma = (d + 1) * _U_ACC / (1.0 - (d + 1) * _U_ACC)
    return {
        "grow": math.exp((d + 2) * math.log1p(u)) * (1 + 2.0**-30),
        "shrink": math.exp((d + 2) * math.log1p(-u)) * (1 - 2.0**-30),
        "err_rel": (gamma + 2.0**-21) * (1 + 2.0**-30),  # e_i = err_rel (n_i + 2 n_max) + err_abs
        "err_abs": (4 * d + 8) * 2.0**-126,
        "key_abs": (d + 1) * 2.0**-125,  # U: the exact key's absolute (underflow) error
    }


def prepare(z: torch.Tensor, dot_input: str = None) -> dict:
    """The dot operands and the measured constants of the bound, on z's device, without a host
    synchronisation. Returns y (N, DP) padded dot operands (float32 tf32 values or bfloat16),
    norm32 (N,) |y|^2 in float32, norm and delta (N,) float64, consts (4,) float64:
    [U' = S^2 U, n_max, delta_max, bad], and t (N, d) the scaled centred rows (for tests)."""
    dot_input = dot_input or DOT_INPUT
    n, d = (int(size) for size in z.shape)
    dp = max(16, 1 << (d - 1).bit_length())
    x = z.to(torch.float64)
    raw_max = x.abs().amax()
    t = x - x.mean(0)
    _, e = torch.frexp(t.abs().amax())
    scale = torch.ldexp(torch.ones_like(raw_max), -e.to(torch.float64))  # 2^-e: |t| < 1
    t = t * scale
    y32 = t.to(torch.float32)
    bad = ~(raw_max * raw_max * (4.0 * d) < 2.0**126)  # non-finite values, or keys that could overflow
    y32 = torch.where(bad, torch.zeros_like(y32), y32)  # keep the rounding below finite
    if dot_input == "tf32":
        y = round_to_tf32(y32)
    elif dot_input == "bf16":
        y = y32.to(torch.bfloat16)
    else:
        raise ValueError(f"dot_input must be 'tf32' or 'bf16', got {dot_input!r}")
    y64 = y.to(torch.float64)
    delta = (y64 - t).square().sum(1).sqrt() * (1 + 2.0**-40) + 2.0**-50 * math.sqrt(d)
    norm = y64.square().sum(1)
    padded = y.new_zeros((n, dp))
    padded[:, :d] = y
    consts = torch.stack([
        scale * scale * host_constants(d)["key_abs"] * (1 + 2.0**-40),
        norm.amax(), delta.amax(), bad.to(torch.float64),
    ])  # fmt: skip
    return {"y": padded, "norm32": norm.to(torch.float32), "norm": norm, "delta": delta, "consts": consts,
            "t": t, "scale": scale, "dp": dp}  # fmt: skip


def pair_interval(w: torch.Tensor, prep: dict, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[lower, upper] of S^2 K_ij for every pair, float64, from approximate values w (N, N) of
    n_j - 2 y_i.y_j: the bound the kernel applies, written out for the tests (the kernel uses
    n_max and delta_max for the column's terms; here the pair's own, a tighter but equally valid
    form, and the global ones are tested too)."""
    c = host_constants(d)
    ni = prep["norm"][:, None]
    e = c["err_rel"] * (ni + 2 * prep["consts"][1]) + c["err_abs"]
    w = w.to(torch.float64)
    s_lo = (w + ni - e).clamp_min(0).sqrt()
    s_hi = (w + ni + e).clamp_min(0).sqrt()
    dd = prep["delta"][:, None] + prep["delta"][None, :]
    u_key = prep["consts"][0]
    lo = c["shrink"] * (s_lo - dd).clamp_min(0).square() - u_key
    hi = c["grow"] * (s_hi + dd).square() + u_key
    return lo, hi


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _empty_lists(n, BLOCK_M: tl.constexpr, KP: tl.constexpr, K: tl.constexpr):
    """Real slots (+inf, n + slot), padding slots (-inf, -1 - slot): never the worst."""
    slot = tl.arange(0, KP)
    real = slot < K
    top_key = tl.zeros((BLOCK_M, KP), dtype=tl.float32) + tl.where(real, _INF, -_INF)[None, :]
    top_idx = tl.zeros((BLOCK_M, KP), dtype=tl.int32) + tl.where(real, n + slot, -1 - slot)[None, :]
    return top_key, top_idx


@triton.jit
def _reach(q, ni, ei, spread, u_key, grow, shrink):
    """W_i of step 4 as float32, rounded up: the largest w whose pair can be in a top-k whose
    k-th approximate value is q. Float64, each step widened by _MARGIN (which also covers an
    inexact float64 sqrt: tl.sqrt_rn takes float32 only)."""
    q64 = q.to(tl.float64)
    s2 = q64 + ni + ei
    s2 = tl.maximum(s2 + (tl.abs(q64) + ni + ei) * 2.0**-40, 0.0)  # cancellation in the sum
    r_hi = tl.sqrt(s2) * _MARGIN + spread
    key_hi = (grow * r_hi * r_hi * _MARGIN + u_key) * _MARGIN
    rho = tl.sqrt((key_hi + u_key) / shrink * _MARGIN) * _MARGIN
    s_max = (rho + spread) * _MARGIN
    s_max2 = s_max * s_max
    w = s_max2 - ni + ei + (s_max2 + ni + ei) * 2.0**-40
    return (w + tl.abs(w) * 2.0**-20 + 2.0**-120).to(tl.float32)


@triton.jit
def _mixed_candidates_kernel(
    y_ptr,  # (N, DP) dot operands, float32 holding tf32 values, or bfloat16
    norm32_ptr,  # (N,) float32 |y_j|^2
    norm_ptr,  # (N,) float64 |y_j|^2
    delta_ptr,  # (N,) float64 delta_j
    consts_ptr,  # (4,) float64 [U', n_max, delta_max, bad]
    cand_ptr,  # (M, C) int32 output: candidate columns of each range row
    count_ptr,  # (M,) int32 output: candidates found (> C: overflowed)
    n,
    row_begin,
    row_end,
    grow_bits,
    shrink_bits,
    err_rel_bits,
    err_abs_bits,
    K: tl.constexpr,
    KP: tl.constexpr,
    C: tl.constexpr,
    DP: tl.constexpr,
    BK: tl.constexpr,
    TF32: tl.constexpr,
    WIDEN: tl.constexpr,  # bf16 operands widened to float32 before the dot (interpreter only)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    rows = row_begin + tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < row_end
    local = (rows - row_begin).to(tl.int64)
    count = tl.zeros((BLOCK_M,), dtype=tl.int32)
    bad = tl.load(consts_ptr + 3)
    if bad == 0.0:
        u_key = tl.load(consts_ptr)
        n_max = tl.load(consts_ptr + 1)
        delta_max = tl.load(consts_ptr + 2)
        grow = _f64_from_bits(grow_bits)
        shrink = _f64_from_bits(shrink_bits)
        rows_c = tl.minimum(rows, n - 1)
        ni = tl.load(norm_ptr + rows_c)
        ei = (_f64_from_bits(err_rel_bits) * (ni + 2.0 * n_max) + _f64_from_bits(err_abs_bits)) * _MARGIN
        spread = (tl.load(delta_ptr + rows_c) + delta_max) * _MARGIN
        kk = tl.arange(0, BK)
        a_base = y_ptr + rows_c.to(tl.int64)[:, None] * DP + kk[None, :]
        top_w, top_idx = _empty_lists(n, BLOCK_M, KP, K)
        for start in range(0, n, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            col_ok = cols < n
            b_base = y_ptr + tl.minimum(cols, n - 1).to(tl.int64)[None, :] * DP + kk[:, None]
            g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for k0 in range(0, DP, BK):
                a = tl.load(a_base + k0)
                b = tl.load(b_base + k0)
                if WIDEN:  # the interpreter's bf16 dot multiplies the bit patterns: widen (exactly) first
                    a = a.to(tl.float32)
                    b = b.to(tl.float32)
                if TF32 or WIDEN:
                    g = tl.dot(a, b, g, input_precision="tf32")
                else:
                    g = tl.dot(a, b, g)
            nj = tl.load(norm32_ptr + cols, mask=col_ok, other=0.0)
            valid = col_ok[None, :] & (cols[None, :] != rows[:, None])
            w = tl.where(valid, nj[None, :] - 2.0 * g, _INF)
            top_w, top_idx = _merge_tile(w, tl.where(valid, cols[None, :], _BIG), top_w, top_idx)
            q = tl.max(top_w, axis=1)
            reach = _reach(q, ni, ei, spread, u_key, grow, shrink)
            cand = valid & (w <= reach[:, None])
            if tl.max(tl.max(cand.to(tl.int32), axis=1), axis=0) > 0:
                ci = tl.where(cand, cols[None, :], _BIG)
                j = tl.min(ci, axis=1)
                while tl.max((j < _BIG).to(tl.int32), axis=0) > 0:
                    found = j < _BIG
                    tl.store(cand_ptr + local * C + count, j, mask=found & row_ok & (count < C))
                    count += found.to(tl.int32)
                    ci = tl.where(ci == j[:, None], _BIG, ci)
                    j = tl.min(ci, axis=1)
    else:
        count += C + 1  # the refinement runs the exact search
    tl.store(count_ptr + local, count, mask=row_ok)


@triton.jit
def _exact_keys(z_ptr, rows, cols, n, d, stride_n):
    """Exact float32 keys of rows (R,) against cols (R, W) or (1, W): the exact kernel's
    arithmetic (z_i - z_j, one fma per coordinate, coordinates in order, half inputs widened)."""
    a_base = z_ptr + tl.minimum(rows, n - 1).to(tl.int64) * stride_n
    b_base = z_ptr + tl.minimum(cols, n - 1).to(tl.int64) * stride_n
    acc = tl.zeros((rows.shape[0], cols.shape[1]), dtype=tl.float32)
    for c in range(0, d):
        a = tl.load(a_base + c).to(tl.float32)
        b = tl.load(b_base + c).to(tl.float32)
        diff = a[:, None] - b
        acc = tl.fma(diff, diff, acc)
    return acc


@triton.jit
def _rows_finite(z_ptr, rows, check, d, stride_n):
    """Whether each row holds only finite values (read only where `check`; True elsewhere)."""
    base = z_ptr + rows.to(tl.int64) * stride_n
    finite = check | (~check)
    for c in range(0, d):
        v = tl.load(base + c, mask=check, other=0.0)
        finite = finite & (tl.abs(v) < _INF)
    return finite


@triton.jit
def _mixed_refine_kernel(
    z_ptr,  # (N, d) contiguous input
    cand_ptr,  # (M, C) int32 candidates
    count_ptr,  # (M,) int32
    consts_ptr,  # (4,) float64, [3] = bad
    terms_ptr,  # kl_entropy: (M,) float64 output, log terms; KNN: (M, K) float32 distances, ascending
    nbr_ptr,  # kl_entropy: (M,) int64 output (STORE_NBR); KNN: (M, K) int64 indices
    weight_ptr,  # kl_entropy: (M,) float32 output (STORE_NBR)
    stats_ptr,  # (2,) int32 (COUNT): row blocks refined from candidates, row blocks searched exactly
    n,
    d,
    row_begin,
    row_end,
    stride_n,
    eps_bits,
    K: tl.constexpr,
    KP: tl.constexpr,
    C: tl.constexpr,
    STORE_NBR: tl.constexpr,
    KNN: tl.constexpr,  # emit the sorted lists as the knn kernel does
    COUNT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    rows = row_begin + tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < row_end
    local = (rows - row_begin).to(tl.int64)
    count = tl.load(count_ptr + local, mask=row_ok, other=0)
    exact = (tl.max(count, axis=0) > C) | (tl.load(consts_ptr + 3) != 0.0)
    top_key, top_idx = _empty_lists(n, BLOCK_M, KP, K)
    if exact:
        # The exact search of these rows (the exact kernel's loop; NaN keys read as +inf).
        for start in range(0, n, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            raw = _exact_keys(z_ptr, rows, cols[None, :], n, d, stride_n)
            ok = (cols < n)[None, :] & (cols[None, :] != rows[:, None])
            top_key, top_idx = _merge_tile(tl.where(ok & (raw == raw), raw, _INF), tl.where(ok, cols[None, :], _BIG),
                                      top_key, top_idx)  # fmt: skip
        if COUNT:
            tl.atomic_add(stats_ptr + 1, 1)
    else:
        slot = tl.arange(0, C)
        live = row_ok[:, None] & (slot[None, :] < count[:, None])
        cidx = tl.load(cand_ptr + local[:, None] * C + slot[None, :], mask=live, other=0)
        raw = _exact_keys(z_ptr, rows, cidx, n, d, stride_n)
        top_key, top_idx = _merge_tile(tl.where(live, raw, _INF), tl.where(live, cidx, _BIG), top_key, top_idx)
        if COUNT:
            tl.atomic_add(stats_ptr, 1)
    if KNN:
        # As the exact knn kernel: ascending (key, index); a key of +inf is NaN when either row
        # holds a NaN or inf, else an overflowing distance (only on the exact-search branch).
        own_finite = _rows_finite(z_ptr, rows, row_ok & (tl.max(top_key, axis=1) >= _INF), d, stride_n)
        real = (tl.arange(0, KP) < K)[None, :]
        keys = tl.where(real, top_key, _INF)
        idx = tl.where(real, top_idx, _BIG)
        out = local * K
        for q in range(0, K):
            mk, mi = _best(keys, idx)
            overflow = mk >= _INF
            finite = own_finite & _rows_finite(z_ptr, mi, row_ok & overflow, d, stride_n)
            dist = tl.where(overflow, tl.where(finite, _INF, float("nan")), tl.sqrt_rn(mk))
            tl.store(terms_ptr + out + q, dist, mask=row_ok)
            tl.store(nbr_ptr + out + q, mi.to(tl.int64), mask=row_ok)
            taken = idx == mi[:, None]
            keys = tl.where(taken, _INF, keys)
            idx = tl.where(taken, _BIG, idx)
    else:
        key, nbr = _worst(top_key, top_idx)
        eps = _f64_from_bits(eps_bits)
        tl.store(terms_ptr + local, _log_term(key, eps, 2), mask=row_ok)
        if STORE_NBR:
            tl.store(nbr_ptr + local, nbr.to(tl.int64), mask=row_ok)
            tl.store(weight_ptr + local, _weight(key, eps, 2, tl.float32), mask=row_ok)


# ---------------------------------------------------------------------------------------------
# Glue
# ---------------------------------------------------------------------------------------------

# Tests and benchmarks set COUNT_BLOCKS = True to count, per call, the row blocks refined from
# candidate lists and those that fell back to the exact search (device counters, read by stats()).
COUNT_BLOCKS = False
_STATS: list = []


def stats() -> tuple[int, int, int]:
    """(calls, row blocks refined from candidate lists, row blocks searched exactly) over the
    calls made while COUNT_BLOCKS was set."""
    refined = sum(int(s[0]) for s in _STATS)
    exact = sum(int(s[1]) for s in _STATS)
    return len(_STATS), refined, exact


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def kl_search(z, k, row_begin, row_end, eps_bits, terms, nbr, weights, *, wrap=None) -> None:
    """The self search of the kl_entropy op for the rows [row_begin, row_end) of z (N, d),
    contiguous: writes the per-row log terms, and (when nbr is not empty) the k-th neighbours and
    gradient weights, exactly as the exact search kernel does."""
    _search(z, k, row_begin, row_end, eps_bits, terms, nbr, weights, knn=False, wrap=wrap)


def knn_search(z, k, dist, idx, *, wrap=None) -> None:
    """The knn op's search of z (N, d), contiguous: writes the (N, k) ascending distances and
    indices, exactly as the exact knn kernel does."""
    _search(z, k, 0, int(z.shape[0]), 0, dist, idx, dist, knn=True, wrap=wrap)


def _search(z, k, row_begin, row_end, eps_bits, terms, nbr, weights, *, knn, wrap) -> None:
    n, d = (int(size) for size in z.shape)  # specialises symbolic sizes (torch.compile), as the glue does
    m = row_end - row_begin
    cfg = INTERPRETER_CONFIG if _interpreted() else GPU_CONFIG
    kp = 1 << max(0, (k - 1).bit_length())
    cap = capacity(k)
    prep = prepare(z)
    consts = host_constants(d)
    bits = [_f64_bits(consts[name]) for name in ("grow", "shrink", "err_rel", "err_abs")]
    cand = z.new_empty((m, cap), dtype=torch.int32)
    count = z.new_empty((m,), dtype=torch.int32)
    block_stats = z.new_zeros((2,), dtype=torch.int32)
    if COUNT_BLOCKS:
        _STATS.append(block_stats)

    def launch(kernel):
        return wrap(kernel) if wrap is not None else kernel

    dp = prep["dp"]
    launch(_mixed_candidates_kernel)[(triton.cdiv(m, cfg["BLOCK_M"]),)](
        prep["y"], prep["norm32"], prep["norm"], prep["delta"], prep["consts"], cand, count,
        n, row_begin, row_end, *bits,
        K=k, KP=kp, C=cap, DP=dp, BK=min(dp, 32), TF32=prep["y"].dtype == torch.float32,
        WIDEN=_interpreted() and prep["y"].dtype == torch.bfloat16,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"],
    )  # fmt: skip
    store_nbr = nbr.numel() > 0 and not knn
    launch(_mixed_refine_kernel)[(triton.cdiv(m, cfg["REFINE_M"]),)](
        z, cand, count, prep["consts"], terms, nbr if store_nbr or knn else terms, weights if store_nbr else terms,
        block_stats, n, d, row_begin, row_end, int(z.stride(0)), eps_bits,
        K=k, KP=kp, C=cap, STORE_NBR=store_nbr, KNN=knn, COUNT=COUNT_BLOCKS,
        BLOCK_M=cfg["REFINE_M"], BLOCK_N=cfg["REFINE_N"], num_warps=4,
    )  # fmt: skip


def _f64_bits(x: float) -> int:
    """A float64 as its int64 bit pattern (Triton would pass a Python float as float32)."""
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]
