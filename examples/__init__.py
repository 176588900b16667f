"""Example topologies shipped with qkdnet (`qkdnet demo` deploys one of them)."""
