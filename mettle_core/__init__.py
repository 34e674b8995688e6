"""Mettle: meta-token learning for memory-efficient audio-visual adaptation.

Importable without the benchmark harness: depends on torch and timm only.
"""
