"""How report files are written: Markdown and LaTeX tables, CSV, PNG figures, each atomically
(written beside its path, then renamed), so a reader never sees half a file."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from bench.results import atomic_write_text

MIB = 2**20


def markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    cells = [list(map(str, table.columns))] + [[str(v) for v in row] for row in table.itertuples(index=False)]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("---" for _ in table.columns) + "|")
    return "\n".join(lines)


def latex_escape(text: str) -> str:
    return text.replace("_", "\\_").replace("%", "\\%").replace("±", "$\\pm$").replace("Δ", "$\\Delta$")


def latex(table: pd.DataFrame) -> str:
    """A LaTeX tabular of `table`, cells and headers escaped (cells already formatted as text)."""
    escaped = table.map(lambda v: latex_escape(str(v)))
    escaped.columns = [latex_escape(str(c)) for c in table.columns]
    return escaped.to_latex(index=False, escape=False)


def write_markdown_and_latex(stem: Path, shown: pd.DataFrame, typeset: pd.DataFrame, note: str) -> None:
    """STEM.md (`shown` and the note under it) and STEM.tex (`typeset`)."""
    atomic_write_text(stem.with_suffix(".md"), markdown(shown) + note)
    atomic_write_text(stem.with_suffix(".tex"), latex(typeset))


def write_csv(path: Path, table: pd.DataFrame) -> None:
    atomic_write_text(path, table.to_csv(index=False))


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """PATH as a 120 dpi PNG; the figure is closed."""
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path
