"""`stateshift demo`: the whole migration in one command, on loopback.

`demo.stack` starts the reference old server, the new server (SQLite in a temporary
directory), the mirroring proxy with its comparator and switchboard, all in-process;
`demo.scenario` drives simulated players (`loadgen`) through it, injects one divergence,
shows it found, explained and resynced, runs `switchover check`, `flip` and `rollback` under
load, and judges the run; `demo.view` draws the live view and the summary.
"""
