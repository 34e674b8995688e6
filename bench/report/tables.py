"""The method tables of a run's results (Markdown, LaTeX, CSV): one row per method and task,
the selection metric over seeds, efficiency, and ratios to a reference method."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pandas as pd

from bench.registry import get_task
from bench.report.formats import MIB, write_csv, write_markdown_and_latex
from bench.report.records import latest_per_key
from bench.report.selection import select_candidates, write_selection

IDENTITY = ["task", "preset", "source", "method"]
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
    """One row per finished run (the latest record of each run key, of the chosen candidates):
    identity columns, the config (canonical JSON), metrics and efficiency flattened. Records
    must hold what `ResultsStore.load` checks."""
    rows = []
    for r in select_candidates(latest_per_key(records)):
        if r["status"] != "ok":
            continue
        row = {k: r[k] for k in IDENTITY} | {"seed": r["seed"], "config": json.dumps(r["config"], sort_keys=True)}
        tags = r.get("tags") or {}
        if "candidate" in tags:
            row["candidate"] = tags["candidate"]
        row.update({f"metric.{k}": v for k, v in r["metrics"].items() if isinstance(v, int | float)})
        row.update({f"eff.{k}": v for k, v in r["efficiency"].items() if isinstance(v, int | float)})
        rows.append(row)
    return pd.DataFrame(rows)


def summarize(records: list[dict[str, Any]], reference: str | None = None) -> pd.DataFrame:
    """Mean and std over distinct seeds per (task, preset, source, method, config): a row is
    one method at one config, so `--set` variants are rows of their own, labelled in a
    `config` column by what differs between a method's configs (the column is there only
    when some method has several). Memory and time of each row are relative to `reference`
    (default: lavish if present, else full; its first row where it has several configs).
    Rows are grouped by task; tasks, and methods within a task, come in the order they
    first appear in the records, so a partial rerun appended later does not scatter rows."""
    df = frame(records)
    if df.empty:
        return df
    keys = [*IDENTITY, "config"]
    grouped = df.groupby(keys, sort=False)
    out = grouped.mean(numeric_only=True).drop(columns="seed")
    std = grouped.std(numeric_only=True, ddof=0).drop(columns="seed")
    out = out.join(std.add_suffix(".std")).join(grouped["seed"].nunique().rename("seeds"))
    if "candidate" in df:
        out = out.join(grouped["candidate"].agg(lambda v: " | ".join(dict.fromkeys(v.dropna()))))
    methods = set(df["method"])
    ref = reference or next((m for m in ("lavish", "full") if m in methods), None)
    if ref in methods:
        base = out.xs(ref, level="method")
        several = base.index.droplevel("config").duplicated()
        base = base[~several].droplevel("config")
        at = out.index.droplevel(["method", "config"])
        for col, name in (("eff.train_mem_bytes_est", "mem_vs_ref"), ("eff.train_step_s", "time_vs_ref")):
            if col in out:
                out[name] = out[col] / base[col].reindex(at).to_numpy()
        out.attrs["reference"] = ref
        out.attrs["reference_has_configs"] = bool(several.any())
    first_seen = {col: {name: i for i, name in enumerate(dict.fromkeys(df[col]))} for col in ("task", "method")}
    out = out.reset_index().sort_values(["task", "method"], key=lambda c: c.map(first_seen[c.name]), kind="stable")
    out = out.reset_index(drop=True)
    labels = config_labels(out)
    return out.assign(config=labels) if any(labels) else out.drop(columns="config")


def config_labels(summary: pd.DataFrame) -> list[str]:
    """Per row, the `section.key=value` items in which its config differs from the other
    configs of its method (same task, preset and source); '' for a method with one config.
    The method's and the task's sections are named after them, as `--set` names them."""
    rows = zip(summary["config"], summary["method"], summary["task"], strict=True)
    flat = [_flatten(json.loads(config), method, task) for config, method, task in rows]
    labels = [""] * len(summary)
    for idx in summary.groupby(IDENTITY, sort=False).indices.values():
        configs = [flat[i] for i in idx]
        names = dict.fromkeys(name for config in configs for name in config)
        differ = [n for n in names if len({json.dumps(c.get(n), sort_keys=True) for c in configs}) > 1]
        for i in idx:
            labels[i] = " ".join(f"{n}={_shown(flat[i].get(n))}" for n in differ)
    return labels


def _flatten(config: dict[str, dict[str, Any]], method: str, task: str) -> dict[str, Any]:
    named = {"method": method, "task": task}
    return {f"{named.get(s, s)}.{k}": v for s, values in config.items() for k, v in values.items()}


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def row_labels(summary: pd.DataFrame) -> list[str]:
    """What names a row in a figure: its method, and its config where the method has several."""
    if "config" not in summary:
        return list(summary["method"])
    return [f"{m} {c}" if c else m for m, c in zip(summary["method"], summary["config"], strict=True)]


def mean_std(mean: float, std: float, seeds: int) -> str:
    """'mean ± std' over seeds; one seed has no spread to show."""
    return f"{mean:.2f}" if seeds == 1 else f"{mean:.2f} ± {0.0 if pd.isna(std) else std:.2f}"


def paper_table(summary: pd.DataFrame, all_metrics: bool = False) -> pd.DataFrame:
    """The display table: metric mean +- std (the selection metric, or all), efficiency
    in readable units, ratios to the reference; the config of each row where a method has
    several."""
    rows = []
    for _, r in summary.iterrows():
        task = get_task(r["task"])
        row: dict[str, Any] = {"task": r["task"], "method": r["method"]}
        if "config" in summary:
            row["config"] = r["config"]
        row |= {"seeds": int(r["seeds"]), "metric": task.selection_metric}
        for key in task.metric_keys if all_metrics else ("value",):
            col = f"metric.{task.selection_metric if key == 'value' else key}"
            if col in r and pd.notna(r[col]):
                row[key] = mean_std(r[col], r.get(col + ".std", float("nan")), row["seeds"])
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
    first = " (its first config where it has several)" if summary.attrs.get("reference_has_configs") else ""
    note = (
        f"\n\nRatios are relative to `{ref}`{first}. Mean ± std over seeds." if ratios else "\n\nMean ± std over seeds."
    )
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
