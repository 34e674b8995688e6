"""Mettle: meta-token learning for memory-efficient audio-visual adaptation.

Importable without the benchmark harness: depends on torch and timm only. The method's
registry entry is `mettle_core.method.METHOD`.
"""

from mettle_core.encoder import (
    KeptFeatures,
    MettleConfig,
    MettleEncoder,
    mettle_param_count,
    no_decay_parameters,
    select_layers,
    stage_groups,
)
from mettle_core.lcd import (
    LCD,
    LayerAggregate,
    aggregate_param_count,
    distil,
    lcd_param_count,
    meta_attention,
    pool_param_count,
    token_pool,
)
from mettle_core.mti import MTI, mti_param_count

__all__ = [
    "LCD",
    "MTI",
    "KeptFeatures",
    "LayerAggregate",
    "MettleConfig",
    "MettleEncoder",
    "aggregate_param_count",
    "distil",
    "lcd_param_count",
    "meta_attention",
    "mettle_param_count",
    "mti_param_count",
    "no_decay_parameters",
    "pool_param_count",
    "select_layers",
    "stage_groups",
    "token_pool",
]
