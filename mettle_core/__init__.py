"""Mettle: meta-token learning for memory-efficient audio-visual adaptation.

Importable without the benchmark harness: depends on torch and timm only. The method's
registry entry is `mettle_core.method.METHOD`.
"""

from mettle_core.encoder import MettleConfig, MettleEncoder, kept_feature_bytes, mettle_param_count, select_layers
from mettle_core.lcd import LCD, LayerAggregate, lcd_param_count, meta_attention
from mettle_core.mti import MTI, mti_param_count

__all__ = [
    "LCD",
    "MTI",
    "LayerAggregate",
    "MettleConfig",
    "MettleEncoder",
    "kept_feature_bytes",
    "lcd_param_count",
    "meta_attention",
    "mettle_param_count",
    "mti_param_count",
    "select_layers",
]
