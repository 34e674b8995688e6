"""The report of a `bench profile`: OUT/profile.md (every figure per point, and the paper's
Fig. 1c against the reference method), OUT/profile.png, and the console's 80-column table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import pandas as pd

from bench.presets import get_preset
from bench.report.formats import MIB, markdown, save_figure
from bench.results import atomic_write_text

if TYPE_CHECKING:
    from bench.profile import ProfileSpec

TABLE_COLUMNS = {  # efficiency key -> (label, scale, digits)
    "trainable_params": ("trainable params (M)", 1e-6, 3),
    "encoder_trainable_params": ("encoder params (M)", 1e-6, 3),
    "activation_bytes": ("act. mem (MiB)", 1 / MIB, 1),
    "memory_floor_bytes": ("floor (MiB)", 1 / MIB, 1),
    "train_mem_bytes_est": ("train mem est. (MiB)", 1 / MIB, 1),
    "cuda_peak_allocated_bytes": ("CUDA peak alloc. (MiB)", 1 / MIB, 1),
    "cuda_peak_reserved_bytes": ("CUDA peak reserved (MiB)", 1 / MIB, 1),
    "train_step_s": ("step (ms)", 1e3, 1),
    "train_samples_per_s": ("samples/s", 1.0, 2),
    "flops_per_step": ("GFLOPs/step", 1e-9, 1),
    "budget_max_batch": ("max batch in budget", 1, 0),
}


def profile_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per point with figures: finished ones, and killed ones with what they measured."""
    rows = [
        {"method": r["method"], "batch": r["batch_size"], "T": r["segments"], **r["efficiency"]}
        for r in records
        if r["status"] == "ok" or (r["status"] == "killed" and r["efficiency"])
    ]
    return pd.DataFrame(rows, columns=None if rows else ["method", "batch", "T"])


