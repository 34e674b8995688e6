"""Published task heads, re-stated from their papers' released code, beside the harness's own
heads: a task config switches to one so that a method can be compared as its paper was."""
