"""Joining the data frames websockets' parser delivers, as its assembler would."""

from __future__ import annotations

import pytest
from websockets.asyncio.messages import MAX_FRAGMENTS
from websockets.frames import BINARY, CONT, TEXT, Frame

from stateshift.wsframes import Fragments, TooManyFragments


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
