"""The SwitchoverManager: readiness gates, flip, rollback, ramp and finalize over the proxies'
control planes (`switchover.gates` is the pure readiness logic, `switchover.manager` the
fleet operations, `switchover.cli` the `stateshift switchover` commands)."""
