"""One module per component group; each exposes generate()."""
