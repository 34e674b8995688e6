"""Reports from records: paper-style tables (Markdown, LaTeX, CSV) and figures (PNG) of runs,
of sweep studies and of profiles."""

import matplotlib

matplotlib.use("Agg")  # figures go to files: no display is needed or opened

from bench.report.figures import pareto_front, write_figures  # noqa: E402
from bench.report.formats import markdown  # noqa: E402
from bench.report.records import load_usable, unknown_task  # noqa: E402
from bench.report.selection import candidate_selection, select_candidates  # noqa: E402
from bench.report.studies import study_summary, write_study_figures, write_study_tables  # noqa: E402
from bench.report.tables import frame, paper_table, summarize, write_tables  # noqa: E402

__all__ = [
    "candidate_selection",
    "frame",
    "load_usable",
    "markdown",
    "paper_table",
    "pareto_front",
    "select_candidates",
    "study_summary",
    "summarize",
    "unknown_task",
    "write_figures",
    "write_study_figures",
    "write_study_tables",
    "write_tables",
]
