"""Triton kernels of the fused Kozachenko–Leonenko entropy and of the k-nearest-neighbour search.

The op glue (argument checks, outputs, launch configurations, torch.library registration) is in
``triton_backend.py``; this module imports triton and is imported only by it, on first use.

Work mapping. A program owns BLOCK_M rows of z and streams all N rows as column tiles of BLOCK_N.
For each tile it accumulates the (BLOCK_M, BLOCK_N) tile of exact pair keys in registers, in fp32
(fp64 for fp64 inputs; half inputs are widened on load):

    key = sum_c (a_c - b_c)^2   (p = 2: the squared distance, no sqrt in the hot loop)
          sum_c |a_c - b_c|     (p = 1)
          max_c |a_c - b_c|     (p = inf; a NaN propagates)

never through ||a||^2 + ||b||^2 - 2<a, b>. Coordinates are accumulated one at a time, in order
(rank-1 updates of the register tile), p = 2 with an explicit fma: every pair's key is the same
sequence of roundings whatever the block sizes (so the autotuner's choice never changes a key, a
neighbour or a bit of the result) and whatever Triton's fusion setting (its default turns off in
Triton 3.10); the CUDA kernels use the same roundings (csrc/cuda/topk.cuh). A reduction over a
chunk of coordinates (tl.sum) would add them in an order that follows the block shape and the
register layout. Elsewhere (weights, gradients) the compiler may fuse multiply-adds, so those
agree with the CPU kernel to rounding, not bit for bit.

z is contiguous (the glue in triton_backend.py makes it so): stride_d is 1, which Triton
specialises away, so no int32 product of a coordinate and a stride can overflow; row offsets
are computed in int64.

Each row keeps a running top-k as a (BLOCK_M, KP) pair of register tensors (key, index), KP =
next power of two >= k, *unsorted*: a candidate displaces the row's current worst entry. The
order is lexicographic in (key, index), so ties go to the lower index exactly as on the CPU, and
the k-th neighbour is simply the worst entry at the end. NaN keys (a row holding NaN or inf)
order as +inf. Empty slots hold (+inf, N + slot) so any real candidate displaces them; padding
slots (k <= slot < KP) hold (-inf, -1 - slot) and are never the worst.

Gradient. Row i's term w(r_i) contributes (d/N) w(r_i) dr(z_i, z_{n_i}) to row i and the negative
to its neighbour n_i (the formula in eae_kernels.kl_entropy's docstring; w as in
csrc/core/kl_math.h). Two ways to apply the neighbour part:
  * atomics (_scatter_pairs, deterministic=False): the search program adds both parts to a
    zeroed gradient with float atomic adds;
  * gather (_gather_rows, deterministic=True, half inputs, and the small-batch kernel): a second
    pass where the program that owns row i sums w_j dr(z_i, z_j) over its own pair (j = n_i)
    and over every j with n_j = i, found by scanning the neighbour list, in ascending j. The
    weights w_j come from the search (a per-row buffer), never from a distance re-computed with
    a layout-dependent reduction. No atomics, every sum in a fixed order: the same bits from run
    to run and whatever the block sizes.

Kernels:
  _knn_kernel        (N, k) sorted distances and indices.
  _kl_search_kernel  per-row log terms (and the neighbour list and gradient weights, or with
                     SCATTER the atomic gradient) for the rows [row_begin, row_end).
  _sum_terms_kernel  one program: H from the per-row terms, in a fixed order.
  _kl_gather_kernel  the deterministic gradient from the neighbour list.
  _kl_small_kernel   one program does everything (search, H, gather): the small-batch path, one
                     launch, no atomics; its only scratch is the per-row terms and weights.

The norm is the constexpr NORM: 1, 2, or 0 for inf (the C++ core's Norm codes). Scalars that
need float64 (eps, the constant part of H, d/N) travel as their int64 bit patterns, because
Triton passes Python floats as float32.
"""

from __future__ import annotations

import triton
import triton.language as tl

# An index larger than any row: marks excluded candidates (self, padding columns).
_BIG = tl.constexpr(2**31 - 1)
_INF = tl.constexpr(float("inf"))
# (No NaN constant here: Triton checks that a global constexpr keeps its value across kernels,
# and NaN != NaN fails that check; kernels write float("nan") inline.)


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


@triton.jit
def _f64_from_bits(bits):
    """A float64 scalar passed as its int64 bit pattern."""
    return bits.to(tl.int64).to(tl.float64, bitcast=True)


@triton.jit
def _max_nan(a, b):
    """max that propagates NaN (tl.maximum's default leaves NaN handling to the hardware)."""
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _sign(x):
    """sign(x) with sign(0) = sign(NaN) = 0, as the CPU kernel."""
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))


@triton.jit
def _log_term(key, eps, NORM: tl.constexpr):
    """0.5 * log(r^2 + eps^2) in float64 from a key (squared distance for p = 2, else the
    distance); NaN for a non-finite distance. eps: float64 scalar."""
    k64 = key.to(tl.float64)
    if NORM == 2:
        r2 = k64
    else:
        r2 = k64 * k64
    term = 0.5 * tl.log(r2 + eps * eps)
    return tl.where(r2 < _INF, term, float("nan"))


@triton.jit
def _weight(key, eps, NORM: tl.constexpr, ACC: tl.constexpr):
    """d/dr of 0.5 log(r^2 + eps^2) in the form the direction multiplies (core/kl_math.h):
    1 / (r^2 + eps^2) for p = 2 (direction a - b), r / (r^2 + eps^2) for p = 1 and inf
    (direction sign(a - b)). NaN where the row's log term is not finite (non-finite input, or
    eps = 0 with a zero distance), as on the CPU."""
    e = eps.to(ACC)
    if NORM == 2:
        num = tl.full(key.shape, 1.0, ACC)
        den = key + e * e
    else:
        num = key
        den = key * key + e * e
    if ACC == tl.float32:
        w = tl.math.div_rn(num, den)  # IEEE division, as the CPU and CUDA (fp32 "/" is approximate)
    else:
        w = num / den  # fp64 division is IEEE already
    term = _log_term(key, eps, NORM)
    return tl.where((term > -_INF) & (term < _INF), w, float("nan"))


# ---------------------------------------------------------------------------------------------
# The search
# ---------------------------------------------------------------------------------------------


