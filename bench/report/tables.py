"""The method tables of a run's results (Markdown, LaTeX, CSV): one row per method and task,
the selection metric over seeds with its confidence interval, the paired difference to a
reference method, efficiency, and ratios to the reference."""

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
from bench.report.stats import bootstrap_interval, marked_best, mean_interval, paired_difference

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
        if "recipe" in tags:  # bench.recipe: its name and the start of its content hash
            row["recipe"] = f"{tags['recipe']} ({tags.get('recipe_sha256', '')[:8]})"
        row.update({f"metric.{k}": v for k, v in r["metrics"].items() if isinstance(v, int | float)})
        row.update({f"eff.{k}": v for k, v in r["efficiency"].items() if isinstance(v, int | float)})
        if "metrics_per_item" in r:
            row["items"] = r["metrics_per_item"]
        rows.append(row)
    return pd.DataFrame(rows)


def summarize(records: list[dict[str, Any]], reference: str | None = None, bootstrap: int = 0) -> pd.DataFrame:
    """Mean and 95 % confidence half-width (`.ci`, Student t) over distinct seeds per (task,
    preset, source, method, config): a row is one method at one config, so `--set` variants
    are rows of their own, labelled in a `config` column by what differs between a method's
    configs (the column is there only when some method has several). A seed recorded twice in
    a row (two run keys) is one value, their mean. Per task and metric, `metric.X.best` says
    which rows a table marks (`marked_best`). The selection metric's difference to `reference`
    (default: lavish if present, else full; its first row where it has several configs) is
    paired by seed (`ref_delta`, `.ci`, `.seeds`), and memory and time are ratios to it.
    `bootstrap` > 0 adds a per-item bootstrap interval of one seed (`bootstrap_columns`).
    Rows are grouped by task; tasks, and methods within a task, come in the order they
    first appear in the records, so a partial rerun appended later does not scatter rows."""
    df = frame(records)
    if df.empty:
        return df
    keys = [*IDENTITY, "config"]
    per_seed = df.groupby([*keys, "seed"], sort=False).mean(numeric_only=True)
    grouped = per_seed.groupby(level=keys, sort=False)
    out = grouped.mean().join(grouped.agg(ci_half_width).add_suffix(".ci")).join(grouped.size().rename("seeds"))
    for col in ("candidate", "recipe"):
        if col in df:
            out = out.join(df.groupby(keys, sort=False)[col].agg(lambda v: " | ".join(dict.fromkeys(v.dropna()))))
    samples = {key: part.droplevel(keys) for key, part in per_seed.groupby(level=keys, sort=False)}
    out = out.join(_marks(out.index, samples))
    if bootstrap:
        out = out.join(bootstrap_columns(df, out.index, bootstrap))
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
        out = out.join(_reference_deltas(out.index, samples, ref))
        out.attrs["reference"] = ref
        out.attrs["reference_has_configs"] = bool(several.any())
    first_seen = {col: {name: i for i, name in enumerate(dict.fromkeys(df[col]))} for col in ("task", "method")}
    out = out.reset_index().sort_values(["task", "method"], key=lambda c: c.map(first_seen[c.name]), kind="stable")
    out = out.reset_index(drop=True)
    labels = config_labels(out)
    return out.assign(config=labels) if any(labels) else out.drop(columns="config")


def ci_half_width(values: pd.Series) -> float:
    """The 95 % confidence half-width of a column's values over seeds; NaN for one value."""
    values = values.dropna()
    half = mean_interval(list(values)).half_width if len(values) else None
    return float("nan") if half is None else half


def _by_seed(per_seed: pd.DataFrame, col: str) -> dict[int, float]:
    return per_seed[col].dropna().to_dict() if col in per_seed else {}


def _marks(index: pd.MultiIndex, samples: dict[tuple, pd.DataFrame]) -> pd.DataFrame:
    """`metric.X.best` per row: marked among its task's rows by `marked_best`, for each of
    the task's metrics (NaN on rows of other tasks)."""
    marks: dict[str, pd.Series] = {}
    for task, rows in pd.Series(list(index), index=index).groupby(level="task", sort=False):
        for metric in get_task(task).metric_keys:
            col = f"metric.{metric}"
            marked = marked_best([_by_seed(samples[key], col) for key in rows])
            if f"{col}.best" not in marks:
                marks[f"{col}.best"] = pd.Series(index=index, dtype=object)
            marks[f"{col}.best"].loc[rows.index] = marked
    return pd.DataFrame(marks, index=index)


