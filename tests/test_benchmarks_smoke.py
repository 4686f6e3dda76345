"""Smoke test of the benchmark suite (benchmarks/): a tiny sweep runs end to end and writes its
JSON, Markdown and plots, every timed result is checked against the reference, and a missing
optional baseline becomes a skipped row with the reason instead of a crash.

The real measurements are `python -m benchmarks.run` and `pytest benchmarks --benchmark-only`.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch

from benchmarks import run  # at the repository root: pyproject.toml's pytest pythonpath


@pytest.mark.slow
def test_tiny_sweep_writes_checked_results(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setitem(sys.modules, "pykeops", None)  # as if pykeops were not installed
    settings = run.Settings(
        sizes=(40, 300), dims=(3,), ks=(2,), methods=("ours", "reference", "faiss", "pykeops"),
        threads=1, target_s=0.01, fma_seconds=0.01, fresh_keops_cache=False, estimators=False,
    )
    results = run.run_sweep(settings, progress=False, command="smoke")
    paths = run.write_outputs(results, tmp_path, "smoke")

    records = {(r["method"], r["N"]): r for r in results["records"]}
    for n in settings.sizes:
        ours = records[("eae-kernels (cpu)", n)]
        assert ours["status"] == "ok", ours
        assert ours["check"]["ok"] is True, ours["check"]
        assert ours["fwd"]["median_s"] > 0 and ours["fwd_bwd"]["median_s"] > 0
        assert ours["fwd_bwd"]["peak_bytes"] is not None
        assert ours["speedup_fwd_bwd"] > 0  # the reference ran on the same case
        keops = records[("pykeops", n)]
        assert keops["status"] == "skipped" and "not installed" in keops["reason"]
        faiss = records.get(("faiss IndexFlatL2", n))
        if faiss is not None and faiss["status"] == "ok":
            assert faiss["check"]["ok"] is True, faiss["check"]

    saved = json.loads(paths["json"].read_text())
    assert len(saved["records"]) == len(results["records"])
    assert {t["met"] for t in saved["targets"]} <= {True, False, None}
    markdown = paths["md"].read_text()
    assert "| pykeops | skipped |" in markdown and "eae-kernels (cpu)" in markdown
    for key in ("time_png", "memory_png"):
        assert paths[key].stat().st_size > 1000


def test_estimator_rows(monkeypatch):
    from benchmarks import estimators

    monkeypatch.setattr(estimators, "DIVERGENCE_SIZES", ((60, 3),))
    monkeypatch.setattr(estimators, "QUICK_KOLEO_SIZES", ((64, 8),))
    monkeypatch.setattr(estimators, "KOLEO_TARGET_SIZES", ((64, 8),))
    monkeypatch.setattr(estimators, "BATCH_SHAPE", (4, 10, 3))
    section = estimators.run(torch.device("cpu"), target_s=0.01, quick=True, progress=lambda line: None)
    assert [r["case"].split(" ")[0] for r in section["records"]] == ["kl_divergence", "koleo_loss", "kl_entropy"]
    assert all(r["ours_s"] > 0 and r["baseline_s"] > 0 for r in section["records"])
    assert len(section["targets"]) == 2 and {t["met"] for t in section["targets"]} <= {True, False}
    assert "## Estimators" in "\n".join(estimators.to_markdown(section))
