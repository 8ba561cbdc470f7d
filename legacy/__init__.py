"""The reference old state server (`stateshift legacy`).

An older design than `server/`, on purpose: in-memory dict state persisted as an append-only
JSON-lines log (group-committed, replayed at start), with its own token verification and
validation code. It shares no protocol, validation, auth or state code with the new server,
so that mirroring one against the other can reveal a bug in either. Fault injection turns it
into a misbehaving peer on demand.

Modules: `errors` (error tree), `rules` (state rules), `auth` (tokens), `store` (games and
log records), `journal` (the log file), `session` (per-connection protocol), `faults`,
`metrics`, `service` (asyncio I/O) and `cli`.
"""
