"""severity."""
