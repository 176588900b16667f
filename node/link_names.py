"""Names of links: the canonical ID of the link between two nodes.

Kept apart from `link` (which imports numpy, pyfftw and grpc) so that the orchestrator can name
links without loading the link's machinery.
"""

from __future__ import annotations

__all__ = ["link_id_for"]


def link_id_for(a: str, b: str) -> str:
    """The canonical ID of the link between nodes a and b: both IDs sorted, joined by `--`."""
    first, second = sorted((a, b))
    return f"{first}--{second}"
