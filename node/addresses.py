"""Network addresses as configurations and topologies write them: `host:port`."""

from __future__ import annotations

import ipaddress

__all__ = ["parse_address"]


def parse_address(value: str) -> tuple[str, int]:
    """Split `host:port` (IPv6 as `[::1]:port`) and check the port; ValueError otherwise."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"address {value!r} is not host:port")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range in {value!r}")
    if host.startswith("["):
        ipaddress.IPv6Address(host.strip("[]"))
    return host, port
