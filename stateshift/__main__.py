"""`python -m stateshift` runs the console script."""

from stateshift.cli import main

main()
