"""JSON read the way the protocol means it where orjson cannot (PROTOCOL notes 30 and 35):
integer literals of any length stay integers; NaN and Infinity stay refused, and so does an
unpaired surrogate escape (it is not text). Shared by the reference old server and the proxy
(both fall back on it when orjson refuses a frame); the new server has its own reading, on
purpose (a bug shared with the system under test would hide itself)."""

from __future__ import annotations

import json
from typing import Any, Final

#: Python converts at most this many digits (`sys.get_int_max_str_digits`): exact below,
#: and converting longer literals would cost time quadratic in their length
BIG_DIGITS: Final = 4300
#: past `BIG_DIGITS` an integer literal is read as this (with its sign): beyond every range,
#: which is all its value could matter for
HUGE: Final = 10**4299  # the most digits Python still prints


def any_int(literal: str) -> int:
    """A JSON integer literal of any length."""
    if len(literal) <= BIG_DIGITS:
        return int(literal)
    return -HUGE if literal.startswith("-") else HUGE


def no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def exact_json(data: str | bytes) -> Any:
    """`data` parsed with the standard library as above, or None when it is not JSON."""
    try:
        message = json.loads(data, parse_int=any_int, parse_constant=no_constant)
        # an unpaired surrogate escape is not text (note 35): orjson refuses it, so must this
        json.dumps(message, ensure_ascii=False).encode()
    except (ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        return None
    return message
