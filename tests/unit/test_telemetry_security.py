"""Telemetry as untrusted data: who may publish what, payloads checked against their topic's
shape, refused ones counted, and strings shown as text, never as markup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from qkdnet.node.identity import Role
from qkdnet.orchestrator.cli.network_view import telemetry_view
from qkdnet.orchestrator.client.telemetry_watch import TelemetryState
from qkdnet.orchestrator.plan.network_plan import NetworkPlan
from qkdnet.orchestrator.plan.telemetry_access import TelemetryAccess, filter_covers, topic_matches
from qkdnet.orchestrator.plan.topology import load_topology

EXAMPLES = Path(__file__).parents[2] / "examples"
P = "qkdnet/chain5"


@pytest.fixture
def plan(tmp_path: Path) -> NetworkPlan:
    return NetworkPlan.build(load_topology(EXAMPLES / "chain5.yaml"), tmp_path / "state")


def test_each_node_publishes_its_own_topics_only(plan: NetworkPlan) -> None:
    access = plan.telemetry_access()
    assert access.may_publish(Role.NODE, "r2", f"{P}/node/r2/status")
    assert access.may_publish(Role.NODE, "r2", f"{P}/link/r2--r3/stats")  # r2 transmits
    assert access.may_publish(Role.NODE, "r2", f"{P}/link/r1--r2/store/r2")
    assert access.may_publish(Role.NODE, "r2", f"{P}/relay/events/r2")
    for topic in (
        f"{P}/node/r1/status",  # another node's
        f"{P}/link/r1--r2/stats",  # r1 transmits on that link, not r2
        f"{P}/link/r1--r2/store/r1",
        f"{P}/relay/events/a",
        f"{P}/node/+/status",
        f"{P}/#",
    ):
        assert not access.may_publish(Role.NODE, "r2", topic), topic
    assert not access.may_publish(Role.CONTROLLER, "orchestrator", f"{P}/node/a/status")
    assert not access.may_publish(Role.SAE, "r2", f"{P}/node/r2/status")  # a name is not a role
    assert access.may_subscribe(Role.CONTROLLER, "orchestrator", f"{P}/#")
    assert access.may_subscribe(Role.CONTROLLER, "orchestrator", f"{P}/node/+/status")
    assert not access.may_subscribe(Role.CONTROLLER, "orchestrator", "#")
    assert not access.may_subscribe(Role.CONTROLLER, "orchestrator", "qkdnet/other/#")
    assert not access.may_subscribe(Role.NODE, "a", f"{P}/#")
    assert TelemetryAccess.load(_saved(plan, access)) == access


def _saved(plan: NetworkPlan, access: TelemetryAccess) -> Path:
    path = plan.state_dir / "access.json"
    path.parent.mkdir(parents=True)
    path.write_text(access.to_json())
    return path


@pytest.mark.parametrize(
    ("allowed", "requested", "covered"),
    [
        ("a/#", "a/b/c", True),
        ("a/#", "a/+/c", True),
        ("a/#", "#", False),
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/#", False),
        ("a/b", "a/+", False),
        ("a/b", "a/b/c", False),
    ],
)
def test_filter_covers(allowed: str, requested: str, covered: bool) -> None:
    assert filter_covers(allowed, requested) is covered
    if "+" not in requested and "#" not in requested:
        assert topic_matches(allowed, requested) is covered


def test_mosquitto_acl_names_users_by_common_name(plan: NetworkPlan) -> None:
    acl = plan.telemetry_access().mosquitto_acl()
    assert "user orchestrator\ntopic read qkdnet/chain5/#\n" in acl
    assert "user b\n" in acl
    assert "topic write qkdnet/chain5/link/b--r3/store/b\n" in acl
    assert "topic write qkdnet/chain5/#" not in acl


def _status(node: str, **fields: object) -> bytes:
    return json.dumps({"schema": 1, "node": node, "state": "up", "ts": 1.0} | fields).encode()


BAD = [
    ("node/a/status", b"not json", "not JSON"),
    ("node/a/status", b"[1, 2]", "not a JSON object"),
    ("node/a/status", _status("b"), "node differs from the topic's"),
    ("node/zz/status", _status("zz"), "a node not in this deployment"),
    ("node/a/status", _status("a", state="[bold]up"), "unknown state"),
    ("node/a/status", _status("a", pid="12"), "pid is not an integer"),
    ("node/a/status", _status("a", uptime_s=float("nan")), "uptime_s is not a finite number"),
    ("node/a/status", _status("a", address="x" * 1000), "a text of 1000 characters"),
    ("node/a/status", _status("a", schema=2), "schema 2"),
    (
        "link/a--r1/stats",
        b'{"schema": 1, "link": "a--r1", "state": "running", "qber": true}',
        "qber",
    ),
    (
        "link/a--r1/stats",
        b'{"schema": 1, "link": "a--r1", "state": "running", "qber": "x"}',
        "qber",
    ),
    (
        "link/a--r1/stats",
        b'{"schema": 1, "link": "a--r1", "state": "running", "store_bits": "y"}',
        "store_bits",
    ),
    ("link/a--r1/stats", b'{"schema": 1, "link": "a--r1", "state": "[b]up"}', "unknown link state"),
    ("link/a--b/stats", b'{"schema": 1, "link": "a--b", "state": "running"}', "a link not in"),
    ("node/a/events", b'{"schema": 1, "node": "a", "event": "x\\u001b]0;owned\\u0007"}', "control"),
    ("node/a/events", b'{"schema": 1, "node": "a", "event": "\\u202egnp.exe"}', "control"),
    ("node/a/events", b'{"schema": 1, "node": "a"}', "no event"),
    ("secrets", b"{}", "a topic outside the tree"),
    ("node/a/status", b"1" * 70_000, "larger than 64 KiB"),
    ("node/a/status", b'{"n": ' + b"9" * 5000 + b"}", "not JSON"),
]


@pytest.mark.parametrize(("suffix", "payload", "reason"), BAD, ids=[b[2] for b in BAD])
def test_a_malformed_message_is_counted_not_kept(
    plan: NetworkPlan, suffix: str, payload: bytes, reason: str
) -> None:
    state = _state(plan)
    state.apply(P, f"{P}/{suffix}", payload)
    assert state.nodes == {}
    assert state.links == {}
    assert state.messages == 0
    assert [r for r in state.rejected if reason in r], state.rejected


def _state(plan: NetworkPlan) -> TelemetryState:
    return TelemetryState(known_nodes=frozenset(plan.nodes), known_links=frozenset(plan.link_ids()))


def test_markup_in_a_payload_is_shown_as_text(plan: NetworkPlan) -> None:
    state = _state(plan)
    state.apply(
        P,
        f"{P}/link/a--r1/stats",
        json.dumps(
            {"schema": 1, "link": "a--r1", "state": "running", "x": "[bold red]pwned[/]"}
        ).encode(),
    )
    state.apply(
        P,
        f"{P}/node/r1/events",
        json.dumps({"schema": 1, "node": "r1", "event": "[link=x]boom[/link]"}).encode(),
    )
    state.apply(P, f"{P}/node/r9/status", _status("r9"))  # refused: no such node
    for node in plan.nodes:
        state.apply(P, f"{P}/node/{node}/status", _status(node))
    console = Console(record=True, width=200, color_system=None)
    for part in telemetry_view(plan, state):
        console.print(part)
    text = console.export_text()
    assert "r1: [link=x]boom[/link]" in text
    assert "5/5 nodes report up" in text  # the forged sixth node counts for nothing
    assert "1 refused" in text
    assert "a node not in this deployment (1)" in text
