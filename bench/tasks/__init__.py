"""Tasks. `bench.registry` imports each module listed here, which registers it."""

TASK_MODULES = ("ave", "avvp", "avs")
