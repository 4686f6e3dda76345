"""kl_entropy over the global batch of a torch.distributed group (eae_kernels.distributed).

Two processes (gloo backend, CPU) are spawned once for the module; each runs every case below
and saves its H and the gradient of its own rows. The tests then compare them with ONE process
computing the same estimate on the concatenated batch: H on both ranks must be identical and
equal the single-process H, and the ranks' gradients, stacked, must equal the single-process
gradient. Batch sizes are uneven.

Gradient convention: backward gives each rank the gradient of the SUM of every rank's loss
(the exact autograd of the collective; DDP's averaging then gives the single-process gradient).
So rank r backpropagates WEIGHTS[r] * H with sum(WEIGHTS) = 1: the stacked gradient must equal
dH/dz of the single process, and a wrong convention (e.g. no sum over ranks) cannot pass.
"""

from __future__ import annotations

import math
import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from eae_kernels import distributed, kl_entropy, koleo_loss
from eae_kernels.distributed import global_kl_entropy

from conftest import integer_rows, random_rows

WORLD = 2
WEIGHTS = (0.25, 0.75)  # rank r's loss is WEIGHTS[r] * H; they sum to 1

# name -> sizes (rows of each rank), d, k, p, dtype; optional: backend (default "cpu"),
# rows="integer" (exact ties), reduce_scatter (force the NCCL-style backward path), direct (call
# global_kl_entropy itself: kl_entropy checks N > k on the LOCAL rows before dispatching).
CASES = {
    "f64-p2-k1": dict(sizes=(7, 12), d=3, k=1, p=2.0, dtype=torch.float64),
    "f64-p1-k3": dict(sizes=(9, 5), d=4, k=3, p=1.0, dtype=torch.float64),
    "f64-pinf-k2": dict(sizes=(6, 11), d=5, k=2, p=math.inf, dtype=torch.float64),
    "f32-p2-k2": dict(sizes=(13, 8), d=6, k=2, p=2.0, dtype=torch.float32),
    "f32-even": dict(sizes=(10, 10), d=2, k=1, p=2.0, dtype=torch.float32),
    "f16": dict(sizes=(9, 6), d=3, k=1, p=2.0, dtype=torch.float16),
    "f64-ties": dict(sizes=(8, 9), d=2, k=2, p=2.0, dtype=torch.float64, rows="integer"),
    "reference-backend": dict(sizes=(5, 9), d=3, k=2, p=2.0, dtype=torch.float64, backend="reference"),
    "reduce-scatter-path": dict(sizes=(4, 10), d=3, k=1, p=2.0, dtype=torch.float64, reduce_scatter=True),
    "rank-without-rows": dict(sizes=(0, 7), d=3, k=2, p=2.0, dtype=torch.float64, direct=True),
    "rank-with-fewer-than-k-rows": dict(sizes=(1, 8), d=3, k=2, p=2.0, dtype=torch.float64, direct=True),
}

# Both ranks run the same bad call; each must raise this error (and nobody may hang).
ERROR_CASES = {
    "different-d": (ValueError, "same number of columns"),
    "different-dtype": (TypeError, "same dtype"),
    "requires-grad-on-one-rank": (ValueError, "require grad"),
    "global-batch-too-small": (ValueError, "N > k"),
}

DDP_SIZES = (6, 9)
DDP_BETA = 0.5


def global_rows(case: dict) -> torch.Tensor:
    n = sum(case["sizes"])
    if case.get("rows") == "integer":  # many exact ties, some across ranks
        return integer_rows(n, case["d"], seed=3).to(case["dtype"])
    return random_rows(n, case["d"], seed=1, dtype=case["dtype"])


def own_rows(full: torch.Tensor, sizes, rank: int) -> torch.Tensor:
    begin = sum(sizes[:rank])
    return full[begin : begin + sizes[rank]]


# ---------------------------------------------------------------------------------------------
# What each spawned rank runs
# ---------------------------------------------------------------------------------------------


def _run_case(case: dict, rank: int) -> dict:
    z = own_rows(global_rows(case), case["sizes"], rank).clone().requires_grad_(True)
    options = dict(p=case["p"], backend=case.get("backend", "cpu"))
    if case.get("direct"):
        h = global_kl_entropy(z, case["k"], **options)
    else:
        h = kl_entropy(z, case["k"], distributed=True, **options)
    (WEIGHTS[rank] * h).backward()
    return dict(h=h.detach(), grad=z.grad)


