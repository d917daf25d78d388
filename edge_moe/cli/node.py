"""``edge-moe node``: filled in by the one-CLI work (issue 22)."""
