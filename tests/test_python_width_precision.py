"""--width, --precision bf16 and --compile of the trainer: the scaled architectures, what
config.json records and resume honours, the float32 latent path under bf16 autocast, and the
refusal of bf16 on CPUs without bf16 instructions."""

from __future__ import annotations

import json

import pytest
import torch

import python.runs as runs
from python.models import ARCHITECTURES
from python.registry import build_model
from python.runs import TrainConfig, check_precision, load_run, read_config
from python.train import build_parser, config_from_args, train, train_step

from conftest import tiny_config

HAS_BF16 = runs.cpu_bf16_feature() is not None


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_width_scales_every_convolution():
    arch = ARCHITECTURES["mnist"].scaled(0.25)
    assert arch.encoder_channels == (32, 64, 128, 256)
    assert arch.decoder_channels == (128, 64) and arch.decoder_base_channels == 256
    assert arch.kernel_size == 4 and arch.latent_dim == 16 and arch.image_shape == (1, 32, 32)
    assert ARCHITECTURES["mnist"].scaled(1.0) is ARCHITECTURES["mnist"]
    assert ARCHITECTURES["digits"].scaled(0.01).encoder_channels == (1, 1, 1)  # at least one channel
    model = build_model("mnist", width=0.25)
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256, 128, 64, 1]
    assert model.encoder.to_latent.in_features == 256 * 2 * 2
    assert model.decoder.from_latent.out_features == 256 * 8 * 8
    assert model(torch.rand(3, 1, 32, 32)).recon_x.shape == (3, 1, 32, 32)


@pytest.mark.parametrize("width", [0, -1, float("nan"), float("inf")])
def test_bad_width_is_refused(width):
    with pytest.raises(ValueError, match="width must be a positive number"):
        TrainConfig.for_dataset("digits", width=width)
    with pytest.raises(ValueError, match="width must be a positive number"):
        build_model("digits", width=width)


def test_bad_precision_and_compile_are_refused():
    with pytest.raises(TypeError, match="width must be a number"):
        TrainConfig.for_dataset("digits", width="wide")
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        TrainConfig.for_dataset("digits", precision="fp16")
    with pytest.raises(TypeError, match="compile must be True or False"):
        TrainConfig.for_dataset("digits", compile="yes")


def test_bf16_is_refused_without_cpu_support(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(runs, "cpu_bf16_feature", lambda: None)
    with pytest.raises(ValueError, match="needs a CPU with AVX512_BF16 or AMX"):
        check_precision("bf16", torch.device("cpu"))
    check_precision("fp32", torch.device("cpu"))  # always fine
    from python.train import main

    assert main(["--precision", "bf16", "--device", "cpu", "--run-dir", str(tmp_path / "r")]) == 2
    assert "use --precision fp32" in capsys.readouterr().err


def test_cpu_bf16_feature_reads_the_cpu_flags(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    real_open = open

    def fake_open(path, *args, **kwargs):
        return real_open(cpuinfo if path == "/proc/cpuinfo" else path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    for flags, expected in (("fpu avx512f avx512_bf16 amx_bf16 amx_tile", "AMX"),
                            ("fpu avx512f avx512_bf16", "AVX512_BF16"), ("fpu avx2 fma", None)):
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert runs.cpu_bf16_feature() == expected


def test_config_records_width_precision_compile_and_resume_honours_them(tmp_path):
    config = tiny_config(tmp_path, "digits", batch_size=400, latent_dim=4, width=0.5)
    run_dir = train(config, progress=False, finish=False)
    saved = json.loads((run_dir / "config.json").read_text())
    assert (saved["width"], saved["precision"], saved["compile"]) == (0.5, "fp32", False)
    run = load_run(run_dir, "cpu")  # rebuilt at width 0.5 (the checkpoint would not fit width 1)
    assert [c for c in run.model.encoder.features if isinstance(c, torch.nn.Conv2d)][0].out_channels == 16
    resumed, resume = config_from_args(build_parser().parse_args(["--resume", str(run_dir), "--epochs", "2"]))
    assert resume and resumed.width == 0.5
    train(resumed, resume=True, progress=False, finish=False)
    assert load_run(run_dir, "cpu").epoch == 2
    for option, value in (("--width", "1"), ("--precision", "bf16")):
        with pytest.raises(ValueError, match=f"{option} cannot change when resuming"):
            config_from_args(build_parser().parse_args(["--resume", str(run_dir), option, value]))
    changed, _ = config_from_args(build_parser().parse_args(["--resume", str(run_dir), "--compile"]))
    assert changed.compile is True  # compiling does not change the model


def test_runs_without_the_new_keys_load_as_width_1_fp32(tmp_path):
    config = tiny_config(tmp_path, "digits", batch_size=400, latent_dim=4)
    run_dir = train(config, progress=False, finish=False)
    old = json.loads((run_dir / "config.json").read_text())
    for key in ("width", "precision", "compile"):
        del old[key]
    (run_dir / "config.json").write_text(json.dumps(old))
    loaded = read_config(run_dir)
    assert (loaded.width, loaded.precision, loaded.compile) == (1.0, "fp32", False)
    assert load_run(run_dir, "cpu").epoch == 1


@pytest.mark.skipif(not HAS_BF16, reason="the CPU has no AVX512_BF16/AMX")
@pytest.mark.parametrize("name", ["eae", "vae", "wae-mmd"])
def test_bf16_autocast_keeps_codes_entropy_and_losses_float32(name):
    torch.manual_seed(0)
    model = build_model("mnist", latent_dim=4, beta=0.05 if name == "eae" else 0.0, model=name, width=1 / 16)
    model = model.to(memory_format=torch.channels_last)
    x = torch.rand(20, 1, 32, 32)
    torch.manual_seed(1)  # the same noise (VAE, WAE prior sample) in both forwards
    reference = model(x)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # a step that leaves the weights as they are
    torch.manual_seed(1)
    out = train_step(model, optimizer, x, "bf16")
    assert out.recon_x.dtype == torch.bfloat16  # the convolutions ran in bf16
    for value in (out.z, out.entropy, out.recon_loss, out.loss):
        assert value.dtype == torch.float32
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())
    assert out.recon_loss.item() == pytest.approx(reference.recon_loss.item(), rel=0.02)
    assert out.loss.item() == pytest.approx(reference.loss.item(), rel=0.05, abs=0.05)


@pytest.mark.skipif(not HAS_BF16, reason="the CPU has no AVX512_BF16/AMX")
def test_bf16_run_trains_and_records_its_precision(tmp_path):
    config = tiny_config(tmp_path, "digits", batch_size=400, latent_dim=4, precision="bf16")
    run_dir = train(config, progress=False, finish=False)
    assert read_config(run_dir).precision == "bf16"
    rows = (run_dir / "log.csv").read_text().splitlines()
    assert len(rows) == 2 and "nan" not in rows[1]


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    """--compile trains the same model: the same losses up to rounding (Adam's first steps
    amplify rounding differences of near-zero gradients in the weights, so the losses are
    compared), and config.json records it."""
    losses = []
    for compiled in (False, True):
        config = tiny_config(tmp_path / str(compiled), "digits", batch_size=800, latent_dim=4, width=0.25,
                             compile=compiled)
        run_dir = train(config, progress=False, finish=False)
        assert read_config(run_dir).compile is compiled
        row = (run_dir / "log.csv").read_text().splitlines()[1].split(",")
        losses.append([float(v) for v in row[2:5]])  # loss, recon, entropy: means over the 2 steps
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)
