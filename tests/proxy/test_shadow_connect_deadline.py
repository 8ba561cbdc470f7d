"""A shadow whose deadline for `CONNECT` is shorter than the primary's closes a client's
connection (4401) before that client has sent anything the servers judge. The primary has
not judged it yet and may still take the client's late `CONNECT`: this is not a shadow
fault (nothing was sent to the shadow, nothing lost), so the proxy must neither count a
shadow loss nor mark the game not comparable; it opens a fresh shadow connection, and the
client's session is mirrored and compared as if nothing happened."""

from __future__ import annotations

from pathlib import Path

from legacy.service import Config, LegacyServer
from server.app import ServerSettings, StateServer
from tests.proxy.conftest import Client, start_proxy, stop_proxy, token
from tests.support import TEST_SECRET, wait_until

DROPS = "stateshift_proxy_shadow_drops_total"
NOT_COMPARABLE = "stateshift_proxy_games_not_comparable_total"


async def test_a_shadow_closing_before_connect_is_not_a_loss(tmp_path: Path) -> None:
    old = LegacyServer(
        Config(data=tmp_path / "old.jsonl", secret=TEST_SECRET, port=0, connect_timeout=600.0)
    )
    await old.start()
    new = StateServer(
        ServerSettings(db=tmp_path / "new.db", secret=TEST_SECRET, port=0, connect_timeout=0.3)
    )
    await new.start()
    under_test = await start_proxy(tmp_path, old.url, new.url, primary="old")
    proxy = under_test.proxy
    registry = proxy.metrics.registry
    closes = new.metrics.registry
    try:
        client = await Client.open(f"{under_test.url}/v1/games/late-joiner")
        (session,) = proxy.sessions.values()
        await wait_until(lambda: proxy.shadow_ready(session), what="the shadow connection")
        first = session.up["new"]

        def shadow_cut() -> bool:
            return (closes.get_sample_value("stateshift_server_closes_total", {"code": "4401"})
                    or 0) >= 1  # fmt: skip

        await wait_until(shadow_cut, what="the shadow's CONNECT deadline")

        def reconnected() -> bool:
            return session.up.get("new") not in (None, first) and proxy.shadow_ready(session)

        await wait_until(reconnected, what="a fresh shadow connection")
        connected = await client.request(type="CONNECT", id="c", token=token("p0"))
        assert connected["type"] == "CONNECTED", connected
        await client.send(type="STATE_UPDATE", id="u1", updates={"status": "active"})
        ack = await client.until(lambda frame: frame.get("re") == "u1")
        assert ack["type"] == "ACK", ack

        def shadow_answered() -> bool:
            return any(
                record.role == "shadow" and record.msg is not None and record.msg.get("re") == "u1"
                for record in under_test.recorder.records
            )

        await wait_until(shadow_answered, what="the shadow's answer to the update")
        drops = {
            sample.labels["reason"]: sample.value
            for metric in registry.collect()
            if metric.name == DROPS.removesuffix("_total")
            for sample in metric.samples
            if sample.name == DROPS
        }
        assert not any(drops.values()), drops
        assert (registry.get_sample_value(NOT_COMPARABLE, {"reason": "refused"}) or 0) == 0
        shadow_ack = next(
            record.msg
            for record in under_test.recorder.records
            if record.role == "shadow" and record.msg is not None and record.msg.get("re") == "u1"
        )
        assert shadow_ack == ack, (shadow_ack, ack)
    finally:
        await stop_proxy(under_test)
        await new.stop()
        await old.stop()
