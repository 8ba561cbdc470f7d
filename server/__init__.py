"""The new game state server: PROTOCOL.md over websockets, state in SQLite (aiosqlite).

Layout, pure core first:

- `errors`: the typed error tree, each error knowing its wire code and close code;
- `rules`: identifiers, message validation, state transitions (no I/O, no event loop);
- `auth`: token verification; `ratelimit`: the per-connection token bucket;
- `storage`: the SQLite schema, numbered migrations and group commit;
- `connection`: a websockets connection that hands each message over as it is parsed;
- `app`: the thin asyncio/websockets layer (answers in request order); `cli`: `stateshift serve`.
"""

from stateshift.native import install

install()
