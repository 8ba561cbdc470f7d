"""Grafana dashboards and Prometheus rules for a stateshift parallel run and switchover.

`dashboards.build` is the one source of truth: it declares every panel, recording rule and
alert, and writes the committed files (`grafana/*.json`, `alerts.yml`). Edit it, then run
`python -m dashboards.build`; the tests fail when the committed files differ.
"""
