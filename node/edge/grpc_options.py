"""gRPC channel and server settings of every node (and of the orchestrator's clients).

Messages are capped at 64 MiB: the largest a link sends (a sifting announcement of a 4 Mbit
frame) is a few MiB, a relay frame at most about 1 MiB. Clients ping every 10 s while calls are
open, so a peer that vanished (a cut link, a paused node) is noticed within 15 s. Servers bound
what one peer can hold: streams per connection, calls in all, and idle connections, and they
accept the clients' pings but refuse floods of them.
"""

from __future__ import annotations

__all__ = ["CHANNEL_OPTIONS", "MAX_CONCURRENT_RPCS", "MAX_MESSAGE_BYTES", "SERVER_OPTIONS"]

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Calls in progress on one node server, from every peer together; more are refused at once
# with RESOURCE_EXHAUSTED.
MAX_CONCURRENT_RPCS = 2048

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
]

SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Streams one connection may have open at once (a link uses two, relays one per hop).
    ("grpc.max_concurrent_streams", 256),
    # The server pings a silent client every 30 s and drops it after 10 s without an answer.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # Clients ping every 10 s during calls: allow that, and close after 2 pings too many.
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 2),
    # A connection without a call for 5 minutes is closed (the peer reconnects when needed).
    ("grpc.max_connection_idle_ms", 300_000),
]
