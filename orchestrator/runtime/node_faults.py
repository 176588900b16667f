"""Faults the nodes inject themselves, driven over NodeControl: cut links (process runtime), the
nodes' own shaping of their traffic (process runtime; Docker hosts without netem; toward one peer
on both) and live changes of a link's quantum channel (both runtimes).

`sync` brings running nodes in line with what `faults.json` records, so every change is "record,
then sync": the runtimes and `qkdnet fault` call it after each change, and for a node that
starts again or is unpaused. `read` asks the nodes what they hold.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc

from qkdnet.node.core.channel_change import ChannelChange
from qkdnet.node.errors import ConfigError, QkdnetError
from qkdnet.node.link_names import link_id_for
from qkdnet.v1 import control_pb2

from ..client.controller import NodeClient
from ..plan.network_plan import NetworkPlan
from .faults import FaultRecord, FaultReport, Impairment, link_pair
from .seam import BROKER, DeploymentInfo, Runtime

__all__ = [
    "ALL_PEERS",
    "FaultClient",
    "NodeFaultState",
    "read",
    "report",
    "sync",
    "sync_runtime",
    "wanted",
]

ALL_PEERS = "*"  # the node-wide scope of a node's shaping (qkdnet.node.edge.channel_shaping)
T = TypeVar("T")


def _shaping(impairment: Impairment) -> control_pb2.Shaping:
    return control_pb2.Shaping(
        delay_ms=impairment.delay_ms,
        jitter_ms=impairment.jitter_ms,
        loss_percent=impairment.loss_percent,
        rate_kbit=impairment.rate_kbit,
    )


def _change(change: ChannelChange) -> control_pb2.ChannelChange:
    return control_pb2.ChannelChange(
        eavesdrop_fraction=change.eavesdrop_fraction,
        extra_loss_db=change.extra_loss_db,
        misalignment_error=change.misalignment_error,
    )


@dataclass(frozen=True)
class NodeFaultState:
    """The live faults of one node: cut peers, shaping by scope (`ALL_PEERS`: node-wide) and
    changed channels by link pair."""

    cut_peers: frozenset[str] = frozenset()
    shaping: dict[str, Impairment] = field(default_factory=dict)
    channels: dict[tuple[str, str], ChannelChange] = field(default_factory=dict)

    @classmethod
    def of(cls, message: control_pb2.NodeFaults) -> NodeFaultState:
        shaping = {
            scope: Impairment(s.delay_ms, s.jitter_ms, s.loss_percent, s.rate_kbit)
            for scope, s in message.shaping.items()
        }
        channels = {}
        for item in message.channels:
            a, _, b = item.link_id.partition("--")
            c = item.change
            channels[link_pair(a, b)] = ChannelChange(
                c.eavesdrop_fraction if c.HasField("eavesdrop_fraction") else None,
                c.extra_loss_db,
                c.misalignment_error if c.HasField("misalignment_error") else None,
            )
        return cls(frozenset(message.cut_peers), shaping, channels)


class FaultClient(NodeClient):
    """NodeControl's fault methods of one node."""

    async def set_peer(
        self, peer: str, *, cut: bool | None = None, shaping: Impairment | None = None
    ) -> NodeFaultState:
        request = control_pb2.PeerFaultsRequest(peer=peer, cut=cut)
        if shaping is not None:
            request.shaping.CopyFrom(_shaping(shaping))
        return NodeFaultState.of(await self._stub.SetPeerFaults(request, timeout=5.0))

    async def set_channel(self, link_id: str, change: ChannelChange) -> NodeFaultState:
        request = control_pb2.ChannelChangeRequest(link_id=link_id, change=_change(change))
        return NodeFaultState.of(await self._stub.SetChannelChange(request, timeout=5.0))

    async def faults(self) -> NodeFaultState:
        return NodeFaultState.of(
            await self._stub.GetFaults(control_pb2.FaultsRequest(), timeout=5.0)
        )


def wanted(
    plan: NetworkPlan, record: FaultRecord, node: str, *, cuts: bool, node_wide: bool
) -> NodeFaultState:
    """What `node` should hold of `record`: its cuts when `cuts` (the process runtime), its
    node-wide impairment when `node_wide` (no kernel netem), its impairments toward single
    peers and its links' channel changes."""
    shaping = dict(record.peer_impairments_of(node))
    if node_wide and node in record.impairments:
        shaping[ALL_PEERS] = record.impairments[node]
    return NodeFaultState(
        frozenset(record.cuts_of(node)) if cuts else frozenset(),
        {scope: imp for scope, imp in shaping.items() if not imp.is_none},
        {pair: c for pair, c in record.channels_of(node).items() if not c.is_none},
    )


