"""python -m python.evidence end to end at a tiny scale (digits, 1 epoch, 1 seed, 2 models and a
2-size sweep at 1/4 width), its resumability, and the statistics of its report; and the matmul
weight gradient of python/conv_wgrad.py against the layers' own."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from python.conv_wgrad import use_matmul_weight_grad
from python.evidence import Job, main, paired_differences, plan, report


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_plan_shares_the_comparison_runs_with_the_sweep():
    jobs = plan(["eae", "bn-ae", "vae"], [0, 1], [4, 16], 16)
    names = [j.name for j in jobs if j.seed == 0]
    assert names == ["eae-beta0.05-z16", "eae-beta0-z16", "vae-beta0-z16", "eae-beta0-z4", "eae-beta0.05-z4"]
    assert len(jobs) == 10 and [j.seed for j in jobs[:5]] == [0] * 5


def test_report_statistics():
    def row(beta, seed, kl, latent=16, model="eae"):
        return {"label": "x", "model": model, "beta": beta, "latent_dim": latent, "seed": seed, "recon": 10.0 + seed,
                "fd_isotropic": 100.0 - 10 * beta * seed, "fd_gmm": 50.0, "fd_floor": 5.0, "latent_kl": kl,
                "latent_kl_exact_normal": 0.1}

    rows = [row(0.05, 0, 1.0), row(0.05, 1, 2.0), row(0.05, 2, 3.0), row(0.0, 0, 2.0), row(0.0, 1, 4.0),
            row(0.0, 2, 6.0)]
    assert paired_differences(rows, {"beta": 0.05}, {"beta": 0.0}, "latent_kl") == [-1.0, -2.0, -3.0]
    text = report(rows, ["eae", "bn-ae"], [16], 16, "test")
    assert "| eae | 3 | 11.00 ± 1.00 |" in text  # recon 10, 11, 12
    assert "| bn-ae | 3 | 11.00 ± 1.00 |" in text
    assert "| EAE - BN-AE, paired | 3 | +0.00 ± 0.00 |" in text and "-2.00 ± 1.00 |" in text  # KL: mean -2, sd 1
    assert "| 16 | 3 | 4.00 ± 2.00 | 2.00 ± 1.00 | -2.00 ± 1.00 |" in text


@pytest.mark.slow
def test_evidence_end_to_end_and_resumable(tmp_path, capsys):
    out = tmp_path / "ev"
    args = ["--dataset", "digits", "--models", "eae,bn-ae", "--seeds", "0", "--latent-sizes", "2,8", "--epochs", "1",
            "--width", "0.25", "--threads", "1", "--n-samples", "50", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    result = json.loads((out / "evidence.json").read_text())
    assert sorted((r["beta"], r["latent_dim"]) for r in result["rows"]) == [(0.0, 2), (0.0, 8), (0.05, 2), (0.05, 8)]
    for r in result["rows"]:
        assert r["epochs"] == 1 and r["recon"] > 0 and r["fd_isotropic"] > 0 and r["latent_kl"] == r["latent_kl"]
        assert json.loads((out / "seed0" / f"eae-beta{r['beta']:g}-z{r['latent_dim']}" / "config.json").read_text())[
            "width"] == 0.25
    markdown = (out / "evidence.md").read_text()
    assert "| eae | 1 |" in markdown and "| EAE - BN-AE, paired | 1 |" in markdown and "| 2 | 1 |" in markdown
    assert (out / "evidence.png").stat().st_size > 0 or pytest.importorskip("matplotlib") is None
    # a second invocation reuses every finished run (no retraining) and gives the same report
    mtime = (out / "seed0" / "eae-beta0.05-z8" / "checkpoint.pt").stat().st_mtime_ns
    assert main(args + ["--report"]) == 0
    assert main(args) == 0
    assert (out / "seed0" / "eae-beta0.05-z8" / "checkpoint.pt").stat().st_mtime_ns == mtime
    assert json.loads((out / "evidence.json").read_text())["rows"] == result["rows"]
    # other settings in the same folder are refused, naming the setting
    assert main([*args[:-2], "--epochs", "1", "--width", "0.5", "--out", str(out)]) == 2
    assert "width=0.25" in capsys.readouterr().err


@pytest.mark.parametrize("layer, shape", [
    (nn.Conv2d(3, 5, 4, 2, 1), (2, 3, 9, 9)), (nn.ConvTranspose2d(5, 3, 4, 2, 1), (2, 5, 4, 4)),
    (nn.Conv2d(3, 5, 5, 2, 2), (2, 3, 8, 8)), (nn.ConvTranspose2d(5, 3, 5, 2, 2, output_padding=1), (2, 5, 4, 4)),
    (nn.Conv2d(3, 4, 3, 3, 0, bias=False), (1, 3, 10, 10))])
@pytest.mark.parametrize("channels_last", [False, True])
def test_matmul_weight_grad_matches_the_layer(layer, shape, channels_last):
    torch.manual_seed(0)
    ours, reference = copy.deepcopy(layer).double(), copy.deepcopy(layer).double()
    assert use_matmul_weight_grad(ours, min_channel_product=1) == 1
    x = torch.randn(shape, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), reference(xb)
    grad = torch.randn_like(ya)
    ya.backward(grad)
    yb.backward(grad)
    torch.testing.assert_close(ya, yb)
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(ours.weight.grad, reference.weight.grad)
    if layer.bias is not None:
        torch.testing.assert_close(ours.bias.grad, reference.bias.grad)
    assert ours.state_dict().keys() == reference.state_dict().keys()


def test_matmul_weight_grad_leaves_other_layers_alone():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, 1, 1), nn.Conv2d(2, 2, 4, 2, 1, groups=2), nn.Conv2d(2, 2, 4, 2, 1))
    assert use_matmul_weight_grad(model, min_channel_product=1) == 1  # stride 1 and grouped ones keep their own
    assert use_matmul_weight_grad(nn.Conv2d(256, 511, 4, 2, 1)) == 0  # small layers: oneDNN's is faster
    assert use_matmul_weight_grad(nn.ConvTranspose2d(1024, 512, 4, 2, 1)) == 1
    from python.registry import build_model

    assert use_matmul_weight_grad(build_model("mnist")) == 4 and use_matmul_weight_grad(build_model("mnist", width=0.25)) == 0


@pytest.mark.slow
def test_a_run_locked_by_another_process_is_skipped_then_taken(tmp_path, capsys, monkeypatch):
    from python.evidence import run_lock
    out = tmp_path / "ev"
    args = ["--dataset", "digits", "--models", "eae,bn-ae", "--seeds", "0", "--no-sweep", "--epochs", "1",
            "--width", "0.25", "--threads", "1", "--n-samples", "50", "--out", str(out)]
    busy = out / "seed0" / "eae-beta0-z8"  # bn-ae (the digits latent size is 8)
    with run_lock(busy) as mine:  # a second lock of the same file conflicts, as another process's would
        assert mine
        with run_lock(busy) as again:
            assert not again
        assert main(args) == 0
        assert "eae-beta0-z8: another process has it, skipped" in capsys.readouterr().out
        assert not busy.exists()
        rows = json.loads((out / "evidence.json").read_text())["rows"]
        assert [(r["beta"], r["latent_dim"]) for r in rows] == [(0.05, 8)]
    assert main(args) == 0  # released: now trained, and the report has both runs
    rows = json.loads((out / "evidence.json").read_text())["rows"]
    assert sorted(r["beta"] for r in rows) == [0.0, 0.05]
    assert not list(out.rglob(".*.tmp"))
    # a moved output folder still reports both runs and draws both models' samples
    import python.evidence as evidence_module
    drawn = []
    real_figure = evidence_module.figure
    monkeypatch.setattr(evidence_module, "figure", lambda out, rows, *a: drawn.extend(rows) or real_figure(out, rows, *a))
    moved = out.rename(tmp_path / "moved")
    assert main([*args[:-1], str(moved), "--report"]) == 0
    assert [label for label, _ in drawn] == ["eae", "bn-ae"]


def test_training_seconds_sums_the_epochs_of_every_invocation(tmp_path):
    from python.evidence import training_seconds
    assert training_seconds(tmp_path) is None
    # two epochs, a kill, a resume whose clock restarted (older versions), then a continuing clock
    (tmp_path / "log.csv").write_text("epoch,steps,loss,recon,entropy,heldout_recon,lr,seconds\n"
                                      "1,9,1,1,0,1,0.1,10.0\n2,18,1,1,0,1,0.1,21.0\n"
                                      "3,27,1,1,0,1,0.1,12.0\n4,36,1,1,0,1,0.1,30.0\n")
    assert training_seconds(tmp_path) == pytest.approx(21.0 + 30.0)