def _gloo_has_reduce_scatter() -> bool:
    try:
        dist.reduce_scatter(torch.zeros(1), [torch.zeros(1) for _ in range(WORLD)])
        return True
    except (RuntimeError, NotImplementedError):  # raised on every rank before any message
        return False


def _run_error_case(name: str, rank: int) -> tuple[str, str]:
    z = torch.randn(4, 3, dtype=torch.float64)
    k = 1
    if name == "different-d":
        z = torch.randn(4, 3 + rank, dtype=torch.float64)
    elif name == "different-dtype":
        z = z.to(torch.float32 if rank == 0 else torch.float64)
    elif name == "requires-grad-on-one-rank":
        z.requires_grad_(rank == 0)
    elif name == "global-batch-too-small":
        z, k = z[:1], 2
    try:
        global_kl_entropy(z, k)
    except (TypeError, ValueError) as exc:
        return type(exc).__name__, str(exc)
    return "no error", ""


class _TinyAutoencoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(5, 3)
        self.decoder = nn.Linear(3, 5)

    def forward(self, x):
        z = self.encoder(x)
        return z, self.decoder(z)


def _ddp_model() -> nn.Module:
    """The same initial float64 weights in every process."""
    torch.manual_seed(0)
    return _TinyAutoencoder().double()


def _run_ddp(rank: int) -> dict:
    """One DDP step, loss = mse - beta * global H. Tiny buckets: DDP's gradient all-reduces of
    the decoder interleave with the entropy's collectives in the same backward pass."""
    model = _ddp_model()
    ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=1e-6)
    x = own_rows(random_rows(sum(DDP_SIZES), 5, seed=7), DDP_SIZES, rank)
    z, recon = ddp(x)
    loss = ((recon - x) ** 2).mean() - DDP_BETA * kl_entropy(z, distributed=True)
    loss.backward()
    return {name: param.grad.clone() for name, param in model.named_parameters()}


KOLEO_SIZES = (7, 12)
KOLEO_BACKENDS = ("cpu", "reference")


def _run_koleo(rank: int, backend: str) -> dict:
    """The KoLeo loss of the global batch (rows of both ranks), weighted per rank as above."""
    x = own_rows(random_rows(sum(KOLEO_SIZES), 5, seed=11), KOLEO_SIZES, rank).clone().requires_grad_(True)
    loss = koleo_loss(x, group=dist.group.WORLD, backend=backend)
    (WEIGHTS[rank] * loss).backward()
    return dict(loss=loss.detach(), grad=x.grad)


