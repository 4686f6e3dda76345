"""The model package as a library: one model protocol, one registry, no import cycles, the
installed name ``eae_models`` and its console commands.

- A new model is one ``Autoencoder`` subclass and one registry line: a toy model with its own
  code sampler and second stage trains through the trainer, generates, and is reported finished
  by python.compare only once its second stage ran.
- The hooks of the base class are no-ops; every registered model subclasses it.
- No module of python/ imports, directly or through others, a module that imports it back.
- When the package is installed, ``eae_models`` is the same code and the console commands
  eae-train, eae-sample, eae-evaluate and eae-compare run from any directory.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from python import compare as compare_module
from python import registry
from python.models import ARCHITECTURES, EAE, Autoencoder
from python.registry import MODELS, build_model
from python.runs import command, load_run
from python.sample import sample_images
from python.train import build_parser, train

from conftest import narrow, state_of, tiny_config

PACKAGE = Path(__file__).resolve().parents[1] / "python"
TOOLS = ("train", "sample", "evaluate", "compare", "evidence")


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


class ToyTwoStage(Autoencoder):
    """A new model: the AE with its own code sampler (every code 0.5) and a second stage that
    counts its calls. Registering it takes one line."""

    fitted: list = []

    def sample_codes(self, n, generator=None):
        return torch.full((n, self.latent_dim), 0.5)

    def second_stage_pending(self, epoch):
        return not self.fitted

    def fit_second_stage(self, images, device, epochs, batch_size, lr, seed, epoch):
        self.fitted.append(epoch)
        return [1.0, 0.5]


def test_a_new_model_is_one_class_and_one_registry_line(tmp_path, monkeypatch, capsys):
    narrow("digits", monkeypatch)
    monkeypatch.setitem(MODELS, "toy", ToyTwoStage)  # the registry line
    monkeypatch.setattr(ToyTwoStage, "fitted", [])
    assert "toy" in build_parser().parse_args(["--model", "toy"]).model
    config = tiny_config(tmp_path, "digits", model="toy", batch_size=800)
    assert config.beta == 0.0  # no entropy term: beta forced to 0
    run_dir = train(config, progress=False, finish=False)
    assert ToyTwoStage.fitted == [1]  # after the last first-stage epoch, once
    assert "second stage: 2 epochs on the codes, loss 1.0000 -> 0.5000" in capsys.readouterr().out
    assert state_of(run_dir)["epoch"] == 1
    run = load_run(run_dir, "cpu")
    assert isinstance(run.model, ToyTwoStage)
    assert compare_module._finished(run)  # second_stage_pending is False now
    monkeypatch.setattr(ToyTwoStage, "fitted", [])
    assert not compare_module._finished(run)
    images = sample_images(run, "isotropic", 3, None)
    with torch.no_grad():
        expected = run.model.decode(torch.full((3, 4), 0.5))
    torch.testing.assert_close(images, expected)  # "isotropic" samples come from the model's sampler


def test_base_hooks_are_no_ops_and_every_model_subclasses_the_base():
    torch.manual_seed(0)
    model = Autoencoder(ARCHITECTURES["digits"], 4).double()
    x = torch.rand(5, 1, 16, 16, dtype=torch.float64)
    z, penalty = model.latent(x)
    assert torch.equal(z, model.encode(x)) and penalty.item() == 0.0
    assert model.penalty(z, model.decode(z)).item() == 0.0
    recon = torch.tensor(3.0)
    assert model.data_term(recon) is recon
    assert not model.second_stage_pending(7)
    assert model.fit_second_stage(None, torch.device("cpu"), 1, 2, 1e-3, 0, 1) == []
    codes = model.sample_codes(6, torch.Generator().manual_seed(1))
    assert torch.equal(codes, torch.randn(6, 4, generator=torch.Generator().manual_seed(1)))
    out = model(x)
    assert torch.equal(out.loss, out.recon_loss)  # the plain AE: loss = SSE
    for name, cls in MODELS.items():
        assert issubclass(cls, Autoencoder), name
        assert cls.ENTROPY_TERM == (name == "eae"), name
    assert MODELS["eae"] is EAE and MODELS["ae"] is Autoencoder


def test_beta_only_for_a_model_with_an_entropy_term():
    assert build_model("digits", beta=0.1).beta == 0.1
    with pytest.raises(ValueError, match="beta is the weight of the EAE's entropy term; model 'rae' has none"):
        build_model("digits", beta=0.1, model="rae")
    with pytest.raises(ValueError, match="RAE has none"):
        MODELS["rae"](ARCHITECTURES["digits"], beta=0.1)
    with pytest.raises(ValueError, match="model must be one of eae, ae, ae-l2"):
        registry.model_class("gan")


def _intra_package_imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports anywhere (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:  # from . import x
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "python":
            found.add(node.module.split(".")[1] if "." in node.module else "__init__")
    return found


def test_no_import_cycles_in_the_model_package():
    modules = {p.stem: p for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    graph = {name: _intra_package_imports(path) & modules.keys() for name, path in modules.items()}
    assert graph["train"] and graph["registry"] == {"models", "baselines"}  # the parser sees imports

    def reaches(start: str, target: str, seen: set) -> bool:
        for nxt in graph[start]:
            if nxt == target or (nxt not in seen and (seen.add(nxt) or reaches(nxt, target, seen))):
                return True
        return False

    cycles = [name for name in graph if reaches(name, name, set())]
    assert not cycles, f"modules on an import cycle: {cycles} (graph: {graph})"


def test_command_names_follow_the_invocation(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/somewhere/bin/eae-train", "--help"])
    assert command("sample") == "eae-sample"
    monkeypatch.setattr(sys, "argv", ["/repo/python/train.py"])
    assert command("train") == "python -m python.train"


def _installed_commands() -> dict[str, str]:
    try:
        eps = importlib.metadata.distribution("eae-kernels").entry_points
    except importlib.metadata.PackageNotFoundError:
        return {}
    return {ep.name: ep.value for ep in eps if ep.group == "console_scripts"}


def test_installed_entry_points_name_the_installed_package():
    installed = _installed_commands()
    if not installed:
        pytest.skip("eae-kernels is not installed (pip install --no-build-isolation -e .)")
    assert installed == {f"eae-{tool}": f"eae_models.{tool}:main" for tool in TOOLS}
    import eae_models.train

    assert Path(eae_models.train.__file__).resolve().parent == PACKAGE or "site-packages" in eae_models.train.__file__


@pytest.mark.slow
@pytest.mark.subprocess
def test_console_commands_run_from_any_directory(tmp_path):
    if shutil.which("eae-train") is None:
        pytest.skip("the console commands are not on PATH (pip install --no-build-isolation -e .)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for tool in TOOLS:
        done = subprocess.run([f"eae-{tool}", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"usage: eae-{tool}"), done.stdout[:200]
