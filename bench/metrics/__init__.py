"""Exact task metrics (DESIGN section 7). Every value is a percentage."""
