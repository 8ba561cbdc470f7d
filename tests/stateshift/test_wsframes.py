"""Joining the data frames websockets' parser delivers, as its assembler would; knowing when
the parser waits between frames."""

from __future__ import annotations

import pytest
from websockets.asyncio.messages import MAX_FRAGMENTS
from websockets.frames import BINARY, CONT, TEXT, Frame
from websockets.protocol import CLOSING, Protocol, Side

from stateshift.wsframes import Fragments, ParserWatch, TooManyFragments


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
