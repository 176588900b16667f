"""The edge: everything that touches the outside world.

What belongs here: the gRPC services and the one `grpc_dial.dial()` recipe for mutual-TLS
channels, the adapters that carry the protocols' ports over gRPC (`link_grpc`, `relay_grpc`),
the node's own emulation of a network path (`channel_shaping`, `peer_faults`), the ETSI GS QKD
014 HTTPS API, TLS contexts and MQTT telemetry. The protocols never import these modules; the
agent (the composition root) wires them together.
"""
