"""The runtimes: where a plan's nodes run, behind one seam.

What belongs here: the runtime seam (`seam.Runtime`: deploy, destroy, inspect, start, stop,
kill, faults), its process and Docker implementations, the container images they need, the
MQTT broker, the faults a runtime injects and the scenarios that play them, and the Compose
export.
"""
