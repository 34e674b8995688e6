"""Data sources: procedural synthetic generators, real-dataset loaders, media preparation."""
