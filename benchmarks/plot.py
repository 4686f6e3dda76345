"""Two PNG plots of a benchmark's results: time vs N and peak extra memory vs N, log-log, one
line per method, one panel per (d, k). Forward-only methods (faiss) are dashed: their time is
the forward neighbour search only."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

from .report import find, median  # noqa: E402


def _series(results: dict, name: str, d: int, k: int, value) -> tuple:
    xs, ys = [], []
    for n in results["settings"]["sizes"]:
        rec = find(results["records"], name, n, d, k)
        y = value(rec) if rec is not None and rec["status"] == "ok" else None
        if y:
            xs.append(n)
            ys.append(y)
    return xs, ys


def _figure(results: dict, value, ylabel: str, title: str, path: Path) -> None:
    s = results["settings"]
    dims, ks = s["dims"], s["ks"]
    fig, axes = plt.subplots(
        len(ks), len(dims), figsize=(max(6.0, 4.2 * len(dims)), 3.4 * len(ks) + 1.0), squeeze=False, sharex=True
    )
    names = [name for name, m in results["methods"].items() if m["available"]]
    for row, k in enumerate(ks):
        for col, d in enumerate(dims):
            ax = axes[row][col]
            for i, name in enumerate(names):
                method = results["methods"][name]
                xs, ys = _series(results, name, d, k, lambda rec: value(rec, method))
                if xs:
                    ax.plot(
                        xs, ys, marker="o", markersize=3, color=f"C{i}",
                        linestyle="--" if method["forward_only"] else "-",
                        linewidth=2.2 if method["is_ours"] else 1.3,
                        label=name + (" (fwd only)" if method["forward_only"] else ""),
                    )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.grid(True, which="major", alpha=0.3)
            ax.set_title(f"d={d}, k={k}", fontsize=10)
            if row == len(ks) - 1:
                ax.set_xlabel("N (rows)")
            if col == 0:
                ax.set_ylabel(ylabel)
    handles = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    ncol = min(len(handles), 2 if len(dims) == 1 else 5) or 1
    rows = -(-len(handles) // ncol)
    bottom = (0.05 + 0.045 * rows) / len(ks) ** 0.5  # room for the legend under the panels
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=ncol, fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, bottom, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(results: dict, out_dir: Path, stem: str) -> dict:
    """Write ``<stem>_time.png`` and ``<stem>_memory.png``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = results["settings"]["threads"]
    label = results["device_label"]
    if results["settings"]["device"] == "cpu":
        label += f", {threads} thread{'s' if threads > 1 else ''}"

    def seconds(rec, method):
        return median(rec, "fwd" if method["forward_only"] else "fwd_bwd")

    def peak(rec, method):
        phase = rec.get("fwd" if method["forward_only"] else "fwd_bwd") or {}
        return phase.get("peak_bytes") and phase["peak_bytes"] / 1e6

    paths = {"time_png": out_dir / f"{stem}_time.png", "memory_png": out_dir / f"{stem}_memory.png"}
    _figure(results, seconds, "seconds per call", f"Forward+backward time vs N ({label})", paths["time_png"])
    _figure(results, peak, "peak extra memory (MB)", f"Peak extra memory of forward+backward vs N ({label})",
            paths["memory_png"])
    return paths
