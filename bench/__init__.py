"""Benchmark and ablation harness for memory-efficient audio-visual adaptation."""
