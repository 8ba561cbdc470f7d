"""`stateshift serve` (placeholder: being built)."""

import typer

app = typer.Typer()
