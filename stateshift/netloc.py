"""The `HOST:PORT` part of a URL: of one a command listens on (every listening line), and
the address one connects to (`address`).

An IPv6 address takes brackets in a URL (RFC 3986): `ws://[::1]:8080`, not `ws://::1:8080`,
which no client can parse back into a host and a port.
"""

from __future__ import annotations

from urllib.parse import urlsplit


def netloc(host: str, port: int) -> str:
    """`host:port`, the host in brackets when it is an IPv6 address (`[::1]:8080`)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def listen_url(scheme: str, host: str, port: int) -> str:
    """`scheme://host:port` for a socket listening on `host` and `port` (`ws://[::1]:8080`)."""
    return f"{scheme}://{netloc(host, port)}"


def address(url: str) -> tuple[str, int]:
    """The host and port a `ws://` or `wss://` URL connects to: its scheme's port when it
    names none (80, 443), 127.0.0.1 when it names no host; an IPv6 host without brackets."""
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "wss" else 80)
