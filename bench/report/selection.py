"""Choosing among candidate configurations on val: the rule, and the table that shows it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from bench.registry import get_task
from bench.report.formats import markdown, write_csv
from bench.report.records import latest_per_key
from bench.results import atomic_write_text


def candidate_selection(records: list[dict[str, Any]]) -> pd.DataFrame:
    """For runs over candidate configurations (a plan's candidates or `--tune`): one row per
    (preset, source, method, candidate) with, per task, the val and test selection metric
    averaged over seeds, the candidate's rank among its method's candidates on each task's
    val mean (1 = best; ties share the average rank), the mean of those ranks and whether it
    is chosen: the lowest mean rank, the first listed on a tie. The rule was fixed before any
    test number was read, and reads none. A candidate missing a task (a failed run) cannot be
    chosen. A repeated run counts once (its latest record)."""
    rows = []
    for r in latest_per_key(records):
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
    write_csv(stem.with_suffix(".csv"), selection)
