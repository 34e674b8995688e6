"""Figures of a run's results: memory against the selection metric with the Pareto front, and
memory and step-time bars per method."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from bench.registry import get_task
from bench.report.formats import MIB, save_figure
from bench.report.tables import row_labels, summarize


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points (memory, accuracy) not dominated by one with less-or-equal memory and
    greater-or-equal accuracy; sorted by memory."""
    front, best = [], float("-inf")
    for mem, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            front.append((mem, acc))
            best = acc
    return front


def write_figures(records: list[dict[str, Any]], out_dir: Path, name: str = "results") -> list[Path]:
    """Memory vs accuracy with the Pareto front (one panel per task), and memory and
    step-time bars per method; a method with several configs has a point and a bar per config."""
    summary = summarize(records)
    paths: list[Path] = []
    if summary.empty or "eff.train_mem_bytes_est" not in summary:
        return paths
    summary["label"] = row_labels(summary)
    figures = out_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    paths.append(save_figure(memory_vs_metric(summary), figures / f"{name}_memory_vs_metric.png"))
    tasks = list(dict.fromkeys(summary["task"]))
    first = summary[summary["task"] == tasks[0]]
    fig, (ax_m, ax_t) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax_m.bar(first["label"], first["eff.train_mem_bytes_est"] / MIB, label="estimated total")
    ax_m.bar(first["label"], first["eff.activation_bytes"] / MIB, label="activations")
    ax_m.set_ylabel("MiB")
    ax_m.set_title(f"training memory ({tasks[0]}, one batch)")
    ax_m.legend(fontsize=7)
    ax_t.bar(first["label"], first["eff.train_step_s"] * 1e3)
    ax_t.set_ylabel("ms")
    ax_t.set_title("median training step")
    for ax in (ax_m, ax_t):
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    paths.append(save_figure(fig, figures / f"{name}_memory_time_bars.png"))
    return paths


def memory_vs_metric(summary: pd.DataFrame) -> plt.Figure:
    """One panel per task: each row's selection metric against its estimated training memory,
    with error bars of the tables' 95 % confidence half-widths over seeds (none for one
    seed), and the Pareto front. `summary` is `summarize`'s, with a `label` column."""
    tasks = list(dict.fromkeys(summary["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        sel = summary[summary["task"] == task]
        metric = get_task(task).selection_metric
        xs, ys = sel["eff.train_mem_bytes_est"] / MIB, sel[f"metric.{metric}"]
        ax.errorbar(xs, ys, yerr=sel.get(f"metric.{metric}.ci"), fmt="o", capsize=3)
        for x, y, m in zip(xs, ys, sel["label"], strict=True):
            ax.annotate(m, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        front = pareto_front(list(zip(xs, ys, strict=True)))
        ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="grey", label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel("estimated training memory (MiB, log)")
        ax.set_ylabel(f"{metric} (95 % CI over seeds)")
        ax.set_title(task)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
