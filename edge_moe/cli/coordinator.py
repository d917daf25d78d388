"""``edge-moe coordinator``: filled in by the one-CLI work (issue 22)."""
