"""`stateshift legacy` (placeholder: being built)."""

import typer

app = typer.Typer()
