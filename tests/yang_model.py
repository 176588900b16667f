"""The ETSI GS QKD 015 YANG model as the tests validate RESTCONF answers against it: the modules
the node ships (`qkdnet/node/edge/yang`, byte for byte ETSI's), RFC 6991's types as pyang ships
them, and yangson.

The model's `when "qkdl_type = 'PHYS'"` / `'VIRT'` conditions compare an identityref with a bare
name, so strict validators reject every `phys_*` and `virt_*` leaf (and `phys_perf`). `validate`
takes those leaves out of a copy, validates the rest against the model, and checks the leaves it
took out against their YANG types by hand.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from yangson import DataModel  # type: ignore[import-untyped]
from yangson.enumerations import ContentType, ValidationScope  # type: ignore[import-untyped]

import qkdnet.node.edge

__all__ = ["YANG_DIR", "validate"]

YANG_DIR = Path(qkdnet.node.edge.__file__).resolve().parent / "yang"
_IETF = Path(sys.prefix) / "share" / "yang" / "modules" / "ietf"
_LIBRARY = {
    "ietf-yang-library:modules-state": {
        "module-set-id": "qkdnet-etsi-015",
        "module": [
            {
                "name": "etsi-qkd-sdn-node",
                "revision": "2022-01-30",
                "namespace": "urn:etsi:qkd:yang:etsi-qkd-node",
                "conformance-type": "implement",
            },
            {
                "name": "etsi-qkd-node-types",
                "revision": "2022-01-30",
                "namespace": "urn:etsi:qkd:yang:etsi-qkd-node-types",
                "conformance-type": "implement",
            },
            {
                "name": "ietf-yang-types",
                "revision": "2013-07-15",
                "namespace": "urn:ietf:params:xml:ns:yang:ietf-yang-types",
                "conformance-type": "import",
            },
            {
                "name": "ietf-inet-types",
                "revision": "2013-07-15",
                "namespace": "urn:ietf:params:xml:ns:yang:ietf-inet-types",
                "conformance-type": "import",
            },
        ],
    }
}
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_DECIMAL3 = re.compile(r"^-?[0-9]+(\.[0-9]{1,3})?$")
_ROLES = {f"etsi-qkd-node-types:{r}" for r in ("TRANSMITTER", "RECEIVER", "TRANSCEIVER")}
_PERF = {"etsi-qkd-node-types:QBER", "etsi-qkd-node-types:SNR"}


@functools.cache
def _model() -> DataModel:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as library:
        json.dump(_LIBRARY, library)
    return DataModel.from_file(library.name, [str(YANG_DIR), str(_IETF)])


def _check_conditional(link: dict[str, Any]) -> None:
    """The `phys_*` / `virt_*` leaves of one link, against their types."""
    kind = link.get("qkdl_type")
    phys = {k for k in link if k.startswith("phys_")}
    virt = {k for k in link if k.startswith("virt_")}
    perf = link.get("qkdl_performance", {}).get("phys_perf")
    if kind == "etsi-qkd-node-types:PHYS":
        assert not virt, f"a PHYS link with {virt}"
    else:
        assert kind == "etsi-qkd-node-types:VIRT", kind
        assert not phys, f"a VIRT link with {phys}"
        assert perf is None, "a VIRT link with phys_perf"
    if "phys_channel_att" in link:
        assert isinstance(link["phys_channel_att"], str)  # decimal64 is a string in JSON
        assert _DECIMAL3.match(link["phys_channel_att"]), link["phys_channel_att"]
    if "phys_qkd_role" in link:
        assert link["phys_qkd_role"] in _ROLES, link["phys_qkd_role"]
    for entry in perf or []:
        assert entry["perf_type"] in _PERF, entry
        assert isinstance(entry["value"], str), entry
        assert _DECIMAL3.match(entry["value"]), entry
    if "virt_prev_hop" in link:
        assert _UUID.match(link["virt_prev_hop"])
    for hop in link.get("virt_next_hop", []):
        assert _UUID.match(hop), hop
    if "virt_bandwidth" in link:
        assert isinstance(link["virt_bandwidth"], int)
        assert 0 <= link["virt_bandwidth"] < 2**32


def validate(tree: dict[str, Any]) -> None:
    """Raise (yangson's error, or AssertionError) unless `tree` (a whole
    `etsi-qkd-sdn-node:qkd_node`) is valid."""
    data = copy.deepcopy(tree)
    for link in data["etsi-qkd-sdn-node:qkd_node"].get("qkd_links", {}).get("qkd_link", []):
        _check_conditional(link)
        for key in [k for k in link if k.startswith(("phys_", "virt_"))]:
            del link[key]
        link.get("qkdl_performance", {}).pop("phys_perf", None)
    instance = _model().from_raw(data)
    instance.validate(ValidationScope.all, ContentType.all)
