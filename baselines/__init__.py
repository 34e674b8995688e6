"""Baseline adaptation methods: importing this package registers each of them."""
