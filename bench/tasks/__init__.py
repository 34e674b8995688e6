"""Tasks: importing this package registers each of them."""

from bench.tasks import ave, avs, avvp  # noqa: F401