async def _bring_in_line(client: FaultClient, plan: NetworkPlan, want: NodeFaultState) -> None:
    have = await client.faults()
    node = client.node_id
    peers = {p for link in plan.links if node in link.endpoints for p in link.endpoints} - {node}
    for peer in sorted(peers | have.cut_peers):
        if (peer in want.cut_peers) != (peer in have.cut_peers):
            await client.set_peer(peer, cut=peer in want.cut_peers)
    scopes = set(have.shaping) | set(want.shaping)
    for scope in sorted(scopes):
        target = want.shaping.get(scope, Impairment())
        if have.shaping.get(scope, Impairment()) != target:
            await client.set_peer("" if scope == ALL_PEERS else scope, shaping=target)
    for pair in sorted(set(have.channels) | set(want.channels)):
        change = want.channels.get(pair, ChannelChange())
        if have.channels.get(pair, ChannelChange()) != change:
            await client.set_channel(link_id_for(*pair), change)


def _on_nodes(
    plan: NetworkPlan,
    nodes: Iterable[str],
    work: Callable[[FaultClient], Awaitable[T]],
    *,
    skip_failures: bool = False,
) -> dict[str, T]:
    """Run `work` against every node at once; ConfigError for what a node refused as invalid,
    QkdnetError naming the node for anything else (with `skip_failures`, such a node is left
    out of the answer instead)."""

    async def one(node: str) -> T:
        client = FaultClient(node, plan.nodes[node].address, plan.controller_credentials)
        try:
            return await work(client)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise ConfigError(f"{node}: {exc.details()}") from None
            raise QkdnetError(
                f"{node} did not take the fault ({exc.code().name}: {exc.details()})"
            ) from None
        finally:
            await client.close()

    async def every() -> dict[str, T]:
        names = list(dict.fromkeys(nodes))
        results = await asyncio.gather(*(one(n) for n in names), return_exceptions=skip_failures)
        answers: dict[str, T] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, QkdnetError):
                    raise result
                continue
            answers[name] = result
        return answers

    return asyncio.run(every())


def sync(
    plan: NetworkPlan, record: FaultRecord, nodes: Iterable[str], *, cuts: bool, node_wide: bool
) -> list[str]:
    """Make each of `nodes` (running ones: a paused node would not answer) hold what `record`
    says (see `wanted`); returns them."""
    names = list(nodes)
    _on_nodes(
        plan,
        names,
        lambda client: _bring_in_line(
            client,
            plan,
            wanted(plan, record, client.node_id, cuts=cuts, node_wide=node_wide),
        ),
    )
    return names


def read(plan: NetworkPlan, nodes: Iterable[str]) -> dict[str, NodeFaultState]:
    """What each of `nodes` (running ones) holds; one that does not answer is left out."""
    return _on_nodes(plan, nodes, lambda client: client.faults(), skip_failures=True)


def sync_runtime(
    runtime: Runtime, nodes: Iterable[str], record: FaultRecord | None = None
) -> list[str]:
    """`sync` the running ones of `nodes` with the deployment's record (or `record`): cuts are
    the nodes' own on the process runtime (Docker's are the kernel's), and so is the node-wide
    impairment unless a Docker host's kernel netem takes it. Returns the nodes synced."""
    if record is None:
        record = FaultRecord.load(runtime.plan.state_dir)
    info = runtime.inspect()
    running = [
        n for n in dict.fromkeys(nodes) if n in info.nodes and info.nodes[n].state == "running"
    ]
    docker = runtime.name == "docker"
    return sync(
        runtime.plan,
        record,
        running,
        cuts=not docker,
        node_wide=not docker or record.kernel_netem is False,
    )


def report(runtime: Runtime, info: DeploymentInfo, record: FaultRecord) -> FaultReport:
    """The faults in force as the nodes hold them (a node that is not running: as it gets them
    when it starts), with the paused nodes and broker of `info`; cuts the nodes' own only on
    the process runtime."""
    paused = [n for n, c in info.nodes.items() if c.state == "paused"]
    if info.broker is not None and info.broker.state == "paused":
        paused.append(BROKER)
    running = [n for n, c in info.nodes.items() if c.state == "running"]
    live = read(runtime.plan, running)
    docker = runtime.name == "docker"
    cuts: set[tuple[str, str]] = set()
    impairments: dict[str, Impairment] = {}
    peers: dict[str, dict[str, Impairment]] = {}
    channels: dict[tuple[str, str], ChannelChange] = {}
    for node in info.nodes:
        state = live.get(node)
        if state is None:  # not running: what it gets when it starts
            state = wanted(
                runtime.plan,
                record,
                node,
                cuts=not docker,
                node_wide=not docker or record.kernel_netem is False,
            )
        cuts.update(link_pair(node, peer) for peer in state.cut_peers)
        for scope, impairment in state.shaping.items():
            if scope == ALL_PEERS:
                impairments[node] = impairment
            else:
                peers.setdefault(node, {})[scope] = impairment
        channels.update(state.channels)
    return FaultReport(
        paused=paused,
        cuts=sorted(cuts),
        impairments=impairments,
        mechanism=dict.fromkeys(impairments, "in-node"),
        peer_impairments=peers,
        channels=dict(sorted(channels.items())),
    )
