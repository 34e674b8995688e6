"""Baseline adaptation methods, one module each (frozen, full, lora, lavish, dgsct); each holds its
`MethodEntry` as `METHOD`, and `bench.registry` names where."""