def _worker(rank: int, rendezvous: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    results = {"errors": {}, "cases": {}}
    # Errors first: after one, the group must still work for every case below.
    for name in ERROR_CASES:
        results["errors"][name] = _run_error_case(name, rank)
    has_reduce_scatter = _gloo_has_reduce_scatter()
    use_reduce_scatter = distributed._use_reduce_scatter
    for name, case in CASES.items():
        if case.get("reduce_scatter"):
            if not has_reduce_scatter:
                continue
            distributed._use_reduce_scatter = lambda group, device: True
        try:
            results["cases"][name] = _run_case(case, rank)
        finally:
            distributed._use_reduce_scatter = use_reduce_scatter
    case = CASES["f64-p2-k1"]
    with torch.no_grad():
        z = own_rows(global_rows(case), case["sizes"], rank)
        results["no_grad_h"] = kl_entropy(z, case["k"], distributed=True)
    # A group of this rank alone (group rank 0 on both ranks): the estimate of the local rows.
    own_group = [dist.new_group([r]) for r in range(WORLD)][rank]
    z = own_rows(global_rows(case), case["sizes"], rank).clone().requires_grad_(True)
    h = kl_entropy(z, case["k"], group=own_group)
    h.backward()
    results["own_group"] = dict(h=h.detach(), grad=z.grad)
    results["ddp"] = _run_ddp(rank)
    results["koleo"] = {backend: _run_koleo(rank, backend) for backend in KOLEO_BACKENDS}
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# The tests (in this process: single-process ground truth)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Spawns the WORLD processes once; returns each rank's saved results."""
    tmp = tmp_path_factory.mktemp("distributed")
    mp.spawn(_worker, args=(str(tmp / "rendezvous"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


def single_process(case: dict) -> tuple[torch.Tensor, torch.Tensor]:
    z = global_rows(case).requires_grad_(True)
    h = kl_entropy(z, case["k"], p=case["p"], backend="cpu")
    (grad,) = torch.autograd.grad(h, z)
    return h.detach(), grad


def tolerance(dtype: torch.dtype) -> dict:
    if dtype == torch.float16:  # H is float32; each rank's partial gradient is rounded to float16
        return dict(rtol=2e-3, atol=2e-3)
    if dtype == torch.float32:
        return dict(rtol=1e-5, atol=1e-5)
    return dict(rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", CASES)
def test_matches_single_process(ranks, name):
    case = CASES[name]
    if name not in ranks[0]["cases"]:
        pytest.skip("this torch's gloo backend has no reduce_scatter")
    h_ref, grad_ref = single_process(case)
    h = [r["cases"][name]["h"] for r in ranks]
    assert torch.equal(h[0], h[1]), "every rank must return the same H"
    assert h[0].dtype == h_ref.dtype
    torch.testing.assert_close(h[0], h_ref, **tolerance(h_ref.dtype))
    grads = [r["cases"][name]["grad"] for r in ranks]
    for rank, grad in enumerate(grads):
        assert grad.shape == (case["sizes"][rank], case["d"]) and grad.dtype == case["dtype"]
    torch.testing.assert_close(torch.cat(grads), grad_ref, **tolerance(case["dtype"]))


def test_rows_have_neighbours_on_the_other_rank():
    """The cases are meant to exercise the scatter terms across ranks: check that they do."""
    case = CASES["f64-p2-k1"]
    z = global_rows(case)
    dist_matrix = torch.cdist(z, z).fill_diagonal_(math.inf)
    nbr = dist_matrix.argmin(1)
    rank_of_row = torch.repeat_interleave(torch.arange(WORLD), torch.tensor(case["sizes"]))
    assert (rank_of_row[nbr] != rank_of_row).any()


def test_without_grad(ranks):
    h_ref, _ = single_process(CASES["f64-p2-k1"])
    for r in ranks:
        torch.testing.assert_close(r["no_grad_h"], h_ref, rtol=1e-12, atol=1e-12)


def test_group_of_one_rank_is_the_local_estimate(ranks):
    case = CASES["f64-p2-k1"]
    for rank, r in enumerate(ranks):
        z = own_rows(global_rows(case), case["sizes"], rank).clone().requires_grad_(True)
        h = kl_entropy(z, case["k"])
        h.backward()
        torch.testing.assert_close(r["own_group"]["h"], h.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(r["own_group"]["grad"], z.grad, rtol=1e-12, atol=1e-12)


def test_ddp_step_matches_single_process(ranks):
    """DDP averages the ranks' parameter gradients; with the global entropy that average is the
    gradient of one process on the global batch: mean of the ranks' mse - beta * H."""
    model = _ddp_model()
    x = random_rows(sum(DDP_SIZES), 5, seed=7)
    z, recon = model(x)
    mse = sum(((r - x_r) ** 2).mean() for r, x_r in zip(recon.split(DDP_SIZES), x.split(DDP_SIZES)))
    loss = mse / WORLD - DDP_BETA * kl_entropy(z)
    loss.backward()
    for name, param in model.named_parameters():
        for r in ranks:
            torch.testing.assert_close(r["ddp"][name], param.grad, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("name", ERROR_CASES)
def test_inconsistent_calls_raise_on_every_rank(ranks, name):
    error, words = ERROR_CASES[name]
    for r in ranks:
        kind, message = r["errors"][name]
        assert kind == error.__name__, message
        assert words in message


def test_needs_an_initialised_process_group():
    assert not dist.is_initialized()
    z = torch.randn(4, 2)
    with pytest.raises(RuntimeError, match="init_process_group"):
        kl_entropy(z, distributed=True)


def test_rejects_a_group_that_is_not_a_process_group():
    with pytest.raises(TypeError, match="group must be a torch.distributed ProcessGroup"):
        kl_entropy(torch.randn(4, 2), group="world")


@pytest.mark.parametrize("backend", KOLEO_BACKENDS)
def test_global_koleo_matches_single_process(ranks, backend):
    x = random_rows(sum(KOLEO_SIZES), 5, seed=11).requires_grad_(True)
    loss = koleo_loss(x, backend="cpu")
    (grad,) = torch.autograd.grad(loss, x)
    for r in ranks:
        torch.testing.assert_close(r["koleo"][backend]["loss"], loss.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.cat([r["koleo"][backend]["grad"] for r in ranks]), grad, rtol=1e-10, atol=1e-12)
