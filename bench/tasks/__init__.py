"""Tasks, one module each; `bench.registry` names where each one's `Task` lives."""
