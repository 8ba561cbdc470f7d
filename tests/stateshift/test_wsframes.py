"""Joining the data frames websockets' parser delivers, as its assembler would; knowing when
the parser waits between frames."""

from __future__ import annotations

import pytest
from websockets.asyncio.messages import MAX_FRAGMENTS
from websockets.frames import BINARY, CONT, PING, TEXT, Frame
from websockets.protocol import CLOSING, Protocol, Side

from stateshift.wsframes import Fragments, ParserWatch, TooManyFragments, take_simple_frames


def test_whole_and_fragmented_messages_come_out_joined():
    fragments = Fragments()
    assert fragments.add(Frame(BINARY, b"\x00one")) == (False, b"\x00one")
    assert fragments.add(Frame(TEXT, b"tw", fin=False)) is None
    assert fragments.add(Frame(CONT, b"o ", fin=False)) is None
    assert fragments.add(Frame(CONT, b"parts")) == (True, b"two parts")
    assert fragments.add(Frame(TEXT, b"three")) == (True, b"three")  # nothing left over


def test_more_fragments_than_websockets_accepts_are_refused_and_forgotten():
    fragments = Fragments()
    fragments.add(Frame(TEXT, b"x", fin=False))
    for _ in range(MAX_FRAGMENTS - 1):
        assert fragments.add(Frame(CONT, b"x", fin=False)) is None
    with pytest.raises(TooManyFragments):
        fragments.add(Frame(CONT, b"x"))
    assert fragments.add(Frame(TEXT, b"next")) == (True, b"next")


def test_the_parser_watch_remembers_an_idle_parser_until_it_is_fed():
    protocol = Protocol(Side.SERVER)  # OPEN, its frame parser waiting for a first frame
    watch = ParserWatch()
    assert watch.between_frames(protocol)
    protocol.receive_data(b"\x81\x85")  # half a masked frame's header
    watch.fed()
    assert not watch.between_frames(protocol)
    protocol.receive_data(b"\x00\x00\x00\x00hello")  # the rest: a whole frame, taken
    assert protocol.events_received() == [Frame(TEXT, b"hello")]
    assert watch.between_frames(protocol)
    protocol.state = CLOSING
    assert not watch.between_frames(protocol)  # remembered, but only while OPEN


def frames(*items: Frame, mask: bool) -> bytes:
    return b"".join(f.serialize(mask=mask, extensions=[]) for f in items)


@pytest.mark.parametrize("masked", [True, False], ids=["from a client", "from a server"])
def test_whole_simple_frames_are_taken_and_the_rest_left_to_websockets(masked: bool):
    protocol = Protocol(Side.SERVER if masked else Side.CLIENT, max_size=300)
    got: list[tuple[bool, bytes, bytes]] = []
    one, two = Frame(TEXT, b'{"a":1}'), Frame(BINARY, b"\x00" * 200)  # 16-bit length
    data = frames(one, two, mask=masked)
    rest = frames(Frame(PING, b""), Frame(TEXT, b"after"), mask=masked)
    left = take_simple_frames(data + rest, masked, protocol, lambda *f: got.append(f))
    assert left == rest  # stops at the ping, a control frame: websockets' parser's
    assert [(t, p) for t, p, _ in got] == [(True, b'{"a":1}'), (False, b"\x00" * 200)]
    assert b"".join(raw for _, _, raw in got) == data  # each frame's bytes as received
    # what is not a whole simple frame it may take is left alone
    big = frames(Frame(TEXT, b"x" * 301), mask=masked)  # over max_size: websockets fails it
    fragment = frames(Frame(TEXT, b"x", fin=False), mask=masked)
    other_side = frames(one, mask=not masked)
    for data in (big, fragment, other_side, frames(one, mask=masked)[:-1]):
        assert take_simple_frames(data, masked, protocol, lambda *f: got.append(f)) is data
    assert len(got) == 2


def test_taking_frames_stops_when_a_frame_closes_the_connection():
    protocol = Protocol(Side.SERVER)
    got: list[bytes] = []

    def deliver(is_text: bool, payload: bytes, raw: bytes) -> None:
        got.append(payload)
        protocol.state = CLOSING  # the handler closed the connection

    data = frames(Frame(TEXT, b"one"), Frame(TEXT, b"two"), mask=True)
    assert take_simple_frames(data, True, protocol, deliver) == data[len(data) // 2 :]
    assert got == [b"one"]
