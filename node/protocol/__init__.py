"""The protocols: what a node says to its peers and why, over small ports.

What belongs here: the link session (sifting to privacy amplification) and its authenticated
conversation, the relay, routing and link-state flooding, and key management. Each is written
against a port it is given (`link_transport.LinkConnector` and `Duplex`, `relay_peers.RelayPeers`,
a clock) and never opens a socket itself, so each runs in memory under test
(`qkdnet.node.testing`). No module here imports gRPC, aiohttp or aiomqtt (`make lint` checks it:
`[tool.importlinter]` in pyproject.toml); the adapters that carry these protocols over the
network are in `qkdnet.node.edge`.
"""