def _reference_deltas(index: pd.MultiIndex, samples: dict[tuple, pd.DataFrame], ref: str) -> pd.DataFrame:
    """Per row, its selection metric minus the reference's over the seeds both rows have:
    `ref_delta` ± `ref_delta.ci` over `ref_delta.seeds` shared seeds (paired t); NaN for the
    reference's own row and where no seed is shared. The reference is its first config in
    the row's (task, preset, source)."""
    first: dict[tuple, tuple] = {}
    for key in index:
        if key[IDENTITY.index("method")] == ref:
            first.setdefault(key[:3], key)
    deltas = pd.DataFrame(index=index, columns=["ref_delta", "ref_delta.ci", "ref_delta.seeds"], dtype=float)
    for key in index:
        base = first.get(key[:3])
        if base is None or base == key:
            continue
        col = f"metric.{get_task(key[0]).selection_metric}"
        diff = paired_difference(_by_seed(samples[key], col), _by_seed(samples[base], col))
        if diff is not None:
            deltas.loc[key] = [diff.mean, float("nan") if diff.half_width is None else diff.half_width, diff.n]
    return deltas


def bootstrap_columns(df: pd.DataFrame, index: pd.MultiIndex, n_resamples: int) -> pd.DataFrame:
    """Per row of the summary (`index`), the selection metric of ONE seed, the lowest whose
    record holds per-item test scores, with the percentile 95 % bootstrap interval over its
    test items (`n_resamples` resamples, resampling seed 0): `bootstrap.seed`, `.value` (the
    items' mean), `.low`, `.high`; NaN where no record of the row holds them."""
    if n_resamples < 1:
        raise ValueError(f"--bootstrap needs a positive number of resamples, got {n_resamples}")
    columns = ["bootstrap.seed", "bootstrap.value", "bootstrap.low", "bootstrap.high"]
    out = pd.DataFrame(index=index, columns=columns, dtype=float)
    if "items" not in df:
        return out
    for key, runs in df.groupby(list(index.names), sort=False):
        metric = get_task(key[0]).selection_metric
        held = [(seed, items[metric]) for seed, items in zip(runs["seed"], runs["items"], strict=True)
                if isinstance(items, dict) and items.get(metric)]  # fmt: skip
        if held:
            seed, items = min(held, key=lambda pair: pair[0])
            out.loc[key] = [seed, sum(items) / len(items), *bootstrap_interval(items, n_resamples)]
    return out


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


def mean_ci(mean: float, half_width: float, signed: bool = False) -> str:
    """'mean ± 95 % CI half-width'; the value alone where there is no interval (one seed)."""
    value = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    return value if pd.isna(half_width) else f"{value} ± {half_width:.2f}"


def paper_table(summary: pd.DataFrame, all_metrics: bool = False) -> pd.DataFrame:
    """The display table: metric mean ± 95 % CI half-width (the selection metric, or all),
    its paired difference to the reference, the bootstrap interval where asked, efficiency
    in readable units, ratios to the reference; the config of each row where a method has
    several, and its recipe (bench.recipe) where some row ran one."""
    delta = f"Δ vs {summary.attrs['reference']}" if "ref_delta" in summary else None
    rows = []
    for _, r in summary.iterrows():
        task = get_task(r["task"])
        row: dict[str, Any] = {"task": r["task"], "method": r["method"]}
        if "config" in summary:
            row["config"] = r["config"]
        if "recipe" in summary:
            row["recipe"] = r["recipe"]
        row |= {"seeds": int(r["seeds"]), "metric": task.selection_metric}
        for key in task.metric_keys if all_metrics else ("value",):
            col = f"metric.{task.selection_metric if key == 'value' else key}"
            if col in r and pd.notna(r[col]):
                row[key] = mean_ci(r[col], r.get(col + ".ci", float("nan")))
        if delta:
            row[delta] = "" if pd.isna(r["ref_delta"]) else mean_ci(r["ref_delta"], r["ref_delta.ci"], signed=True)
        if "bootstrap.value" in summary:
            row["bootstrap 95 %"] = "" if pd.isna(r["bootstrap.value"]) else _bootstrap_cell(r)
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


