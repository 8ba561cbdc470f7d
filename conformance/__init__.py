"""The protocol conformance suite (placeholder: being built)."""
