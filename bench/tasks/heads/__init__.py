"""Published task heads, re-stated from their papers' released code, beside the harness's own
heads: a switch on the task's config (`<task>.head`) so that a method can be compared as its paper was."""
