"""One reader per data source: its folder layout, labels, citation and licence."""