def with_ratios(df: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Trainable parameters, memory (the estimate, and the CUDA peak when measured) and step
    time over the reference method's at the same point; activations over the method's memory
    floor."""
    if df.empty:
        return df
    df = df.copy()
    ref = df[df["method"] == reference].set_index(["batch", "T"])
    keys = pd.MultiIndex.from_frame(df[["batch", "T"]])
    pairs = (
        ("trainable_params", "params / ref"),
        ("train_mem_bytes_est", "mem / ref"),
        ("cuda_peak_allocated_bytes", "CUDA peak / ref"),
    )
    for col, name in pairs:
        if col in df and col in ref:
            df[name] = df[col].to_numpy() / ref[col].reindex(keys).to_numpy()
    df["time / ref"] = df["train_step_s"].to_numpy() / (
        ref["train_step_s"].reindex(keys).to_numpy() if "train_step_s" in ref else float("nan")
    )
    if "memory_floor_bytes" in df:
        df["act / floor"] = df["activation_bytes"] / df["memory_floor_bytes"]
    return df


def display_table(df: pd.DataFrame) -> pd.DataFrame:
    """TABLE_COLUMNS, with the trainable parameters by part (the encoders' param_breakdown
    hook, and the head) right after the encoder's trainable count."""
    out = df[["method", "batch", "T"]].copy()
    columns = []
    for col, spec in TABLE_COLUMNS.items():
        columns.append((col, spec))
        if col == "encoder_trainable_params":
            parts = [c for c in df.columns if c.startswith("params_")]
            columns += [(c, (f"{c.removeprefix('params_')} params (M)", 1e-6, 3)) for c in parts]
    for col, (label, scale, digits) in columns:
        if col in df and df[col].notna().any():
            out[label] = (df[col] * scale).round(digits)
    for col in ("act / floor", "params / ref", "mem / ref", "CUDA peak / ref", "time / ref"):
        if col in df and df[col].notna().any():
            out[col] = df[col].round(3)
    return out.map(lambda v: "" if pd.isna(v) else str(v))


def reference_table(df: pd.DataFrame, reference: str) -> pd.DataFrame:
    """The Mettle paper's Fig. 1c as a table: per method and point, trainable parameters,
    training memory (the CUDA peak where measured, else the estimate) and step time, each
    beside its ratio to the reference method's (`df` from with_ratios; ratios blank when the
    reference was not profiled)."""
    if df.empty:
        return pd.DataFrame()
    cuda = "cuda_peak_allocated_bytes" in df and df["cuda_peak_allocated_bytes"].notna().any()
    mem, mem_ratio = ("cuda_peak_allocated_bytes", "CUDA peak / ref") if cuda else ("train_mem_bytes_est", "mem / ref")

    def column(name: str, scale: float, digits: int) -> pd.Series:
        return (df[name] * scale).round(digits) if name in df else pd.Series(float("nan"), index=df.index)

    columns = {
        "trainable params (M)": column("trainable_params", 1e-6, 3),
        f"params / {reference}": column("params / ref", 1.0, 3),
        ("CUDA peak alloc. (MiB)" if cuda else "train mem est. (MiB)"): column(mem, 1 / MIB, 1),
        f"memory / {reference}": column(mem_ratio, 1.0, 3),
        "step (ms)": column("train_step_s", 1e3, 1),
        f"time / {reference}": column("time / ref", 1.0, 3),
    }
    out = pd.concat([df[["method", "batch", "T"]], pd.DataFrame(columns, index=df.index)], axis=1)
    return out.map(lambda v: "" if pd.isna(v) else str(v))


def console_table(df: pd.DataFrame, reference: str) -> pd.DataFrame:
    """reference_table under headers short enough for an 80-column terminal."""
    table = reference_table(df, reference)
    if table.empty:
        return table
    memory = "CUDA MiB" if table.columns[5].startswith("CUDA") else "mem MiB"
    table.columns = ["method", "B", "T", "params M", "params/ref", memory, "mem/ref", "step ms", "time/ref"]
    return table


def write_report(records: list[dict[str, Any]], spec: ProfileSpec, out_dir: Path, command: str) -> list[Path]:
    """OUT/profile.md and OUT/profile.png from this invocation's records."""
    df = with_ratios(profile_frame(records), spec.reference)
    failed = [
        f"- {r['method']} (batch {r['batch_size']}, T {r['segments']}): {r['status']}: {r['error']}"
        for r in records
        if r["status"] != "ok"
    ]
    env = records[0]["env"] if records else {}
    lines = [
        f"# Profile: preset `{spec.preset}`, task `{spec.task}`, device {env.get('device')} ({env.get('device_name')})",
        "",
        f"Command: `{command}`",
        "",
        markdown(display_table(df)) if not df.empty else "no finished points",
        "",
        f"One training step with random weights; ratios are relative to `{spec.reference}` at the same point. "
        "Memory: saved-for-backward bytes (`act. mem`) and weights + gradients + AdamW state + activations "
        "(`train mem est.`), measured in a pass of its own. Floor: what a method must keep for backward by design, "
        "where it states one (Mettle: the per-layer features LCD reads, at the kept dtype). Parameters by part (lcd, "
        "aggregation, pool, mti, head) where the method breaks them down. "
        f"Time: median of {spec.repeats} steps after {spec.warmup} warm-up steps.",
    ]
    towers = {
        (role, r["efficiency"][f"{role}_tower_params"])
        for r in records
        for role in ("audio", "visual", "shared")
        if f"{role}_tower_params" in r["efficiency"]
    }
    if towers:
        preset = get_preset(spec.preset)
        listed = "; ".join(
            f"{role}: {getattr(preset, role).arch}, {params:,} parameters" for role, params in sorted(towers)
        )
        lines.append(f"Towers (parameters of each tower proper; front-ends hold constants only): {listed}.")
    if "budget_max_batch" in df:
        lines.append(f"Max batch in budget ({spec.budget} bytes): {records[0]['efficiency'].get('budget_method', '')}.")
    if not df.empty and spec.reference in set(df["method"]):
        lines += [
            "",
            f"## Against `{spec.reference}` (the Mettle paper's Fig. 1c)",
            "",
            markdown(reference_table(df, spec.reference)),
            "",
            "Trainable parameters (method and task head), training memory and step time, each over "
            f"`{spec.reference}`'s at the same batch size and segments (at batch 1: per sample, as in the figure).",
        ]
    if failed:
        lines += ["", "Failed points:", *failed]
    paths = [out_dir / "profile.md"]
    atomic_write_text(paths[0], "\n".join(lines) + "\n")
    if not df.empty:
        paths.append(_figure(df, spec, out_dir / "profile.png"))
    return paths


def _figure(df: pd.DataFrame, spec: ProfileSpec, path: Path) -> Path:
    mem_col = "cuda_peak_allocated_bytes" if "cuda_peak_allocated_bytes" in df else "train_mem_bytes_est"
    mem_label = "CUDA peak allocated (MiB)" if mem_col != "train_mem_bytes_est" else "estimated training memory (MiB)"
    fig, (ax_m, ax_t) = plt.subplots(1, 2, figsize=(10, 3.8))
    if spec.sweep is None:
        ax_m.bar(df["method"], df[mem_col] / MIB, label=mem_label)
        ax_m.bar(df["method"], df["activation_bytes"] / MIB, label="activations")
        if "memory_floor_bytes" in df:
            floor = df["memory_floor_bytes"] / MIB
            ax_m.scatter(df["method"], floor, marker="_", s=400, color="black", zorder=3, label="memory floor")
        ax_t.bar(df["method"], df["train_step_s"] * 1e3)
        for ax in (ax_m, ax_t):
            ax.tick_params(axis="x", rotation=30)
        ax_m.set_yscale("log")
    else:
        x = "batch" if spec.sweep[0] == "batch-size" else "T"
        for method, part in df.groupby("method", sort=False):
            part = part.sort_values(x)
            ax_m.plot(part[x], part[mem_col] / MIB, "o-", label=method)
            ax_t.plot(part[x], part["train_step_s"] * 1e3, "o-", label=method)
        for ax in (ax_m, ax_t):
            ax.set_xlabel("batch size" if x == "batch" else "segments")
            ax.set_yscale("log")
    ax_m.set_ylabel("MiB")
    ax_m.set_title(mem_label)
    ax_m.legend(fontsize=7)
    ax_t.set_ylabel("ms")
    ax_t.set_title("median training step")
    if spec.sweep is not None:
        ax_t.legend(fontsize=7)
    fig.suptitle(f"{spec.preset} preset, task {spec.task}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
