"""The `HOST:PORT` part of a URL a command listens on, shared by every listening line.

An IPv6 address takes brackets in a URL (RFC 3986): `ws://[::1]:8080`, not `ws://::1:8080`,
which no client can parse back into a host and a port.
"""

from __future__ import annotations


def netloc(host: str, port: int) -> str:
    """`host:port`, the host in brackets when it is an IPv6 address (`[::1]:8080`)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def listen_url(scheme: str, host: str, port: int) -> str:
    """`scheme://host:port` for a socket listening on `host` and `port` (`ws://[::1]:8080`)."""
    return f"{scheme}://{netloc(host, port)}"
