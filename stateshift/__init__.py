"""stateshift: move a live, stateful WebSocket service to a new server without users noticing.

This small package holds the root command line (`stateshift.cli`) and the little that is truly
shared between components (token minting for scripts and tests). Each component (`server`,
`legacy`, `proxy`, `compare`, `switchover`) is its own top-level package.
"""

__version__ = "0.1.0"

from stateshift.native import install

install()
