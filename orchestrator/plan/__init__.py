"""The plan: from a topology file to what a runtime starts, before anything runs.

What belongs here: the topology file and its validation, the NetworkPlan (addresses, state
layout, node configurations built as typed objects), the PKI, the broker's access list and
configuration, and the registry of deployments on this machine. Nothing here starts a process
or talks to a node.
"""