@triton.jit
def _tile_keys(
    z_ptr,  # (N, d) input, any strides
    rows,  # (BLOCK_M,) int32 row indices
    cols,  # (BLOCK_N,) int32 column (other row) indices
    n_rows,  # N: indices >= N are clamped
    d,  # number of coordinates
    stride_n,  # z.stride(0)
    stride_d,  # z.stride(1)
    NORM: tl.constexpr,  # 1, 2 or 0 (inf)
    ACC: tl.constexpr,  # accumulation dtype: tl.float32 or tl.float64
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """(BLOCK_M, BLOCK_N) exact pair keys, coordinates added in order. Rows/columns past the end
    are clamped to the last row (unmasked loads are cheaper in the hot loop); the caller discards
    their keys."""
    a_base = z_ptr + tl.minimum(rows, n_rows - 1).to(tl.int64) * stride_n
    b_base = z_ptr + tl.minimum(cols, n_rows - 1).to(tl.int64) * stride_n
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for c in range(0, d):
        a = tl.load(a_base + c * stride_d).to(ACC)
        b = tl.load(b_base + c * stride_d).to(ACC)
        diff = a[:, None] - b[None, :]
        if NORM == 2:
            acc = tl.fma(diff, diff, acc)  # explicit: the CPU kernel's fma, whatever the fusion setting
        elif NORM == 1:
            acc += tl.abs(diff)
        else:
            acc = _max_nan(acc, tl.abs(diff))
    return acc


@triton.jit
def _worst(top_key, top_idx):
    """The lexicographically largest (key, index) of each row's list: the k-th neighbour once
    the search is over."""
    wk = tl.max(top_key, axis=1)
    wi = tl.max(tl.where(top_key == wk[:, None], top_idx, -1), axis=1)
    return wk, wi


@triton.jit
def _best(keys, idx):
    """The lexicographically smallest (key, index) of each row."""
    mk = tl.min(keys, axis=1)
    mi = tl.min(tl.where(keys == mk[:, None], idx, _BIG), axis=1)
    return mk, mi


@triton.jit
def _key_to_distance(key, NORM: tl.constexpr, ACC: tl.constexpr):
    """A search key as the reported distance: the correctly rounded square root of the squared
    distance for L2, the key itself for L1 and Linf."""
    if NORM == 2:
        if ACC == tl.float64:
            return tl.sqrt(key)
        else:
            return tl.sqrt_rn(key)
    else:
        return key


@triton.jit
def _merge_tile(keys, cidx, top_key, top_idx):
    """Merges a tile of candidates (keys, cidx: (BLOCK_M, BLOCK_N); excluded ones are
    (+inf, _BIG)) into the running lists: while some row's best remaining candidate beats its
    worst entry, that candidate replaces it. At most k rounds; usually one comparison."""
    wk, wi = _worst(top_key, top_idx)
    mk, mi = _best(keys, cidx)
    better = (mk < wk) | ((mk == wk) & (mi < wi))
    while tl.max(better.to(tl.int32), axis=0) > 0:
        replace = better[:, None] & (top_key == wk[:, None]) & (top_idx == wi[:, None])
        top_key = tl.where(replace, mk[:, None], top_key)
        top_idx = tl.where(replace, mi[:, None], top_idx)
        taken = better[:, None] & (cidx == mi[:, None])
        keys = tl.where(taken, _INF, keys)
        cidx = tl.where(taken, _BIG, cidx)
        wk, wi = _worst(top_key, top_idx)
        mk, mi = _best(keys, cidx)
        better = (mk < wk) | ((mk == wk) & (mi < wi))
    return top_key, top_idx


@triton.jit
def _search_rows(
    z_ptr,
    rows,  # (BLOCK_M,) int32; rows >= N are allowed (their lists are garbage)
    n,
    d,
    stride_n,
    stride_d,
    K: tl.constexpr,
    KP: tl.constexpr,  # next power of two >= K
    NORM: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Each row's k nearest other rows, as the unsorted lists (top_key, top_idx): (BLOCK_M, KP)
    keys (NaN read as +inf) and int32 indices."""
    slot = tl.arange(0, KP)
    real = slot < K
    top_key = tl.zeros((BLOCK_M, KP), dtype=ACC) + tl.where(real, _INF, -_INF)[None, :].to(ACC)
    top_idx = tl.zeros((BLOCK_M, KP), dtype=tl.int32) + tl.where(real, n + slot, -1 - slot)[None, :]
    for start in range(0, n, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < n
        raw = _tile_keys(z_ptr, rows, cols, n, d, stride_n, stride_d, NORM, ACC, BLOCK_M, BLOCK_N)
        candidate = col_ok[None, :] & (cols[None, :] != rows[:, None])  # never the row itself
        keys = tl.where(candidate & (raw == raw), raw, _INF)
        cidx = tl.where(candidate, cols[None, :], _BIG)
        top_key, top_idx = _merge_tile(keys, cidx, top_key, top_idx)
    return top_key, top_idx


# ---------------------------------------------------------------------------------------------
# Gradient pieces
# ---------------------------------------------------------------------------------------------


@triton.jit
def _pair_gradient(zi, zj, w, dcol, valid, NORM: tl.constexpr):
    """w * d r(z_i, z_j) / d z_i (up to the weight's form, see _weight) for (B, DP) tiles of row
    pairs, zero where not `valid`. w: (B,) the pair's weight from the search. p = inf: the
    lowest coordinate of largest |z_i - z_j| only (a max is exact in any order). A NaN weight
    spreads over the whole row."""
    diff = zi - zj
    if NORM == 2:
        u = w[:, None] * diff
    elif NORM == 1:
        u = w[:, None] * _sign(diff)
    else:
        big = tl.reduce(tl.abs(diff), 1, _max_nan)
        at = tl.min(tl.where(tl.abs(diff) == big[:, None], dcol[None, :], _BIG), axis=1)
        u = w[:, None] * tl.where(dcol[None, :] == at[:, None], _sign(diff), 0.0)
    return tl.where(valid[:, None], u, 0.0)


@triton.jit
def _load_rows(z_ptr, rows, row_ok, dcol, d, stride_n, stride_d, ACC: tl.constexpr):
    """(B, DP) tile of whole rows, zeros outside."""
    ptrs = z_ptr + rows.to(tl.int64)[:, None] * stride_n + dcol[None, :] * stride_d
    return tl.load(ptrs, mask=row_ok[:, None] & (dcol < d)[None, :], other=0.0).to(ACC)


@triton.jit
def _gather_rows(
    z_ptr,
    nbr_ptr,  # (row_end - row_begin,) int64 k-th neighbour of each range row
    weight_ptr,  # (row_end - row_begin,) ACC gradient weight of each range row (_weight)
    grad_ptr,  # (N, d) contiguous output
    first_row,  # this step's rows are first_row + [0, BLOCK_G), any rows of z
    n,
    d,
    row_begin,
    row_end,
    stride_n,
    stride_d,
    scale,  # d / N in ACC
    NORM: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_N: tl.constexpr,  # neighbour-list entries scanned at once
    DP: tl.constexpr,  # next power of two >= d
):
    """Writes dH/dz for the rows first_row + [0, BLOCK_G): each row's own pair plus every pair
    whose k-th neighbour it is, summed in a fixed order (own first, then ascending source row).
    No atomics."""
    rows = first_row + tl.arange(0, BLOCK_G)
    row_ok = rows < n
    dcol = tl.arange(0, DP)
    zi = _load_rows(z_ptr, rows, row_ok, dcol, d, stride_n, stride_d, ACC)

    own = row_ok & (rows >= row_begin) & (rows < row_end)
    j = tl.load(nbr_ptr + (rows - row_begin), mask=own, other=0).to(tl.int32)
    w = tl.load(weight_ptr + (rows - row_begin), mask=own, other=0.0)
    g = _pair_gradient(zi, _load_rows(z_ptr, j, own, dcol, d, stride_n, stride_d, ACC), w, dcol, own, NORM)

    m = row_end - row_begin
    for r0 in range(0, m, BLOCK_N):
        r = r0 + tl.arange(0, BLOCK_N)
        target = tl.load(nbr_ptr + r, mask=r < m, other=-1).to(tl.int32)
        # Cheap 1-D test first: most chunks of the list point at none of these rows.
        hit = (target >= first_row) & (target < first_row + BLOCK_G)
        if tl.max(hit.to(tl.int32), axis=0) > 0:
            source = row_begin + r
            match = target[None, :] == rows[:, None]
            j = tl.min(tl.where(match, source[None, :], _BIG), axis=1)
            # One reverse neighbour per row per round; usually a single round.
            while tl.max((j < _BIG).to(tl.int32), axis=0) > 0:
                found = j < _BIG
                zj = _load_rows(z_ptr, j, found, dcol, d, stride_n, stride_d, ACC)
                wj = tl.load(weight_ptr + (j - row_begin), mask=found, other=0.0)
                g += _pair_gradient(zi, zj, wj, dcol, found, NORM)
                match = match & (source[None, :] != j[:, None])
                j = tl.min(tl.where(match, source[None, :], _BIG), axis=1)

    out = grad_ptr + rows.to(tl.int64)[:, None] * d + dcol[None, :]
    tl.store(out, (g * scale).to(grad_ptr.dtype.element_ty), mask=row_ok[:, None] & (dcol < d)[None, :])


@triton.jit
def _scatter_pairs(
    z_ptr,
    grad_ptr,  # (N, d) contiguous, zeroed before the launch
    rows,  # (BLOCK_M,) int32
    nbr,  # (BLOCK_M,) int32 k-th neighbour of each row
    row_ok,
    key,  # (BLOCK_M,) key of the k-th neighbour
    d,
    stride_n,
    stride_d,
    scale,  # d / N in ACC
    eps,
    NORM: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,  # coordinates per chunk
):
    """Adds u = (d/N) w dr(z_i, z_{n_i}) to row i and -u to row n_i with float atomics (relaxed:
    only the sum matters, nothing reads the gradient before the kernel ends)."""
    w = scale * _weight(key, eps, NORM, ACC)
    a_base = z_ptr + rows.to(tl.int64) * stride_n
    b_base = z_ptr + nbr.to(tl.int64) * stride_n
    ga = grad_ptr + rows.to(tl.int64) * d
    gb = grad_ptr + nbr.to(tl.int64) * d
    offs = tl.arange(0, BLOCK_D)
    if NORM == 0:
        # The lowest coordinate of largest |a - b|, then one element per row.
        best = tl.full((BLOCK_M,), -1.0, ACC)
        at = tl.zeros((BLOCK_M,), dtype=tl.int32)
        for c0 in range(0, d, BLOCK_D):
            c = c0 + offs
            ok = row_ok[:, None] & (c < d)[None, :]
            a = tl.load(a_base[:, None] + c[None, :] * stride_d, mask=ok, other=0.0).to(ACC)
            b = tl.load(b_base[:, None] + c[None, :] * stride_d, mask=ok, other=0.0).to(ACC)
            ad = tl.abs(a - b)
            chunk_max = tl.max(ad, axis=1)
            chunk_at = tl.min(tl.where(ad == chunk_max[:, None], c[None, :], _BIG), axis=1)
            newer = chunk_max > best
            best = tl.where(newer, chunk_max, best)
            at = tl.where(newer, chunk_at, at)
        a = tl.load(a_base + at * stride_d, mask=row_ok, other=0.0).to(ACC)
        b = tl.load(b_base + at * stride_d, mask=row_ok, other=0.0).to(ACC)
        u = w * _sign(a - b)
        tl.atomic_add(ga + at, u, mask=row_ok, sem="relaxed")
        tl.atomic_add(gb + at, -u, mask=row_ok, sem="relaxed")
    else:
        for c0 in range(0, d, BLOCK_D):
            c = c0 + offs
            ok = row_ok[:, None] & (c < d)[None, :]
            a = tl.load(a_base[:, None] + c[None, :] * stride_d, mask=ok, other=0.0).to(ACC)
            b = tl.load(b_base[:, None] + c[None, :] * stride_d, mask=ok, other=0.0).to(ACC)
            if NORM == 2:
                u = w[:, None] * (a - b)
            else:
                u = w[:, None] * _sign(a - b)
            tl.atomic_add(ga[:, None] + c[None, :], u, mask=ok, sem="relaxed")
            tl.atomic_add(gb[:, None] + c[None, :], -u, mask=ok, sem="relaxed")


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _rows_finite(z_ptr, rows, check, d, stride_n, stride_d):
    """Whether each row holds only finite values (read only where `check`; True elsewhere)."""
    base = z_ptr + rows.to(tl.int64) * stride_n
    finite = check | (~check)
    for c in range(0, d):
        v = tl.load(base + c * stride_d, mask=check, other=0.0)
        finite = finite & (tl.abs(v) < _INF)
    return finite


@triton.jit
def _knn_kernel(
    z_ptr,  # (N, d) input
    dist_ptr,  # (N, K) output distances, ascending
    idx_ptr,  # (N, K) int64 output indices
    n,
    d,
    stride_n,
    stride_d,
    n_bucket,  # autotuning key only (log2 of N)
    K: tl.constexpr,
    KP: tl.constexpr,
    NORM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    ACC = tl.float64 if z_ptr.dtype.element_ty == tl.float64 else tl.float32
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n
    top_key, top_idx = _search_rows(
        z_ptr, rows, n, d, stride_n, stride_d, K, KP, NORM, ACC, BLOCK_M, BLOCK_N
    )
    # A key of +inf is either a NaN read as +inf or a finite pair whose distance overflows: as on
    # the CPU, NaN when either row holds a NaN or inf, else +inf. (Rows are read only then.)
    own_finite = _rows_finite(z_ptr, rows, row_ok & (tl.max(top_key, axis=1) >= _INF), d, stride_n, stride_d)
    # Emit the list in ascending order: K rounds of "take the smallest".
    real = (tl.arange(0, KP) < K)[None, :]
    keys = tl.where(real, top_key, _INF)
    idx = tl.where(real, top_idx, _BIG)
    out = rows.to(tl.int64) * K
    for q in range(0, K):
        mk, mi = _best(keys, idx)
        dist = _key_to_distance(mk, NORM, ACC)
        overflow = mk >= _INF
        finite = own_finite & _rows_finite(z_ptr, mi, row_ok & overflow, d, stride_n, stride_d)
        dist = tl.where(overflow, tl.where(finite, _INF, float("nan")), dist)
        tl.store(dist_ptr + out + q, dist, mask=row_ok)
        tl.store(idx_ptr + out + q, mi.to(tl.int64), mask=row_ok)
        taken = idx == mi[:, None]
        keys = tl.where(taken, _INF, keys)
        idx = tl.where(taken, _BIG, idx)


@triton.jit
def _kl_search_kernel(
    z_ptr,  # (N, d) input
    terms_ptr,  # (M,) float64 output: each range row's log term
    nbr_ptr,  # (M,) int64 output: each range row's k-th neighbour (STORE_NBR)
    weight_ptr,  # (M,) ACC output: each range row's gradient weight (STORE_WEIGHT)
    grad_ptr,  # (N, d) zeroed gradient (SCATTER)
    n,
    d,
    row_begin,
    row_end,
    stride_n,
    stride_d,
    eps_bits,  # float64 eps as int64 bits
    scale_bits,  # float64 d / N as int64 bits
    n_bucket,  # autotuning key only
    K: tl.constexpr,
    KP: tl.constexpr,
    NORM: tl.constexpr,
    STORE_NBR: tl.constexpr,
    STORE_WEIGHT: tl.constexpr,  # for the gather kernel
    SCATTER: tl.constexpr,  # add the gradient with atomics
    EPI_D: tl.constexpr,  # coordinates per chunk in the atomic epilogue
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    ACC = tl.float64 if z_ptr.dtype.element_ty == tl.float64 else tl.float32
    rows = row_begin + tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < row_end
    top_key, top_idx = _search_rows(
        z_ptr, rows, n, d, stride_n, stride_d, K, KP, NORM, ACC, BLOCK_M, BLOCK_N
    )
    key, nbr = _worst(top_key, top_idx)
    eps = _f64_from_bits(eps_bits)
    local = rows - row_begin
    tl.store(terms_ptr + local, _log_term(key, eps, NORM), mask=row_ok)
    if STORE_NBR:
        tl.store(nbr_ptr + local, nbr.to(tl.int64), mask=row_ok)
    if STORE_WEIGHT:
        tl.store(weight_ptr + local, _weight(key, eps, NORM, ACC), mask=row_ok)
    if SCATTER:
        scale = _f64_from_bits(scale_bits).to(ACC)
        _scatter_pairs(
            z_ptr, grad_ptr, rows, nbr, row_ok, key, d, stride_n, stride_d, scale, eps, NORM, ACC, BLOCK_M, EPI_D
        )


@triton.jit
def _sum_terms(terms_ptr, m, const_bits, scale_bits, BLOCK: tl.constexpr):
    """constant + (d/N) * sum(terms), in float64: slot s % BLOCK collects terms s in ascending s,
    then one fixed-shape reduction. Both H kernels call this with the same BLOCK and num_warps,
    so the tiled and the small-batch paths sum in the same order."""
    acc = tl.zeros((BLOCK,), dtype=tl.float64)
    for s in range(0, m, BLOCK):
        offs = s + tl.arange(0, BLOCK)
        acc += tl.load(terms_ptr + offs, mask=offs < m, other=0.0)
    return _f64_from_bits(const_bits) + _f64_from_bits(scale_bits) * tl.sum(acc, axis=0)


@triton.jit
def _sum_terms_kernel(
    terms_ptr,  # (M,) float64 log terms
    h_ptr,  # 0-dim output
    m,
    const_bits,  # float64 constant part of H (0 unless the range holds row 0) as int64 bits
    scale_bits,  # float64 d / N as int64 bits
    BLOCK: tl.constexpr,
):
    """h = constant + (d/N) * sum(terms), summed in the same order on every run."""
    h = _sum_terms(terms_ptr, m, const_bits, scale_bits, BLOCK)
    tl.store(h_ptr, h.to(h_ptr.dtype.element_ty))


@triton.jit
def _kl_gather_kernel(
    z_ptr,
    nbr_ptr,  # (M,) int64 neighbour list from _kl_search_kernel
    weight_ptr,  # (M,) ACC gradient weights from _kl_search_kernel
    grad_ptr,  # (N, d) output, fully written
    n,
    d,
    row_begin,
    row_end,
    stride_n,
    stride_d,
    scale_bits,
    NORM: tl.constexpr,
    BLOCK_G: tl.constexpr,  # rows per program
    BLOCK_N: tl.constexpr,
    DP: tl.constexpr,
):
    ACC = tl.float64 if z_ptr.dtype.element_ty == tl.float64 else tl.float32
    scale = _f64_from_bits(scale_bits).to(ACC)
    _gather_rows(
        z_ptr, nbr_ptr, weight_ptr, grad_ptr, tl.program_id(0) * BLOCK_G, n, d, row_begin, row_end, stride_n,
        stride_d, scale, NORM, ACC, BLOCK_G, BLOCK_N, DP,
    )


@triton.jit
def _kl_small_kernel(
    z_ptr,
    h_ptr,  # 0-dim output
    terms_ptr,  # (M,) float64 scratch: the per-row log terms
    nbr_ptr,  # (M,) int64 output (COMPUTE_GRAD)
    weight_ptr,  # (M,) ACC scratch: the per-row gradient weights (COMPUTE_GRAD)
    grad_ptr,  # (N, d) output (COMPUTE_GRAD), fully written
    n,
    d,
    row_begin,
    row_end,
    stride_n,
    stride_d,
    eps_bits,
    const_bits,
    scale_bits,
    n_bucket,  # autotuning key only
    K: tl.constexpr,
    KP: tl.constexpr,
    NORM: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
    BLOCK_G: tl.constexpr,
    GATHER_SCAN: tl.constexpr,  # neighbour-list entries scanned at once (not tuned: fixed order)
    SUM_BLOCK: tl.constexpr,  # the H reduction's width, as _sum_terms_kernel's
    DP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """The small-batch path: ONE program computes H and the whole dH/dz (launch with grid (1,)).
    Phase 1 searches the range rows block by block (writing terms, neighbours and weights),
    phase 2 sums H as _sum_terms_kernel does and gathers the gradient of every row. No atomics.
    The tuned block sizes change only how rows are grouped, never the order of a sum."""
    ACC = tl.float64 if z_ptr.dtype.element_ty == tl.float64 else tl.float32
    eps = _f64_from_bits(eps_bits)
    for r0 in range(row_begin, row_end, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        row_ok = rows < row_end
        top_key, top_idx = _search_rows(
            z_ptr, rows, n, d, stride_n, stride_d, K, KP, NORM, ACC, BLOCK_M, BLOCK_N
        )
        key, nbr = _worst(top_key, top_idx)
        tl.store(terms_ptr + (rows - row_begin), _log_term(key, eps, NORM), mask=row_ok)
        if COMPUTE_GRAD:
            tl.store(nbr_ptr + (rows - row_begin), nbr.to(tl.int64), mask=row_ok)
            tl.store(weight_ptr + (rows - row_begin), _weight(key, eps, NORM, ACC), mask=row_ok)
    tl.debug_barrier()  # what phase 1 wrote is read by every thread below
    h = _sum_terms(terms_ptr, row_end - row_begin, const_bits, scale_bits, SUM_BLOCK)
    tl.store(h_ptr, h.to(h_ptr.dtype.element_ty))
    if COMPUTE_GRAD:
        scale = _f64_from_bits(scale_bits).to(ACC)
        for g0 in range(0, n, BLOCK_G):
            _gather_rows(
                z_ptr, nbr_ptr, weight_ptr, grad_ptr, g0, n, d, row_begin, row_end, stride_n, stride_d, scale,
                NORM, ACC, BLOCK_G, GATHER_SCAN, DP,
            )


# ---------------------------------------------------------------------------------------------
# Batches of sets: query rows x against reference rows y (or x itself), ragged lengths
# ---------------------------------------------------------------------------------------------
#
# The estimator family (kl_entropy_sets, kl_cross_entropy, kl_divergence, koleo, knn_sets) on
# padded batches x (B, Mx, d), y (B, Ny, d), contiguous, with optional int64 lengths (B,): set b
# is x[b, :lengths_x[b]] (rows past it are ignored and get a zero gradient). Per set and query
# row i (rows [row_begin, row_end) of the set; the whole set unless a KoLeo row range):
#
#   SELF:  the k-th nearest *other* row of x (excluded by index), term t_s(i), weight w_s(i)
#   CROSS: the k-th nearest row of y, term t_c(i), weight w_c(i)
#
# with the same search, keys, tie-break and NaN rules as the single-set kernels above, and
#
#   value = constant + scale * (SELF_SIGN * sum_i t_s(i) + sum_i t_c(i))
#
# each search's terms summed on their own in a fixed order (_sum_terms' order), as the CPU's
# estimate(). The constant and scale depend on the set's lengths, so they are formed in the
# kernel (csrc/core/kl_math.h's estimate_spec): the digamma series is evaluated in float64 with
# the same operations as digamma_int. The gradient is always gathered (no atomics): row i of x
# sums, in this order, its own self pair, the self pairs that chose it (ascending source row) and
# its own cross pair; row j of y sums the cross pairs that chose it (ascending source row). The
# weights carry the estimator's sign. Every per-row buffer is (B, Mx), indexed by the set's row.
#
# Launch structure: every kernel covers the whole batch in one launch, on a flat grid (set, row
# block) decoded as pid // blocks_per_set, pid % blocks_per_set (no 65,535 limit on either):
#   _sets_search_kernel  (B * cdiv(Mx, BLOCK_M),)   search, terms, neighbours, weights
#   _sets_value_kernel   (B,)                       each set's value
#   _sets_gather_kernel  (B * cdiv(Mx or Ny, BLOCK_G),)  gradient of x rows, or of y rows
#   _sets_small_kernel   (B,)                       one program per set does all of the above
#   _knn_sets_kernel     (B * cdiv(Mx, BLOCK_M),)   sorted distances and indices

# Terms: 0 the Kozachenko-Leonenko 0.5 log(r^2 + eps^2), 1 KoLeo's log(r + eps).
_TERM_KOLEO = tl.constexpr(1)
# Estimators (the value's constant): 0 entropy, 1 cross-entropy, 2 divergence, 3 KoLeo.
_EST_ENTROPY = tl.constexpr(0)
_EST_CROSS = tl.constexpr(1)
_EST_DIVERGENCE = tl.constexpr(2)
_EST_KOLEO = tl.constexpr(3)


@triton.jit
def _digamma_int(n, euler_bits):
    """psi(n) for an integer n >= 1 in float64, with the operations of kl_math.h's digamma_int:
    the harmonic sum below 20, the asymptotic series from 20 on. (Python float literals would be
    rounded to float32 here: the series' coefficients are float64 divisions of exact integers,
    as C++ folds them, and Euler's constant comes as its bit pattern.)"""
    one = tl.full((), 1.0, tl.float64)
    x = one * n
    x2 = one / (x * x)
    series = tl.log(x) - 0.5 / x - x2 * (
        one / 12.0 - x2 * (one / 120.0 - x2 * (one / 252.0 - x2 * (one / 240.0 - x2 * (one / 132.0))))
    )
    harmonic = -_f64_from_bits(euler_bits)
    for j in range(1, tl.minimum(n, 20)):
        harmonic += one / j
    return tl.where(n < 20, harmonic, series)


@triton.jit
def _set_lengths(lx_ptr, ly_ptr, b, mx, ny, HAS_LX: tl.constexpr, HAS_LY: tl.constexpr):
    """(valid rows of x, valid rows of y) of set b."""
    if HAS_LX:  # clamped to [0, Mx]: a bad length cannot read out of bounds
        m = tl.minimum(tl.maximum(tl.load(lx_ptr + b), 0), mx).to(tl.int32)
    else:
        m = tl.zeros((), tl.int32) + mx
    if HAS_LY:
        n = tl.minimum(tl.maximum(tl.load(ly_ptr + b), 0), ny).to(tl.int32)
    else:
        n = tl.zeros((), tl.int32) + ny
    return m, n


@triton.jit
def _set_row_range(m, row_begin, row_end):
    """The query rows [rb, re) of a set of m valid rows (row_end < 0: up to m)."""
    return row_begin, tl.where(row_end < 0, m, row_end)


@triton.jit
def _pair_keys(
    a_ptr,  # (rows, d) contiguous: the query rows
    b_ptr,  # (cols, d) contiguous: the candidate rows
    rows,  # (BLOCK_M,) int32
    cols,  # (BLOCK_N,) int32
    n_a,  # rows of a (indices clamped to [0, n_a - 1])
    n_b,  # rows of b (indices clamped to [0, n_b - 1])
    d,
    NORM: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """_tile_keys between two row sets: the same exact keys, coordinates added in order (p = 2
    with an explicit fma), clamped unmasked loads."""
    a_base = a_ptr + tl.maximum(tl.minimum(rows, n_a - 1), 0).to(tl.int64) * d
    b_base = b_ptr + tl.maximum(tl.minimum(cols, n_b - 1), 0).to(tl.int64) * d
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for c in range(0, d):
        a = tl.load(a_base + c).to(ACC)
        b = tl.load(b_base + c).to(ACC)
        diff = a[:, None] - b[None, :]
        if NORM == 2:
            acc = tl.fma(diff, diff, acc)
        elif NORM == 1:
            acc += tl.abs(diff)
        else:
            acc = _max_nan(acc, tl.abs(diff))
    return acc


@triton.jit
def _search_in(
    q_ptr,  # this set's query rows (Mx, d)
    r_ptr,  # this set's candidate rows (x itself or y)
    rows,  # (BLOCK_M,) int32 query rows
    n_q,  # valid query rows (for the clamp)
    n,  # candidate rows: columns [0, n)
    d,
    EXCLUDE_SELF: tl.constexpr,  # the self search: row i is not its own candidate
    K: tl.constexpr,
    KP: tl.constexpr,
    NORM: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """_search_rows between two row sets: each query row's k nearest candidates, unsorted
    (BLOCK_M, KP) keys (NaN read as +inf) and int32 indices; empty slots (+inf, n + slot)."""
    slot = tl.arange(0, KP)
    real = slot < K
    top_key = tl.zeros((BLOCK_M, KP), dtype=ACC) + tl.where(real, _INF, -_INF)[None, :].to(ACC)
    top_idx = tl.zeros((BLOCK_M, KP), dtype=tl.int32) + tl.where(real, n + slot, -1 - slot)[None, :]
    for start in range(0, n, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        raw = _pair_keys(q_ptr, r_ptr, rows, cols, n_q, n, d, NORM, ACC, BLOCK_M, BLOCK_N)
        candidate = (cols < n)[None, :]
        if EXCLUDE_SELF:
            candidate = candidate & (cols[None, :] != rows[:, None])
        keys = tl.where(candidate & (raw == raw), raw, _INF)
        # (BLOCK_M, BLOCK_N) even where `candidate` does not depend on the row (the cross search)
        cidx = tl.where(candidate, tl.broadcast_to(cols[None, :], (BLOCK_M, BLOCK_N)), _BIG)
        top_key, top_idx = _merge_tile(keys, cidx, top_key, top_idx)
    return top_key, top_idx


@triton.jit
def _koleo_term(key, eps):
    """log(r + eps) in float64 from a squared distance; NaN for a non-finite distance."""
    k64 = key.to(tl.float64)
    return tl.where(k64 < _INF, tl.log(tl.sqrt(k64) + eps), float("nan"))


@triton.jit
def _koleo_weight(key, eps, ACC: tl.constexpr):
    """d/dr log(r + eps) / r (multiplies the direction a - b); 0 for coincident rows; NaN where
    the term is not finite (kl_math.h's koleo_gradient_weight)."""
    e = eps.to(ACC)
    if ACC == tl.float32:
        r = tl.sqrt_rn(key)
        w = tl.math.div_rn(tl.full(key.shape, 1.0, ACC), (r + e) * r)
    else:
        r = tl.sqrt(key)
        w = 1.0 / ((r + e) * r)
    w = tl.where(key > 0, w, 0.0)
    term = _koleo_term(key, eps)
    return tl.where((term > -_INF) & (term < _INF), w, float("nan"))


@triton.jit
def _term_and_weight(key, eps, sign, TERM: tl.constexpr, NORM: tl.constexpr, ACC: tl.constexpr):
    if TERM == _TERM_KOLEO:
        return _koleo_term(key, eps), sign * _koleo_weight(key, eps, ACC)
    else:
        return _log_term(key, eps, NORM), sign * _weight(key, eps, NORM, ACC)


@triton.jit
def _sum_block(terms_ptr, m, BLOCK: tl.constexpr):
    """sum(terms[0:m]) in float64, in _sum_terms' order (slot s % BLOCK, then one reduction)."""
    acc = tl.zeros((BLOCK,), dtype=tl.float64)
    for s in range(0, m, BLOCK):
        offs = s + tl.arange(0, BLOCK)
        acc += tl.load(terms_ptr + offs, mask=offs < m, other=0.0)
    return tl.sum(acc, axis=0)


@triton.jit
def _set_search_block(
    x_set,  # set b of x (Mx, d)
    y_set,  # set b of y (Ny, d) (CROSS)
    rows,  # (BLOCK_M,) int32 rows of the set
    m,  # valid rows of x
    n,  # valid rows of y
    mx,  # padded rows of x
    rb,
    re,  # the query rows [rb, re)
    d,
    eps,  # float64
    terms_s,  # this set's (Mx,) buffers: float64 terms, int64 neighbours, ACC signed weights
    terms_c,
    nbr_s,
    nbr_c,
    w_s,
    w_c,
    SELF: tl.constexpr,
    CROSS: tl.constexpr,
    SELF_SIGN: tl.constexpr,  # 1, or -1 for the divergence
    STORE_NBR: tl.constexpr,
    STORE_WEIGHT: tl.constexpr,
    TERM: tl.constexpr,
    K: tl.constexpr,
    KP: tl.constexpr,
    NORM: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One row block of one set: the self and/or the cross search (in the same program, while
    the block's rows are in cache), then each row's term, neighbour and signed weight. Rows of
    the padded set outside [rb, re) get neighbour -1; a block without a query row searches
    nothing."""
    row_ok = (rows >= rb) & (rows < re)
    in_set = rows < mx
    any_row = tl.max(row_ok.to(tl.int32), axis=0) > 0
    if SELF:
        top_key, top_idx = _search_in(
            x_set, x_set, rows, m, tl.where(any_row, m, 0), d, True, K, KP, NORM, ACC, BLOCK_M, BLOCK_N
        )
        key, nbr = _worst(top_key, top_idx)
        term, w = _term_and_weight(key, eps, SELF_SIGN, TERM, NORM, ACC)
        tl.store(terms_s + rows, term, mask=row_ok)
        if STORE_NBR:
            tl.store(nbr_s + rows, tl.where(row_ok, nbr, -1).to(tl.int64), mask=in_set)
        if STORE_WEIGHT:
            tl.store(w_s + rows, w, mask=row_ok)
    if CROSS:
        top_key, top_idx = _search_in(
            x_set, y_set, rows, m, tl.where(any_row, n, 0), d, False, K, KP, NORM, ACC, BLOCK_M, BLOCK_N
        )
        key, nbr = _worst(top_key, top_idx)
        term, w = _term_and_weight(key, eps, 1, TERM, NORM, ACC)
        tl.store(terms_c + rows, term, mask=row_ok)
        if STORE_NBR:
            tl.store(nbr_c + rows, tl.where(row_ok, nbr, -1).to(tl.int64), mask=in_set)
        if STORE_WEIGHT:
            tl.store(w_c + rows, w, mask=row_ok)


@triton.jit
def _set_value(
    terms_s,
    terms_c,
    m,
    n,
    rb,
    re,
    d,
    logv_bits,  # float64 log V(d, p) as int64 bits
    euler_bits,  # float64 Euler's constant as int64 bits
    EST: tl.constexpr,
    SELF: tl.constexpr,
    CROSS: tl.constexpr,
    SELF_SIGN: tl.constexpr,
    SUM_BLOCK: tl.constexpr,
    K: tl.constexpr,
):
    """(value, scale) of one set, as kl_math.h's estimate_spec and the CPU's estimate():
    constant + scale * (SELF_SIGN * sum t_s + sum t_c), each sum in _sum_block's order."""
    one = tl.full((), 1.0, tl.float64)
    if EST == _EST_KOLEO:
        scale = -one / m
        constant = 0.0 * one
    else:
        scale = (one * d) / m
        psi_k = _digamma_int(tl.zeros((), tl.int32) + K, euler_bits)
        if EST == _EST_ENTROPY:
            constant = _digamma_int(m, euler_bits) - psi_k + _f64_from_bits(logv_bits)
        elif EST == _EST_CROSS:
            constant = _digamma_int(n + 1, euler_bits) - psi_k + _f64_from_bits(logv_bits)
        else:  # _EST_DIVERGENCE
            constant = _digamma_int(n + 1, euler_bits) - _digamma_int(m, euler_bits)
    total = 0.0 * one
    if SELF:
        total = SELF_SIGN * _sum_block(terms_s + rb, re - rb, SUM_BLOCK)
    if CROSS:
        total = total + _sum_block(terms_c + rb, re - rb, SUM_BLOCK)
    return constant + scale * total, scale


@triton.jit
def _own_pair(g, zi, rows, own, ref_set, nbr_ptr, w_ptr, d, dcol, NORM: tl.constexpr, ACC: tl.constexpr):
    """g + each own row's pair gradient with its neighbour in ref_set."""
    j = tl.load(nbr_ptr + rows, mask=own, other=0).to(tl.int32)
    w = tl.load(w_ptr + rows, mask=own, other=0.0)
    zj = _load_rows(ref_set, j, own, dcol, d, d, 1, ACC)
    return g + _pair_gradient(zi, zj, w, dcol, own, NORM)


@triton.jit
def _reverse_pairs(
    g,
    zi,  # (BLOCK_G, DP) the rows being written
    rows,  # (BLOCK_G,) their indices, first_row + [0, BLOCK_G)
    first_row,
    src_set,  # the query rows (x) whose neighbour lists are scanned
    nbr_ptr,  # (Mx,) neighbour of each query row
    w_ptr,  # (Mx,) signed weight of each query row
    rb,
    re,  # the query rows [rb, re)
    d,
    dcol,
    NORM: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """g + the pairs whose neighbour is one of `rows`, in ascending source row (_gather_rows'
    scan: fixed order, no atomics)."""
    for r0 in range(rb, re, BLOCK_N):
        source = r0 + tl.arange(0, BLOCK_N)
        target = tl.load(nbr_ptr + source, mask=source < re, other=-1).to(tl.int32)
        hit = (target >= first_row) & (target < first_row + BLOCK_G)
        if tl.max(hit.to(tl.int32), axis=0) > 0:
            match = target[None, :] == rows[:, None]
            j = tl.min(tl.where(match, source[None, :], _BIG), axis=1)
            while tl.max((j < _BIG).to(tl.int32), axis=0) > 0:
                found = j < _BIG
                zj = _load_rows(src_set, j, found, dcol, d, d, 1, ACC)
                wj = tl.load(w_ptr + j, mask=found, other=0.0)
                g += _pair_gradient(zi, zj, wj, dcol, found, NORM)
                match = match & (source[None, :] != j[:, None])
                j = tl.min(tl.where(match, source[None, :], _BIG), axis=1)
    return g


@triton.jit
def _set_gather_block(
    x_set,
    y_set,
    grad_set,  # this set's gradient output (x's (Mx, d) or y's (Ny, d)), fully written
    first_row,
    m,  # valid rows of x
    n,  # valid rows of y
    padded,  # padded rows of the set written (Mx or Ny)
    rb,
    re,
    d,
    scale,  # ACC
    nbr_s,
    w_s,
    nbr_c,
    w_c,
    OF_Y: tl.constexpr,  # write y's gradient (the cross pairs that chose each y row)
    SELF: tl.constexpr,
    CROSS: tl.constexpr,
    NORM: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DP: tl.constexpr,
):
    """The gradient of rows first_row + [0, BLOCK_G) of x (own self pair, self pairs that chose
    it, own cross pair: the CPU's order) or of y; zero for padded rows."""
    rows = first_row + tl.arange(0, BLOCK_G)
    dcol = tl.arange(0, DP)
    g = tl.zeros((BLOCK_G, DP), dtype=ACC)
    if OF_Y:
        zi = _load_rows(y_set, rows, rows < n, dcol, d, d, 1, ACC)
        g = _reverse_pairs(g, zi, rows, first_row, x_set, nbr_c, w_c, rb, re, d, dcol, NORM, ACC, BLOCK_G, BLOCK_N)
    else:
        zi = _load_rows(x_set, rows, rows < m, dcol, d, d, 1, ACC)
        own = (rows >= rb) & (rows < re)
        if SELF:
            g = _own_pair(g, zi, rows, own, x_set, nbr_s, w_s, d, dcol, NORM, ACC)
            g = _reverse_pairs(g, zi, rows, first_row, x_set, nbr_s, w_s, rb, re, d, dcol, NORM, ACC, BLOCK_G, BLOCK_N)
        if CROSS:
            g = _own_pair(g, zi, rows, own, y_set, nbr_c, w_c, d, dcol, NORM, ACC)
    out = grad_set + rows.to(tl.int64)[:, None] * d + dcol[None, :]
    tl.store(out, (g * scale).to(grad_set.dtype.element_ty), mask=(rows < padded)[:, None] & (dcol < d)[None, :])


@triton.jit
def _sets_search_kernel(
    x_ptr,  # (B, Mx, d) contiguous
    y_ptr,  # (B, Ny, d) contiguous (CROSS; else any tensor)
    lx_ptr,  # (B,) int64 lengths of x (HAS_LX)
    ly_ptr,  # (B,) int64 lengths of y (HAS_LY)
    terms_s_ptr,  # (B, Mx) float64
    terms_c_ptr,
    nbr_s_ptr,  # (B, Mx) int64
    nbr_c_ptr,
    w_s_ptr,  # (B, Mx) ACC
    w_c_ptr,
    mx,
    ny,
    d,
    row_begin,
    row_end,  # the query rows of every set ([0, -1): the whole set)
    eps_bits,
    n_bucket,  # autotuning key only
    K: tl.constexpr,
    KP: tl.constexpr,
    NORM: tl.constexpr,
    SELF: tl.constexpr,
    CROSS: tl.constexpr,
    SELF_SIGN: tl.constexpr,
    STORE_NBR: tl.constexpr,
    STORE_WEIGHT: tl.constexpr,
    TERM: tl.constexpr,
    HAS_LX: tl.constexpr,
    HAS_LY: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Grid (B * cdiv(Mx, BLOCK_M),): program = (set, row block)."""
    ACC = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    blocks = tl.cdiv(mx, BLOCK_M)
    pid = tl.program_id(0)
    b = pid // blocks
    rows = (pid % blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    m, n = _set_lengths(lx_ptr, ly_ptr, b, mx, ny, HAS_LX, HAS_LY)
    rb, re = _set_row_range(m, row_begin, row_end)
    per_row = b.to(tl.int64) * mx
    _set_search_block(
        x_ptr + per_row * d, y_ptr + b.to(tl.int64) * ny * d, rows, m, n, mx, rb, re, d, _f64_from_bits(eps_bits),
        terms_s_ptr + per_row, terms_c_ptr + per_row, nbr_s_ptr + per_row, nbr_c_ptr + per_row, w_s_ptr + per_row,
        w_c_ptr + per_row, SELF, CROSS, SELF_SIGN, STORE_NBR, STORE_WEIGHT, TERM, K, KP, NORM, ACC, BLOCK_M, BLOCK_N,
    )


@triton.jit
def _sets_value_kernel(
    lx_ptr,
    ly_ptr,
    terms_s_ptr,
    terms_c_ptr,
    value_ptr,  # (B,) output
    mx,
    ny,
    d,
    row_begin,
    row_end,
    logv_bits,
    euler_bits,
    EST: tl.constexpr,
    SELF: tl.constexpr,
    CROSS: tl.constexpr,
    SELF_SIGN: tl.constexpr,
    HAS_LX: tl.constexpr,
    HAS_LY: tl.constexpr,
    SUM_BLOCK: tl.constexpr,
    K: tl.constexpr,
):
    """Grid (B,): each set's value from its terms."""
    b = tl.program_id(0)
    m, n = _set_lengths(lx_ptr, ly_ptr, b, mx, ny, HAS_LX, HAS_LY)
    rb, re = _set_row_range(m, row_begin, row_end)
    per_row = b.to(tl.int64) * mx
    value, _scale = _set_value(
        terms_s_ptr + per_row, terms_c_ptr + per_row, m, n, rb, re, d, logv_bits, euler_bits, EST, SELF, CROSS,
        SELF_SIGN, SUM_BLOCK, K,
    )
    tl.store(value_ptr + b, value.to(value_ptr.dtype.element_ty))


@triton.jit
def _sets_gather_kernel(
    x_ptr,
    y_ptr,
    lx_ptr,
    ly_ptr,
    grad_ptr,  # (B, Mx, d) for x or (B, Ny, d) for y (OF_Y)
    nbr_s_ptr,
    w_s_ptr,
    nbr_c_ptr,
    w_c_ptr,
    mx,
    ny,
    d,
    row_begin,
    row_end,
    EST: tl.constexpr,
    OF_Y: tl.constexpr,
    SELF: tl.constexpr,
    CROSS: tl.constexpr,
    HAS_LX: tl.constexpr,
    HAS_LY: tl.constexpr,
    NORM: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DP: tl.constexpr,
):
    """Grid (B * cdiv(Mx or Ny, BLOCK_G),): program = (set, block of gradient rows)."""
    ACC = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    padded = ny if OF_Y else mx
    blocks = tl.cdiv(padded, BLOCK_G)
    pid = tl.program_id(0)
    b = pid // blocks
    first_row = (pid % blocks) * BLOCK_G
    m, n = _set_lengths(lx_ptr, ly_ptr, b, mx, ny, HAS_LX, HAS_LY)
    rb, re = _set_row_range(m, row_begin, row_end)
    one = tl.full((), 1.0, tl.float64)
    scale = (-one / m) if EST == _EST_KOLEO else ((one * d) / m)
    per_row = b.to(tl.int64) * mx
    _set_gather_block(
        x_ptr + per_row * d, y_ptr + b.to(tl.int64) * ny * d, grad_ptr + b.to(tl.int64) * padded * d, first_row, m,
        n, padded, rb, re, d, scale.to(ACC), nbr_s_ptr + per_row, w_s_ptr + per_row, nbr_c_ptr + per_row,
        w_c_ptr + per_row, OF_Y, SELF, CROSS, NORM, ACC, BLOCK_G, BLOCK_N, DP,
    )


@triton.jit
def _sets_small_kernel(
    x_ptr,
    y_ptr,
    lx_ptr,
    ly_ptr,
    value_ptr,  # (B,) output
    gx_ptr,  # (B, Mx, d) output (COMPUTE_GRAD)
    gy_ptr,  # (B, Ny, d) output (COMPUTE_GRAD and CROSS)
    terms_s_ptr,  # (B, Mx) scratch, and the per-row buffers as in _sets_search_kernel
    terms_c_ptr,
    nbr_s_ptr,
    nbr_c_ptr,
    w_s_ptr,
    w_c_ptr,
    mx,
    ny,
    d,
    row_begin,
    row_end,
    eps_bits,
    logv_bits,
    euler_bits,
    n_bucket,  # autotuning key only
    K: tl.constexpr,
    KP: tl.constexpr,
    NORM: tl.constexpr,
    EST: tl.constexpr,
    SELF: tl.constexpr,
    CROSS: tl.constexpr,
    SELF_SIGN: tl.constexpr,
    STORE_NBR: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
    TERM: tl.constexpr,
    HAS_LX: tl.constexpr,
    HAS_LY: tl.constexpr,
    BLOCK_G: tl.constexpr,
    GATHER_SCAN: tl.constexpr,
    SUM_BLOCK: tl.constexpr,
    DP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """The small-set path: grid (B,), ONE program per set does its search, value and gradient
    (the three tiled kernels' code, in the same order: the same bits)."""
    ACC = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    b = tl.program_id(0)
    m, n = _set_lengths(lx_ptr, ly_ptr, b, mx, ny, HAS_LX, HAS_LY)
    rb, re = _set_row_range(m, row_begin, row_end)
    per_row = b.to(tl.int64) * mx
    x_set = x_ptr + per_row * d
    y_set = y_ptr + b.to(tl.int64) * ny * d
    eps = _f64_from_bits(eps_bits)
    for r0 in range(0, mx, BLOCK_M):
        _set_search_block(
            x_set, y_set, r0 + tl.arange(0, BLOCK_M), m, n, mx, rb, re, d, eps, terms_s_ptr + per_row,
            terms_c_ptr + per_row, nbr_s_ptr + per_row, nbr_c_ptr + per_row, w_s_ptr + per_row, w_c_ptr + per_row,
            SELF, CROSS, SELF_SIGN, STORE_NBR or COMPUTE_GRAD, COMPUTE_GRAD, TERM, K, KP, NORM, ACC, BLOCK_M, BLOCK_N,
        )
    tl.debug_barrier()  # what the search wrote is read by every thread below
    value, scale = _set_value(
        terms_s_ptr + per_row, terms_c_ptr + per_row, m, n, rb, re, d, logv_bits, euler_bits, EST, SELF, CROSS,
        SELF_SIGN, SUM_BLOCK, K,
    )
    tl.store(value_ptr + b, value.to(value_ptr.dtype.element_ty))
    if COMPUTE_GRAD:
        for g0 in range(0, mx, BLOCK_G):
            _set_gather_block(
                x_set, y_set, gx_ptr + per_row * d, g0, m, n, mx, rb, re, d, scale.to(ACC), nbr_s_ptr + per_row,
                w_s_ptr + per_row, nbr_c_ptr + per_row, w_c_ptr + per_row, False, SELF, CROSS, NORM, ACC, BLOCK_G,
                GATHER_SCAN, DP,
            )
        if CROSS:
            for g0 in range(0, ny, BLOCK_G):
                _set_gather_block(
                    x_set, y_set, gy_ptr + b.to(tl.int64) * ny * d, g0, m, n, ny, rb, re, d, scale.to(ACC),
                    nbr_s_ptr + per_row, w_s_ptr + per_row, nbr_c_ptr + per_row, w_c_ptr + per_row, True, SELF,
                    CROSS, NORM, ACC, BLOCK_G, GATHER_SCAN, DP,
                )


@triton.jit
def _knn_sets_kernel(
    x_ptr,  # (B, Mx, d) contiguous
    y_ptr,  # (B, Ny, d) contiguous (CROSS; else any tensor)
    lx_ptr,
    ly_ptr,
    dist_ptr,  # (B, Mx, K) output, ascending; 0 on padded rows
    idx_ptr,  # (B, Mx, K) int64 output; -1 on padded rows
    mx,
    ny,
    d,
    n_bucket,  # autotuning key only
    K: tl.constexpr,
    KP: tl.constexpr,
    NORM: tl.constexpr,
    CROSS: tl.constexpr,
    HAS_LX: tl.constexpr,
    HAS_LY: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Grid (B * cdiv(Mx, BLOCK_M),): _knn_kernel per (set, row block), x against x (the row
    itself excluded) or against y."""
    ACC = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    blocks = tl.cdiv(mx, BLOCK_M)
    pid = tl.program_id(0)
    b = pid // blocks
    rows = (pid % blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    m, n = _set_lengths(lx_ptr, ly_ptr, b, mx, ny, HAS_LX, HAS_LY)
    row_ok = rows < m
    in_set = rows < mx
    any_row = tl.max(row_ok.to(tl.int32), axis=0) > 0
    x_set = x_ptr + b.to(tl.int64) * mx * d
    if CROSS:
        ref = y_ptr + b.to(tl.int64) * ny * d
        top_key, top_idx = _search_in(
            x_set, ref, rows, m, tl.where(any_row, n, 0), d, False, K, KP, NORM, ACC, BLOCK_M, BLOCK_N
        )
    else:
        ref = x_set
        top_key, top_idx = _search_in(
            x_set, ref, rows, m, tl.where(any_row, m, 0), d, True, K, KP, NORM, ACC, BLOCK_M, BLOCK_N
        )
    # As _knn_kernel: a key of +inf is NaN when either row holds a NaN or inf, else +inf.
    own_finite = _rows_finite(x_set, rows, row_ok & (tl.max(top_key, axis=1) >= _INF), d, d, 1)
    real = (tl.arange(0, KP) < K)[None, :]
    keys = tl.where(real, top_key, _INF)
    idx = tl.where(real, top_idx, _BIG)
    out = (b.to(tl.int64) * mx + rows) * K
    for q in range(0, K):
        mk, mi = _best(keys, idx)
        dist = _key_to_distance(mk, NORM, ACC)
        overflow = mk >= _INF
        finite = own_finite & _rows_finite(ref, mi, row_ok & overflow, d, d, 1)
        dist = tl.where(overflow, tl.where(finite, _INF, float("nan")), dist)
        tl.store(dist_ptr + out + q, tl.where(row_ok, dist, 0.0), mask=in_set)
        tl.store(idx_ptr + out + q, tl.where(row_ok, mi.to(tl.int64), -1), mask=in_set)
        taken = idx == mi[:, None]
        keys = tl.where(taken, _INF, keys)
        idx = tl.where(taken, _BIG, idx)
