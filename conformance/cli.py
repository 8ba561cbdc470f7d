"""`stateshift conformance` (placeholder: being built)."""

import typer

app = typer.Typer()
