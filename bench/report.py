"""Paper-style tables (Markdown, LaTeX, CSV) and figures (PNG) from run records."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from bench.registry import get_task  # noqa: E402
from bench.results import atomic_write_text  # noqa: E402

MIB = 2**20
EFFICIENCY_COLUMNS = {
    "encoder_trainable_params": ("params (M)", 1e-6, "min"),
    "activation_bytes": ("act. mem (MiB)", 1 / MIB, "min"),
    "train_mem_bytes_est": ("train mem est. (MiB)", 1 / MIB, "min"),
    "cuda_peak_allocated_bytes": ("CUDA peak (MiB)", 1 / MIB, "min"),
    "train_step_s": ("step (ms)", 1e3, "min"),
    "train_samples_per_s": ("train samples/s", 1.0, "max"),
    "infer_samples_per_s": ("infer samples/s", 1.0, "max"),
}


def candidate_selection(records: list[dict[str, Any]]) -> pd.DataFrame:
    """For runs over candidate configurations (a plan's candidates or `--tune`): one row per
    (preset, source, method, candidate) with, per task, the val and test selection metric
    averaged over seeds, the candidate's rank among its method's candidates on each task's
    val mean (1 = best; ties share the average rank), the mean of those ranks and whether it
    is chosen: the lowest mean rank, the first listed on a tie. The rule was fixed before any
    test number was read, and reads none. A candidate missing a task (a failed run) cannot be
    chosen."""
    rows = []
    for r in records:
        candidate = (r.get("tags") or {}).get("candidate")
        if candidate is None or r.get("status") != "ok":
            continue
        metric = get_task(r["task"]).selection_metric
        rows.append(
            {**{k: r[k] for k in ("preset", "source", "method", "task", "seed")}, "candidate": candidate}
            | {"val": r["metrics"].get("val_" + metric), "test": r["metrics"].get(metric)}
        )
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    method_keys = ["preset", "source", "method"]
    per_task = df.groupby([*method_keys, "candidate", "task"], sort=False).agg(
        val=("val", "mean"), test=("test", "mean"), seeds=("seed", "nunique")
    )
    out = per_task.reset_index().pivot_table(
        index=[*method_keys, "candidate"], columns="task", values=["val", "test"], sort=False
    )
    out.columns = [f"{task}.{value}" for value, task in out.columns]
    tasks = list(dict.fromkeys(df["task"]))
    out["complete"] = out[[f"{t}.val" for t in tasks]].notna().all(axis=1)
    for t in tasks:  # ranked among the complete candidates only, so a failed one moves no rank
        val = out[f"{t}.val"].where(out["complete"])
        out[f"{t}.rank"] = val.groupby(level=method_keys, sort=False).rank(ascending=False, method="average")
    out["mean_rank"] = out[[f"{t}.rank" for t in tasks]].mean(axis=1)
    order = {c: i for i, c in enumerate(dict.fromkeys(df["candidate"]))}
    out = out.reset_index().sort_values(
        [*method_keys, "candidate"], key=lambda c: c.map(order) if c.name == "candidate" else c, kind="stable"
    )
    eligible = out[out["complete"]]
    chosen = eligible.loc[eligible.groupby(method_keys, sort=False)["mean_rank"].idxmin()]
    out["chosen"] = out.index.isin(chosen.index)
    return out.reset_index(drop=True)


def select_candidates(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records the tables report: every record run without candidates, and, of runs over
    candidates, those of each method's chosen candidate (`candidate_selection`)."""
    selection = candidate_selection(records)
    if selection.empty:
        return records
    chosen = {tuple(r) for r in selection[selection["chosen"]][["preset", "source", "method", "candidate"]].values}
    kept = []
    for r in records:
        candidate = (r.get("tags") or {}).get("candidate")
        if candidate is None or (r["preset"], r["source"], r["method"], candidate) in chosen:
            kept.append(r)
    return kept


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


def markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    cells = [list(map(str, table.columns))] + [[str(v) for v in row] for row in table.itertuples(index=False)]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("---" for _ in table.columns) + "|")
    return "\n".join(lines)


def _latex_escape(text: str) -> str:
    return text.replace("_", "\\_").replace("%", "\\%").replace("±", "$\\pm$")


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
    atomic_write_text(tables / f"{name}.csv", summary.to_csv(index=False))
    write_selection(records, tables / "selection")
    return table


