"""The method tables of a run's results (Markdown, LaTeX, CSV): one row per method and task,
the selection metric over seeds, efficiency, and ratios to a reference method."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd

from bench.registry import get_task
from bench.report.formats import MIB, write_csv, write_markdown_and_latex
from bench.report.selection import select_candidates, write_selection

EFFICIENCY_COLUMNS = {
    "encoder_trainable_params": ("params (M)", 1e-6, "min"),
    "activation_bytes": ("act. mem (MiB)", 1 / MIB, "min"),
    "train_mem_bytes_est": ("train mem est. (MiB)", 1 / MIB, "min"),
    "cuda_peak_allocated_bytes": ("CUDA peak (MiB)", 1 / MIB, "min"),
    "train_step_s": ("step (ms)", 1e3, "min"),
    "train_samples_per_s": ("train samples/s", 1.0, "max"),
    "infer_samples_per_s": ("infer samples/s", 1.0, "max"),
}


def frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per finished run: identity columns, metrics and efficiency flattened."""
    rows = []
    for r in select_candidates(records):
        if r.get("status") != "ok":
            continue
        row = {k: r[k] for k in ("method", "task", "preset", "source", "seed")}
        tags = r.get("tags") or {}
        if "candidate" in tags:
            row["candidate"] = tags["candidate"]
        row.update({f"metric.{k}": v for k, v in r.get("metrics", {}).items() if isinstance(v, int | float)})
        row.update({f"eff.{k}": v for k, v in r.get("efficiency", {}).items() if isinstance(v, int | float)})
        rows.append(row)
    return pd.DataFrame(rows)


def summarize(records: list[dict[str, Any]], reference: str | None = None) -> pd.DataFrame:
    """Mean and std over seeds per (task, preset, source, method), with the memory and
    time of each method relative to `reference` (default: lavish if present, else full).
    Rows are grouped by task; tasks, and methods within a task, come in the order they
    first appear in the records, so a partial rerun appended later does not scatter rows."""
    df = frame(records)
    if df.empty:
        return df
    keys = ["task", "preset", "source", "method"]
    grouped = df.groupby(keys, sort=False)
    out = grouped.mean(numeric_only=True).drop(columns="seed")
    std = grouped.std(numeric_only=True, ddof=0).drop(columns="seed")
    out = out.join(std.add_suffix(".std")).join(grouped.size().rename("seeds"))
    if "candidate" in df:
        out = out.join(grouped["candidate"].agg(lambda v: " | ".join(dict.fromkeys(v.dropna()))))
    methods = set(df["method"])
    ref = reference or next((m for m in ("lavish", "full") if m in methods), None)
    if ref in methods:
        for col, name in (("eff.train_mem_bytes_est", "mem_vs_ref"), ("eff.train_step_s", "time_vs_ref")):
            if col in out:
                base = out[col].xs(ref, level="method")
                out[name] = out[col] / base.reindex(out.index.droplevel("method")).to_numpy()
        out.attrs["reference"] = ref
    first_seen = {col: {name: i for i, name in enumerate(dict.fromkeys(df[col]))} for col in ("task", "method")}
    out = out.reset_index().sort_values(["task", "method"], key=lambda c: c.map(first_seen[c.name]), kind="stable")
    return out.reset_index(drop=True)


def paper_table(summary: pd.DataFrame, all_metrics: bool = False) -> pd.DataFrame:
    """The display table: metric mean +- std (the selection metric, or all), efficiency
    in readable units, ratios to the reference."""
    rows = []
    for _, r in summary.iterrows():
        task = get_task(r["task"])
        row: dict[str, Any] = {"task": r["task"], "method": r["method"], "seeds": int(r["seeds"])}
        row["metric"] = task.selection_metric
        for key in task.metric_keys if all_metrics else ("value",):
            col = f"metric.{task.selection_metric if key == 'value' else key}"
            if col in r and pd.notna(r[col]):
                std = r.get(col + ".std", float("nan"))
                row[key] = f"{r[col]:.2f} ± {0.0 if pd.isna(std) else std:.2f}"
        for col, (label, scale, _) in EFFICIENCY_COLUMNS.items():
            if f"eff.{col}" in r and pd.notna(r[f"eff.{col}"]):
                row[label] = round(r[f"eff.{col}"] * scale, 3)
        for col, label in (("mem_vs_ref", "mem / ref"), ("time_vs_ref", "time / ref")):
            if col in r and pd.notna(r[col]):
                row[label] = round(r[col], 3)
        if isinstance(r.get("candidate"), str):
            row["chosen on val"] = r["candidate"]
        rows.append(row)
    return pd.DataFrame(rows)


