"""The StateComparator: turns the proxy's tap into evidence.

Pure core: `rules` (what may legitimately differ), `diffing` (cheap equality first, DeepDiff
only on a mismatch, normalised paths), `pairing` (which frames of the primary and the shadow
answer the same thing). I/O: `comparator` (the live consumer of the tap, drift, resync,
metrics), `store` (bounded SQLite samples), `admin` (admin-path client), `sweep` and
`backfill`, `cli`.
"""

from stateshift.native import install

install()