def write_selection(records: list[dict[str, Any]], stem: Path) -> None:
    """STEM.md and .csv: every candidate of every method, its val and test metric per task
    (means over seeds), its val rank per task, its mean rank and which one was chosen."""
    selection = candidate_selection(records)
    if selection.empty:
        return
    tasks = [c.removesuffix(".val") for c in selection.columns if c.endswith(".val")]
    rows = []
    for _, r in selection.iterrows():
        row = {"method": r["method"], "candidate": r["candidate"]}
        for t in tasks:
            val, test = r[f"{t}.val"], r[f"{t}.test"]
            rank = "" if pd.isna(r[f"{t}.rank"]) else f" (#{r[f'{t}.rank']:g})"
            row[f"{t} val / test"] = "failed" if pd.isna(val) else f"{val:.2f} / {test:.2f}{rank}"
        row["mean val rank"] = "" if pd.isna(r["mean_rank"]) else f"{r['mean_rank']:.2f}"
        row["chosen"] = "**yes**" if r["chosen"] else ""
        rows.append(row)
    metrics = ", ".join(f"{t}: {get_task(t).selection_metric}" for t in tasks)
    note = (
        f"\n\nSelection metric per task ({metrics}), mean over seeds; (#k) is the candidate's rank on val "
        "among its method's candidates. Chosen: the lowest mean val rank over the tasks; test numbers are "
        "reported, never used.\n"
    )
    atomic_write_text(stem.with_suffix(".md"), markdown(pd.DataFrame(rows)) + note)
    atomic_write_text(stem.with_suffix(".csv"), selection.to_csv(index=False))


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
    atomic_write_text(stem.with_suffix(".md"), markdown(_bold_best(table, summary, ("**", "**"))) + note)
    latex = _bold_best(table, summary, ("\\textbf{", "}")).map(_latex_escape)
    latex.columns = [_latex_escape(str(c)) for c in table.columns]
    atomic_write_text(stem.with_suffix(".tex"), latex.to_latex(index=False, escape=False))


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
    step-time bars per method."""
    summary = summarize(records)
    paths: list[Path] = []
    if summary.empty or "eff.train_mem_bytes_est" not in summary:
        return paths
    figures = out_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    tasks = list(dict.fromkeys(summary["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        sel = summary[summary["task"] == task]
        metric = get_task(task).selection_metric
        xs, ys = sel["eff.train_mem_bytes_est"] / MIB, sel[f"metric.{metric}"]
        err = sel.get(f"metric.{metric}.std")
        ax.errorbar(xs, ys, yerr=err, fmt="o", capsize=3)
        for x, y, m in zip(xs, ys, sel["method"], strict=True):
            ax.annotate(m, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        front = pareto_front(list(zip(xs, ys, strict=True)))
        ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="grey", label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel("estimated training memory (MiB, log)")
        ax.set_ylabel(metric)
        ax.set_title(task)
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(_save(fig, figures / f"{name}_memory_vs_metric.png"))
    first = summary[summary["task"] == tasks[0]]
    fig, (ax_m, ax_t) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax_m.bar(first["method"], first["eff.train_mem_bytes_est"] / MIB, label="estimated total")
    ax_m.bar(first["method"], first["eff.activation_bytes"] / MIB, label="activations")
    ax_m.set_ylabel("MiB")
    ax_m.set_title(f"training memory ({tasks[0]}, one batch)")
    ax_m.legend(fontsize=7)
    ax_t.bar(first["method"], first["eff.train_step_s"] * 1e3)
    ax_t.set_ylabel("ms")
    ax_t.set_title("median training step")
    for ax in (ax_m, ax_t):
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    paths.append(_save(fig, figures / f"{name}_memory_time_bars.png"))
    return paths


def _save(fig: plt.Figure, path: Path) -> Path:
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def config_value(record: dict[str, Any], dotted: str) -> Any:
    """A `section.key` config path read from a record (method and task sections are stored
    under `method` and `task`)."""
    section, key = dotted.split(".", 1)
    stored = "method" if section == record["method"] else "task" if section == record["task"] else section
    return record["config"].get(stored, {}).get(key)


def study_summary(records: list[dict[str, Any]], study: str) -> tuple[pd.DataFrame, list[str]]:
    """One row per swept point of `study`: metric and efficiency means over seeds (the last
    record per run key, so a retried trial is not counted twice), or the failure status."""
    mine = {r["key"]: r for r in records if r.get("tags", {}).get("study") == study}
    if not mine:
        return pd.DataFrame(), []
    keys = next(iter(mine.values()))["tags"]["swept"].split(",")
    rows = []
    for r in mine.values():
        row: dict[str, Any] = {k: config_value(r, k) for k in keys}
        row.update(task=r["task"], seed=r["seed"], status=r["status"])
        row.update({f"metric.{k}": v for k, v in r.get("metrics", {}).items() if isinstance(v, int | float)})
        row.update({f"eff.{k}": v for k, v in r.get("efficiency", {}).items() if isinstance(v, int | float)})
        rows.append(row)
    df = pd.DataFrame(rows)
    ok = df[df["status"] == "ok"]
    numeric = ok.drop(columns=["task", "status"]).groupby(keys, sort=True)
    out = numeric.mean().drop(columns="seed").join(numeric.std(ddof=0).drop(columns="seed").add_suffix(".std"))
    out = out.join(numeric.size().rename("seeds"))
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
            row[metric] = f"{r[col]:.2f} ± {r.get(col + '.std', 0.0):.2f}"
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
    col = f"metric.{metric}"
    if col in summary and summary[col].notna().sum() > 1:
        best = summary[col].idxmax()
        shown.loc[best, metric] = f"**{shown.loc[best, metric]}**"
    note = f"\n\nStudy `{study}` ({summary.attrs['task']}); {metric} mean ± std over seeds.\n"
    atomic_write_text(stem.with_suffix(".md"), markdown(shown) + note)
    latex = shown.map(lambda v: _latex_escape(str(v)).replace("**", ""))
    latex.columns = [_latex_escape(str(c)) for c in table.columns]
    atomic_write_text(stem.with_suffix(".tex"), latex.to_latex(index=False, escape=False))
    atomic_write_text(stem.with_suffix(".csv"), summary.to_csv(index=False))
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
        ax.errorbar(xs, ys, yerr=ok.get(f"metric.{metric}.std"), fmt="o", capsize=3)
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
        paths.append(_save(fig, figures / f"ablation_{study}_pareto.png"))
    if importances:
        figures.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(5, 0.5 + 0.5 * len(importances)))
        ax.barh(list(importances), list(importances.values()))
        ax.set_xlabel(f"importance for {metric or 'the first objective'} (optuna default evaluator)")
        fig.tight_layout()
        paths.append(_save(fig, figures / f"ablation_{study}_importance.png"))
    return paths
