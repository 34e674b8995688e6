"""Baseline adaptation methods, one module each (frozen, full, lora, lavish); each holds its
`MethodEntry` as `METHOD`, and `bench.registry` names where."""
