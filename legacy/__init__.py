"""The reference old state server (placeholder: being built)."""
