"""The load generator: simulated players of PROTOCOL.md games against any server or proxy.

`loadgen.plan` decides (pure): what each player sends next (joins, turns, score deltas,
timers, settings, the occasional invalid message with the error it must get), the rate each
connection may use under the protocol's limit, and the report's figures. `loadgen.runner`
moves the frames (one reader and one writer per connection) and counts; `run_load` is the
library entry point used by `stateshift loadgen`, the demo, the tests and the benchmarks.
"""
