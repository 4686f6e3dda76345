"""Training speed of the model package, in images per second: ``python -m benchmarks.train_speed``.

    python -m benchmarks.train_speed                          # digits and mnist, width 1 and 0.25, fp32 and bf16
    python -m benchmarks.train_speed --datasets mnist --widths 1 --steps 5 --contiguous --compile

Times the trainer's own step (``python.train.train_step``: forward under the precision's
autocast, backward, Adam) of the EAE (beta 0.05) on random images of the data set's shape,
batch 100, after one warm-up step. For each network and width the precisions (and the other
variants asked for) train side by side from the same initial weights and their steps alternate,
so that on a shared machine the ratios between them are measured under the same load; the load
average before and after is recorded with the numbers.

Writes benchmarks/results/train_speed.md and .json (``--out`` to change the folder).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from python.conv_wgrad import use_matmul_weight_grad
from python.registry import build_model
from python.runs import DATASET_DEFAULTS, check_precision, cpu_bf16_feature, resolve_device
from python.train import train_step

RESULTS = Path(__file__).with_name("results")
IMAGE_SHAPES = {"digits": (1, 16, 16), "mnist": (1, 32, 32), "cifar10": (3, 32, 32), "celeba": (3, 64, 64)}


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def variants(precisions: list[str], contiguous: bool, compile_: bool, matmul_wgrad: bool) -> list[dict]:
    """The training set-ups timed side by side for one network (the first is the reference)."""
    default = {"channels_last": True, "compile": False, "matmul_wgrad": False}
    out = [{"precision": p, **default} for p in precisions]
    if matmul_wgrad:
        out += [{"precision": p, **default, "matmul_wgrad": True} for p in precisions]
    if contiguous:
        out += [{"precision": p, **default, "channels_last": False} for p in precisions]
    if compile_:
        out += [{"precision": p, **default, "compile": True} for p in precisions]
    return out


def describe(setup: dict) -> str:
    return " ".join([setup["precision"], "channels_last" if setup["channels_last"] else "contiguous"]
                    + ["matmul-wgrad"] * setup["matmul_wgrad"] + ["compiled"] * setup["compile"])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_network(dataset: str, width: float, setups: list[dict], steps: int, batch_size: int,
                 device: torch.device = torch.device("cpu"), seed: int = 0) -> list[dict]:
    """Seconds per training step of each set-up in ``setups``, their steps interleaved."""
    torch.manual_seed(seed)
    base = build_model(dataset, beta=0.05, width=width).to(device)
    x = torch.rand(batch_size, *IMAGE_SHAPES[dataset], generator=torch.Generator().manual_seed(seed)).to(device)
    trainers = []
    for setup in setups:
        model = copy.deepcopy(base)
        if setup["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
        if setup["matmul_wgrad"]:
            use_matmul_weight_grad(model)
        forward = torch.compile(model) if setup["compile"] else model
        optimizer = torch.optim.Adam(model.parameters(), lr=DATASET_DEFAULTS[dataset]["lr"])
        started = time.perf_counter()
        train_step(forward, optimizer, x, setup["precision"], setup["channels_last"])  # warm-up
        _sync(device)
        trainers.append((forward, optimizer, time.perf_counter() - started, []))
    for _ in range(steps):
        for setup, (forward, optimizer, _, times) in zip(setups, trainers):
            started = time.perf_counter()
            train_step(forward, optimizer, x, setup["precision"], setup["channels_last"])
            _sync(device)
            times.append(time.perf_counter() - started)
    rows = []
    for setup, (_, _, first, times) in zip(setups, trainers):
        median = statistics.median(times)
        rows.append({"dataset": dataset, "width": width, **setup, "batch_size": batch_size, "steps": steps,
                     "median_step_s": median, "min_step_s": min(times), "first_step_s": first,
                     "images_per_s": batch_size / median})
    reference = rows[0]["median_step_s"]  # fp32, channels_last, not compiled
    for row in rows:
        row["speedup_vs_fp32"] = reference / row["median_step_s"]
    return rows


def markdown(results: dict) -> str:
    lines = [f"Training speed (`{results['command']}`): images/s of one training step (forward, backward, "
             f"Adam) of the EAE, batch {results['batch_size']}, {results['threads']} threads, median of "
             f"{results['steps']} steps after a warm-up; the set-ups of one network alternate step by step.",
             "",
             (f"GPU: {results['gpu']}; " if results.get("gpu") else "")
             + f"CPU: {results['cpu']} ({results['bf16_feature'] or 'no bf16 instructions'}), torch "
             f"{results['torch']}; load average {results['load_before']} before, {results['load_after']} after "
             "(the machine is shared: compare the ratios within a network, measured under the same load).",
             "",
             "| network | width | set-up | images/s | vs the first (fp32) |",
             "| --- | ---: | --- | ---: | ---: |"]
    for r in results["rows"]:
        lines.append(f"| {r['dataset']} | {r['width']:g} | {describe(r)} | {r['images_per_s']:.1f} | "
                     f"{r['speedup_vs_fp32']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="digits,mnist",
                        help=f"comma-separated networks (default digits,mnist; any of {','.join(IMAGE_SHAPES)})")
    parser.add_argument("--widths", default="1,0.25", help="comma-separated widths (default 1,0.25)")
    parser.add_argument("--precisions", default=None,
                        help="comma-separated precisions (default fp32,bf16; fp32 only without bf16 support)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per set-up (default 3)")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=100, help="images per step (default 100)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--contiguous", action="store_true", help="also time the contiguous layout")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (compiles for minutes)")
    parser.add_argument("--matmul-wgrad", dest="matmul_wgrad", action="store_true",
                        help="also time the weight gradient as one matrix product (python/conv_wgrad.py)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--out", default=str(RESULTS), help="output folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    datasets = [d for d in args.datasets.split(",") if d]
    unknown = [d for d in datasets if d not in IMAGE_SHAPES]
    if unknown or args.steps < 1:
        parser.error(f"--datasets must name networks among {', '.join(IMAGE_SHAPES)} and --steps be >= 1")
    device = resolve_device(args.device)
    feature = cpu_bf16_feature()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    bf16 = torch.cuda.is_bf16_supported() if gpu else feature is not None
    precisions = (args.precisions.split(",") if args.precisions else ["fp32", "bf16"] if bf16 else ["fp32"])
    for precision in precisions:
        check_precision(precision, device)
    if precisions[0] != "fp32":
        parser.error("--precisions must start with fp32 (the reference of the ratios)")
    torch.set_num_threads(args.threads)
    command = " ".join(["python -m benchmarks.train_speed", *(sys.argv[1:] if argv is None else argv)])
    results = {"command": command, "device": str(device), "gpu": gpu, "cpu": cpu_name(), "bf16_feature": feature, "torch": torch.__version__,
               "threads": args.threads, "batch_size": args.batch_size, "steps": args.steps,
               "load_before": load_average(), "rows": []}
    for dataset in datasets:
        for width in (float(w) for w in args.widths.split(",")):
            rows = time_network(dataset, width, variants(precisions, args.contiguous, args.compile, args.matmul_wgrad),
                                args.steps, args.batch_size, device)
            for r in rows:
                print(f"{dataset} width {width:g} {describe(r)}: {r['images_per_s']:.1f} images/s "
                      f"({r['speedup_vs_fp32']:.2f}x the first)", flush=True)
            results["rows"] += rows
    results["load_after"] = load_average()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_speed.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "train_speed.md").write_text(markdown(results))
    print(f"wrote {out / 'train_speed.md'} (load average {results['load_before']} -> {results['load_after']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
