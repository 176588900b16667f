"""Clients of running nodes: how the orchestrator and applications talk to a deployment.

What belongs here: the NodeControl client (with the controller's identity), the ETSI GS QKD
014 key client, the live status asked from the nodes, and the telemetry reader. A client
reaches nodes through their published APIs only.
"""