def _bootstrap_cell(r: pd.Series) -> str:
    """'value [low, high] (seed s)': one seed's metric and its interval over the test items."""
    interval = f"[{r['bootstrap.low']:.2f}, {r['bootstrap.high']:.2f}]"
    return f"{r['bootstrap.value']:.2f} {interval} (seed {r['bootstrap.seed']:.0f})"


def _bold_best(table: pd.DataFrame, summary: pd.DataFrame, wrap: tuple[str, str]) -> pd.DataFrame:
    """Mark per task in each column: the metric rows `summarize` marked (the best, or all
    tied with it), the least memory/time (the most throughput)."""
    shown = table.map(lambda v: "" if pd.isna(v) else str(v)).astype(object)
    for task, idx in table.groupby("task").groups.items():
        metric_cols = {"value": get_task(task).selection_metric, **{k: k for k in get_task(task).metric_keys}}
        for key, metric in metric_cols.items():
            col = f"metric.{metric}.best"
            if key in table and col in summary:
                for row in idx[summary.loc[idx, col].eq(True).to_numpy()]:
                    shown.loc[row, key] = f"{wrap[0]}{shown.loc[row, key]}{wrap[1]}"
        if len(idx) < 2:
            continue
        for col, (label, _, direction) in EFFICIENCY_COLUMNS.items():
            if label in table and f"eff.{col}" in summary and summary.loc[idx, f"eff.{col}"].notna().any():
                vals = summary.loc[idx, f"eff.{col}"]
                best = vals.idxmin() if direction == "min" else vals.idxmax()
                shown.loc[best, label] = f"{wrap[0]}{shown.loc[best, label]}{wrap[1]}"
    return shown


def table_note(summary: pd.DataFrame, bootstrap: int = 0) -> str:
    """What the table's numbers and bold mean: the statistics in words, under the table."""
    ref = summary.attrs.get("reference")
    first = " (its first config where it has several)" if summary.attrs.get("reference_has_configs") else ""
    parts = [
        "Metrics: mean ± 95 % CI half-width over n seeds (Student t, n - 1 degrees of freedom; n is the `seeds` "
        "column; one seed: the value alone)."
    ]
    if ref:
        parts.append(
            f"Δ vs {ref}: the selection metric minus `{ref}`'s{first}, over the seeds both rows have: mean "
            "difference ± 95 % CI half-width (paired t); one shared seed: the difference alone."
        )
    if ref and "mem_vs_ref" in summary:
        parts.append(f"Ratios are relative to `{ref}`{first}.")
    parts.append(
        "Bold metric: the best mean alone where the 95 % interval of its difference to the runner-up excludes 0 "
        "(paired by seed over the seeds both rows have, if at least 2; else Welch's t over all seeds of each, "
        "degrees of freedom rounded down); otherwise the best and every row tied with it (an interval against it "
        "that includes 0, or a single seed) are bold. Bold efficiency: the best value, these being deterministic "
        "or nearly so per config."
    )
    if bootstrap and summary.get("bootstrap.value", pd.Series(dtype=float)).notna().any():
        parts.append(
            f"bootstrap 95 %: the selection metric of one seed (the row's lowest with per-item test scores) and "
            f"its percentile interval over the test items ({bootstrap} resamples, resampling seed 0): the test "
            "set's noise, not the seeds'."
        )
    elif bootstrap:
        parts.append("bootstrap: no record holds per-item test scores (`metrics_per_item`); no interval.")
    return "\n\n" + " ".join(parts)


def write_tables(
    records: list[dict[str, Any]],
    out_dir: Path,
    name: str = "results",
    reference: str | None = None,
    bootstrap: int = 0,
) -> pd.DataFrame:
    """Write OUT/tables/{name}.md, .tex and .csv; return the display table. `bootstrap` > 0
    adds each row's per-item bootstrap interval with that many resamples."""
    summary = summarize(records, reference, bootstrap)
    tables = out_dir / "tables"
    if summary.empty:
        return summary
    note = table_note(summary, bootstrap)
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
