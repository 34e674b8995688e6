"""Baseline adaptation methods; importing this package registers frozen, full, lora and lavish."""

from baselines import frozen, full, lavish, lora

__all__ = ["frozen", "full", "lavish", "lora"]
