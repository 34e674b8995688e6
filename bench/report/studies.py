"""Ablation tables and figures of a `bench sweep` study: one row or point per swept value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from bench.registry import get_task
from bench.report.figures import pareto_front
from bench.report.formats import MIB, save_figure, write_csv, write_markdown_and_latex
from bench.report.records import latest_per_key
from bench.report.stats import marked_best
from bench.report.tables import EFFICIENCY_COLUMNS, ci_half_width, mean_ci


def config_value(record: dict[str, Any], dotted: str) -> Any:
    """A `section.key` config path read from a record (method and task sections are stored
    under `method` and `task`)."""
    section, key = dotted.split(".", 1)
    stored = "method" if section == record["method"] else "task" if section == record["task"] else section
    return record["config"].get(stored, {}).get(key)


def study_summary(records: list[dict[str, Any]], study: str) -> tuple[pd.DataFrame, list[str]]:
    """One row per swept point of `study`: metric and efficiency means and 95 % CI half-widths
    (`.ci`) over distinct seeds (the last record per run key, so a retried trial is not
    counted twice), which points a table marks on the selection metric (`.best`), or the
    failure status."""
    mine = latest_per_key([r for r in records if (r.get("tags") or {}).get("study") == study])
    if not mine:
        return pd.DataFrame(), []
    keys = mine[0]["tags"]["swept"].split(",")
    rows = []
    for r in mine:
        row: dict[str, Any] = {k: config_value(r, k) for k in keys}
        row.update(task=r["task"], seed=r["seed"], status=r["status"])
        row.update({f"metric.{k}": v for k, v in r.get("metrics", {}).items() if isinstance(v, int | float)})
        row.update({f"eff.{k}": v for k, v in r.get("efficiency", {}).items() if isinstance(v, int | float)})
        rows.append(row)
    df = pd.DataFrame(rows)
    ok = df[df["status"] == "ok"]
    per_seed = ok.drop(columns=["task", "status"]).groupby([*keys, "seed"], sort=True).mean()
    points = per_seed.groupby(level=keys, sort=True)
    out = points.mean().join(points.agg(ci_half_width).add_suffix(".ci")).join(points.size().rename("seeds"))
    col = f"metric.{get_task(df['task'].iloc[0]).selection_metric}"
    if col in per_seed:
        by_seed = [part.droplevel(keys)[col].dropna().to_dict() for _, part in points]
        out[f"{col}.best"] = marked_best(by_seed)
    failed = df[~df.set_index(keys).index.isin(out.index)].drop_duplicates(keys).set_index(keys)["status"]
    out = pd.concat([out, failed.to_frame()]).sort_index().reset_index()
    out.attrs["task"] = df["task"].iloc[0]
    return out, keys


def ablation_table(summary: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Rows are the swept values, as in a paper's ablation table; failed points show why."""
    metric = get_task(summary.attrs["task"]).selection_metric
    col = f"metric.{metric}"
    rows = []
    for _, r in summary.iterrows():
        row: dict[str, Any] = {k.split(".", 1)[1]: r[k] for k in keys}
        if col in r and pd.notna(r[col]):
            row[metric] = mean_ci(r[col], r.get(col + ".ci", float("nan")))
            row["seeds"] = int(r["seeds"])
        else:
            row[metric], row["seeds"] = r.get("status", "failed"), 0
        for eff, (label, scale, _) in EFFICIENCY_COLUMNS.items():
            if f"eff.{eff}" in r and pd.notna(r[f"eff.{eff}"]):
                row[label] = round(r[f"eff.{eff}"] * scale, 3)
        rows.append(row)
    return pd.DataFrame(rows)


def write_study_tables(records: list[dict[str, Any]], out_dir: Path, study: str) -> pd.DataFrame:
    """OUT/tables/ablation_{study}.{md,tex,csv}; returns the display table (empty: no records)."""
    summary, keys = study_summary(records, study)
    if summary.empty:
        return summary
    table = ablation_table(summary, keys)
    stem = out_dir / "tables" / f"ablation_{study}"
    metric = get_task(summary.attrs["task"]).selection_metric
    shown = table.map(lambda v: "" if pd.isna(v) else str(v)).astype(object)
    marked = f"metric.{metric}.best"
    if marked in summary:
        for best in summary.index[summary[marked].eq(True).to_numpy()]:
            shown.loc[best, metric] = f"**{shown.loc[best, metric]}**"
    note = (
        f"\n\nStudy `{study}` ({summary.attrs['task']}); {metric}: mean ± 95 % CI half-width over n seeds "
        "(Student t; one seed: the value alone). Bold: the best mean alone where the 95 % interval of its "
        "difference to the runner-up excludes 0 (paired by seed, else Welch's t), otherwise every point tied "
        "with it.\n"
    )
    write_markdown_and_latex(stem, shown, shown.map(lambda v: v.replace("**", "")), note)
    write_csv(stem.with_suffix(".csv"), summary)
    return table


def write_study_figures(
    records: list[dict[str, Any]], out_dir: Path, study: str, importances: dict[str, float] | None = None
) -> list[Path]:
    """Accuracy vs estimated memory of every swept point with the Pareto front, and optuna's
    parameter importances when there are any."""
    summary, keys = study_summary(records, study)
    paths: list[Path] = []
    figures = out_dir / "figures"
    metric = get_task(summary.attrs["task"]).selection_metric if not summary.empty else ""
    if not summary.empty and {"eff.train_mem_bytes_est", f"metric.{metric}"} <= set(summary):
        ok = summary.dropna(subset=["eff.train_mem_bytes_est", f"metric.{metric}"])
        figures.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(5.5, 4))
        xs, ys = ok["eff.train_mem_bytes_est"] / MIB, ok[f"metric.{metric}"]
        ax.errorbar(xs, ys, yerr=ok.get(f"metric.{metric}.ci"), fmt="o", capsize=3)  # 95 % CI, as the tables
        for (_, r), x, y in zip(ok.iterrows(), xs, ys, strict=True):
            label = ", ".join(f"{k.split('.', 1)[1]}={r[k]}" for k in keys)
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        front = pareto_front(list(zip(xs, ys, strict=True)))
        ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="grey", label="Pareto front")
        ax.set_xlabel("estimated training memory (MiB)")
        ax.set_ylabel(metric)
        ax.set_title(f"{study} ({summary.attrs['task']})")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(save_figure(fig, figures / f"ablation_{study}_pareto.png"))
    if importances:
        figures.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(5, 0.5 + 0.5 * len(importances)))
        ax.barh(list(importances), list(importances.values()))
        ax.set_xlabel(f"importance for {metric or 'the first objective'} (optuna default evaluator)")
        fig.tight_layout()
        paths.append(save_figure(fig, figures / f"ablation_{study}_importance.png"))
    return paths