def _bold_best(table: pd.DataFrame, summary: pd.DataFrame, wrap: tuple[str, str]) -> pd.DataFrame:
    """Mark the best value per task in each column: highest metric, least memory/time."""
    shown = table.map(lambda v: "" if pd.isna(v) else str(v)).astype(object)
    for task, idx in table.groupby("task").groups.items():
        if len(idx) < 2:
            continue
        metric_cols = {"value": get_task(task).selection_metric, **{k: k for k in get_task(task).metric_keys}}
        for key, metric in metric_cols.items():
            col = f"metric.{metric}"
            if key in table and col in summary:
                best = summary.loc[idx, col].idxmax()
                shown.loc[best, key] = f"{wrap[0]}{shown.loc[best, key]}{wrap[1]}"
        for col, (label, _, direction) in EFFICIENCY_COLUMNS.items():
            if label in table and f"eff.{col}" in summary and summary.loc[idx, f"eff.{col}"].notna().any():
                vals = summary.loc[idx, f"eff.{col}"]
                best = vals.idxmin() if direction == "min" else vals.idxmax()
                shown.loc[best, label] = f"{wrap[0]}{shown.loc[best, label]}{wrap[1]}"
    return shown


def write_tables(records: list[dict[str, Any]], out_dir: Path, name: str = "results", reference: str | None = None):
    """Write OUT/tables/{name}.md, .tex and .csv; return the display table."""
    summary = summarize(records, reference)
    tables = out_dir / "tables"
    if summary.empty:
        return summary
    ref = summary.attrs.get("reference")
    ratios = ref and "mem_vs_ref" in summary
    note = f"\n\nRatios are relative to `{ref}`. Mean ± std over seeds." if ratios else "\n\nMean ± std over seeds."
    table = paper_table(summary)
    _write_formats(table, summary, tables / name, note + avs_protocols(records) + "\n")
    for task, idx in summary.groupby("task", sort=False).groups.items():
        part = summary.loc[idx]
        task_note = note + avs_protocols([r for r in records if r["task"] == task]) + "\n"
        _write_formats(paper_table(part, all_metrics=True), part, tables / f"{name}_{task}", task_note)
    write_csv(tables / f"{name}.csv", summary)
    write_selection(records, tables / "selection")
    return table


def avs_protocols(records: list[dict[str, Any]]) -> str:
    """A table note naming the scoring protocol of the finished runs whose task has one
    (AVS); '' when there are none. Records from before the option scored `per_video`."""
    used = set()
    for r in records:
        fields = {f.name for f in dataclasses.fields(get_task(r["task"]).config_cls)}
        if r.get("status") == "ok" and "protocol" in fields:
            cfg = r["config"]["task"]
            protocol = cfg.get("protocol", "per_video")
            batches = f" (batches of {cfg['eval_batch_size']} videos)" if protocol == "avsbench" else ""
            used.add(f"`{protocol}`{batches}")
    return f" AVS mIoU and F-score: {' and '.join(sorted(used))} protocol." if used else ""


def _write_formats(table: pd.DataFrame, summary: pd.DataFrame, stem: Path, note: str) -> None:
    table = table.set_axis(summary.index)
    shown, typeset = _bold_best(table, summary, ("**", "**")), _bold_best(table, summary, ("\\textbf{", "}"))
    write_markdown_and_latex(stem, shown, typeset, note)
