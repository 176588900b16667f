"""ETSI GS QKD 004 key streams between two nodes joined in memory: real link stores, relays,
delivered-key stores and key managers; the KMEs of a stream's two ends speak through
`InMemoryStreamNetwork`. Statuses as the UC3M C wrapper's and QUBIP's tests expect them."""

from __future__ import annotations

import asyncio
import json
import types
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from qkdnet.node.edge.relay_codec import RELAY_CODEC
from qkdnet.node.errors import RelayError
from qkdnet.node.protocol.key_manager import DeliveryPolicy, KeyManager
from qkdnet.node.protocol.key_stream_messages import StreamQos, StreamStatus, chunk_id
from qkdnet.node.protocol.key_streams import KeyStreams, StreamLimits, sae_of_uri
from qkdnet.node.protocol.relay import KeyRelay
from qkdnet.node.protocol.relay_messages import LinkState, LinkStateAdvert
from qkdnet.node.protocol.routing import Router
from qkdnet.node.store.delivered_keys import DeliveredKeys, DeliveredKeysDb
from qkdnet.node.store.key_store import KeyStore
from qkdnet.node.testing import InMemoryRelayNetwork, InMemoryStreamNetwork, store_same_key

RATE_BPS = 200_000  # what the a-b link advertises in each direction
STORED = 1 << 22  # and the key it holds each way
QOS = StreamQos(key_chunk_size=32, max_bps=64_000, min_bps=1_000, timeout=2_000, ttl=60)
A, B, A2 = "qkd://sae-a", "qkd://sae-b", "qkd://sae-a2"


@dataclass
class Net:
    streams: dict[str, KeyStreams]
    delivered: dict[str, DeliveredKeys]
    relays: InMemoryRelayNetwork
    stream_net: InMemoryStreamNetwork


def _advert(origin: str, peer: str, saes: tuple[str, ...]) -> LinkStateAdvert:
    link = LinkState(peer=peer, up=True, bits_out=STORED, bits_in=STORED, rate_out_bps=RATE_BPS)
    return LinkStateAdvert(origin=origin, sequence=1, links=(link,), saes=saes)


@asynccontextmanager
async def _network(tmp_path: Path, limits: StreamLimits | None = None) -> AsyncIterator[Net]:
    saes = {"a": ("sae-a", "sae-a2"), "b": ("sae-b",)}
    directory = {sae: node for node, names in saes.items() for sae in names}
    relays, stream_net = InMemoryRelayNetwork(), InMemoryStreamNetwork()
    net = Net({}, {}, relays, stream_net)
    async with AsyncExitStack() as stack:
        ends = {}
        for end, peer in (("a", "b"), ("b", "a")):
            ends[end] = await KeyStore.open(tmp_path / f"{end}-{peer}.sqlite")
            stack.push_async_callback(ends[end].close)
        await store_same_key([ends["a"], ends["b"]], blocks=8, block_bits=256_000)
        for node, peer in (("a", "b"), ("b", "a")):
            delivered = await DeliveredKeys.open(tmp_path / f"{node}-delivered.sqlite")
            stack.push_async_callback(delivered.close)
            net.delivered[node] = delivered
            links = {peer: types.SimpleNamespace(store=ends[node])}
            relay = KeyRelay(
                node,
                links,  # type: ignore[arg-type]
                delivered,
                relays.peers_of(node),
                frozenset(saes[node]),
                codec=RELAY_CODEC,
            )
            relays.add(relay)
            router = Router(node)
            router.accept(_advert("a", "b", saes["a"]))
            router.accept(_advert("b", "a", saes["b"]))
            manager = KeyManager(
                node,
                saes[node],
                directory,
                relay,
                router,
                delivered,
                policy=DeliveryPolicy(pool_keys=0),
            )
            streams = KeyStreams(
                node,
                frozenset(saes[node]),
                manager,
                router,
                delivered,
                stream_net.peers_of(node),
                limits or StreamLimits(),
            )
            stream_net.add(streams)
            net.streams[node] = streams
            stack.push_async_callback(streams.close_all)
        yield net


async def _connected(net: Net, qos: StreamQos = QOS) -> uuid.UUID:
    opened = await net.streams["a"].open_connect("sae-a", A, B, qos)
    assert opened.status is StreamStatus.PEER_NOT_CONNECTED
    assert opened.ksid is not None
    assert opened.ksid.version == 4
    joined = await net.streams["b"].open_connect("sae-b", B, A, StreamQos(), opened.ksid)
    assert joined.status is StreamStatus.SUCCESS
    return opened.ksid


async def test_both_ends_read_the_same_chunks_in_order(tmp_path: Path) -> None:
    async with _network(tmp_path) as net:
        ksid = await _connected(net)
        a, b = net.streams["a"], net.streams["b"]
        at_a = [await a.get_key("sae-a", ksid, i, 1024) for i in range(20)]
        at_b = [await b.get_key("sae-b", ksid, i, 1024) for i in range(20)]
        assert all(c.status is StreamStatus.SUCCESS for c in at_a + at_b)
        assert [c.key for c in at_a] == [c.key for c in at_b]
        assert [c.index for c in at_b] == list(range(20))
        assert all(len(c.key) == 32 for c in at_b)
        assert len({c.key for c in at_a}) == 20
        # Index again: the same bytes. Metadata is JSON with the route's length.
        again = await b.get_key("sae-b", ksid, 3, 1024)
        assert again.key == at_b[3].key
        assert json.loads(again.metadata)["hops"] == 1
        # Another stream: other bytes.
        other = await _connected(net)
        first = await b.get_key("sae-b", other, 0, 1024)
        assert first.key != at_b[0].key


async def test_the_peer_gets_the_initiators_qos_and_no_third_open(tmp_path: Path) -> None:
    async with _network(tmp_path) as net:
        opened = await net.streams["a"].open_connect("sae-a", A, B, QOS)
        assert opened.ksid is not None
        # Before the peer opened: no key yet.
        early = await net.streams["a"].get_key("sae-a", opened.ksid, 0, 1024)
        assert early.status is StreamStatus.NOT_CONNECTED
        joined = await net.streams["b"].open_connect(
            "sae-b", B, A, StreamQos(key_chunk_size=64), opened.ksid
        )
        assert joined.status is StreamStatus.SUCCESS
        assert joined.qos == QOS
        for streams, sae in ((net.streams["a"], "sae-a"), (net.streams["b"], "sae-b")):
            again = await streams.open_connect(sae, A, B, QOS, opened.ksid)
            assert again.status is StreamStatus.KSID_IN_USE


async def test_qos_beyond_the_route_is_refused_with_a_counter_proposal(tmp_path: Path) -> None:
    async with _network(tmp_path) as net:
        a = net.streams["a"]
        too_fast = await a.open_connect("sae-a", A, B, QOS.but(max_bps=1_000_000))
        assert too_fast.status is StreamStatus.QOS_NOT_MET
        assert too_fast.ksid is None
        # What the link adds per second, and what it holds spread over the stream's TTL.
        capacity = RATE_BPS + STORED // QOS.ttl
        assert too_fast.qos == QOS.but(max_bps=capacity)
        # Streams opened here reserve the route's rate.
        await _connected(net)
        await _connected(net)
        third = await a.open_connect("sae-a", A, B, QOS.but(max_bps=200_000))
        assert third.status is StreamStatus.QOS_NOT_MET
        assert third.qos.max_bps == capacity - 2 * QOS.max_bps
        upside_down = await a.open_connect("sae-a", A, B, QOS.but(min_bps=70_000))
        assert upside_down.status is StreamStatus.QOS_NOT_MET
        assert upside_down.qos.min_bps == upside_down.qos.max_bps == QOS.max_bps
        mimetype = await a.open_connect("sae-a", A, B, QOS.but(metadata_mimetype="text/xml"))
        assert mimetype.status is StreamStatus.QOS_NOT_MET
        assert mimetype.qos.metadata_mimetype == "application/json"
        # Nothing was made for the refusals: the destination's KME knows two streams.
        assert len(net.streams["b"].snapshot()) == 2


async def test_no_route_no_destination_no_uri_is_status_4(tmp_path: Path) -> None:
    async with _network(tmp_path) as net:
        a = net.streams["a"]
        for source, destination in ((A, "qkd://sae-nobody"), ("client", B), (A, "sae-b")):
            opened = await a.open_connect("sae-a", source, destination, QOS)
            assert opened.status is StreamStatus.NO_QKD_CONNECTION, (source, destination)
        net.stream_net.down.add("b")
        assert (await a.open_connect("sae-a", A, B, QOS)).status is (StreamStatus.NO_QKD_CONNECTION)
    assert sae_of_uri("server://SAE-b:25575") == "SAE-b"
    # Clients that dial the destination URI's host (the UC3M wrapper) name the SAE beside it.
    assert sae_of_uri("server://sae-b@127.0.0.3:25575") == "sae-b"
    assert sae_of_uri("server://127.0.0.3:25575/sae-b") == "sae-b"


async def test_get_key_statuses(tmp_path: Path) -> None:
    async with _network(tmp_path) as net:
        ksid = await _connected(net)
        b = net.streams["b"]
        assert (await b.get_key("sae-b", ksid, 1_000_000, 1024)).status is (
            StreamStatus.INSUFFICIENT_KEY
        )
        small = await b.get_key("sae-b", ksid, 0, 1)
        assert small.status is StreamStatus.METADATA_TOO_SMALL
        assert small.key == b""
        assert small.metadata_size > 1
        exact = await b.get_key("sae-b", ksid, 0, small.metadata_size + 4)
        assert exact.status is StreamStatus.SUCCESS
        assert (await b.get_key("sae-b", uuid.uuid4(), 0, 1024)).status is (
            StreamStatus.NOT_CONNECTED
        )
        # Another SAE of the same node is no end of this stream.
        assert (await net.streams["a"].get_key("sae-a2", ksid, 0, 1024)).status is (
            StreamStatus.NOT_CONNECTED
        )
        # An empty mimetype: no metadata at all, any buffer will do.
        bare = await _connected(net, QOS.but(metadata_mimetype="", max_bps=8_000))
        plain = await b.get_key("sae-b", bare, 0, 0)
        assert plain.status is StreamStatus.SUCCESS
        assert plain.metadata == b""


async def test_closing_one_end_ends_the_stream_at_both(tmp_path: Path) -> None:
    async with _network(tmp_path) as net:
        ksid = await _connected(net)
        a, b = net.streams["a"], net.streams["b"]
        assert (await a.get_key("sae-a", ksid, 0, 1024)).status is StreamStatus.SUCCESS
        assert await b.close("sae-b", ksid) is StreamStatus.SUCCESS
        await asyncio.sleep(0)
        assert (await a.get_key("sae-a", ksid, 1, 1024)).status is StreamStatus.NOT_CONNECTED
        assert (await b.get_key("sae-b", ksid, 1, 1024)).status is StreamStatus.NOT_CONNECTED
        assert await b.close("sae-b", ksid) is StreamStatus.SUCCESS  # again: idempotent
        assert await a.close("sae-a", ksid) is StreamStatus.SUCCESS
        assert await b.close("sae-b", uuid.uuid4()) is StreamStatus.NOT_CONNECTED
        reopened = await a.open_connect("sae-a", A, B, QOS, ksid)
        assert reopened.status is StreamStatus.KSID_IN_USE
        # What b held of the stream's key and never read is gone from its store.
        delivered = net.delivered["b"]
        assert await delivered.run(lambda db: DeliveredKeysDb.count(db, "sae-a")) == 0
        assert not a.snapshot()
        assert not b.snapshot()


async def test_a_waiting_reader_is_released_when_the_other_end_closes(tmp_path: Path) -> None:
    async with _network(tmp_path) as net:
        ksid = await _connected(net, QOS.but(max_bps=256, min_bps=0, timeout=30_000))
        b = net.streams["b"]
        assert (await b.get_key("sae-b", ksid, 0, 1024)).status is StreamStatus.SUCCESS
        waiting = asyncio.create_task(b.get_key("sae-b", ksid, 5, 1024))  # due in 5 s
        await asyncio.sleep(0.1)
        await net.streams["a"].close("sae-a", ksid)
        assert (await asyncio.wait_for(waiting, 5)).status is StreamStatus.NOT_CONNECTED


async def test_keys_are_paced_to_the_stream_rate(tmp_path: Path) -> None:
    # 32-byte chunks at 25.6 kbit/s: one chunk every 10 ms. No chunk may come early.
    async with _network(tmp_path) as net:
        ksid = await _connected(net, QOS.but(max_bps=25_600))
        b = net.streams["b"]
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(40):
            assert (await b.get_key("sae-b", ksid, i, 1024)).status is StreamStatus.SUCCESS
        assert loop.time() - start >= 0.39 - 0.02  # chunk 39 is due 390 ms after connecting
        # A timeout shorter than the wait for a chunk not yet due: status 2 at once.
        short = await _connected(net, QOS.but(max_bps=256, min_bps=0, timeout=100))
        assert (await b.get_key("sae-b", short, 0, 1024)).status is StreamStatus.SUCCESS
        assert (await b.get_key("sae-b", short, 1, 1024)).status is (StreamStatus.INSUFFICIENT_KEY)


async def test_a_stream_between_two_saes_of_one_node_needs_no_relay(tmp_path: Path) -> None:
    async with _network(tmp_path) as net:
        a = net.streams["a"]
        opened = await a.open_connect("sae-a", A, A2, QOS)
        assert opened.status is StreamStatus.PEER_NOT_CONNECTED
        assert opened.ksid is not None
        joined = await a.open_connect("sae-a2", A2, A, QOS, opened.ksid)
        assert joined.status is StreamStatus.SUCCESS
        one = await a.get_key("sae-a", opened.ksid, 0, 1024)
        two = await a.get_key("sae-a2", opened.ksid, 0, 1024)
        assert one.status is two.status is StreamStatus.SUCCESS
        assert one.key == two.key
        assert json.loads(one.metadata)["hops"] == 0
        assert net.relays.relays["a"].counters.frames_sent == 0


async def test_the_ttl_ends_the_stream_at_both_ends(tmp_path: Path) -> None:
    async with _network(tmp_path) as net:
        ksid = await _connected(net, QOS.but(ttl=1))
        await asyncio.sleep(1.05)
        assert await net.streams["a"].expire_once() == 1
        await asyncio.sleep(0)
        assert (await net.streams["b"].get_key("sae-b", ksid, 0, 1024)).status is (
            StreamStatus.NOT_CONNECTED
        )
        assert net.streams["a"].counters.expired == 1


async def test_a_chunk_relayed_is_an_ordinary_key_of_the_sae_pair_handed_out_once(
    tmp_path: Path,
) -> None:
    async with _network(tmp_path) as net:
        ksid = await _connected(net)
        b = net.streams["b"]
        got = await b.get_key("sae-b", ksid, 0, 1024)
        # Taken by the stream: ETSI 014's dec_keys cannot have it any more.
        with pytest.raises(Exception, match="not found"):
            await net.delivered["b"].run(lambda db: db.take("sae-b", "sae-a", [chunk_id(ksid, 0)]))
        assert got.status is StreamStatus.SUCCESS


async def test_a_stream_its_peer_never_opens_ends_and_frees_its_rate(tmp_path: Path) -> None:
    async with _network(tmp_path, StreamLimits(join_within_s=0.2)) as net:
        a = net.streams["a"]
        opened = await a.open_connect("sae-a", A, B, QOS.but(max_bps=RATE_BPS))
        assert opened.status is StreamStatus.PEER_NOT_CONNECTED
        assert opened.ksid is not None
        refused = await a.open_connect("sae-a", A, B, QOS.but(max_bps=RATE_BPS))
        assert refused.status is StreamStatus.QOS_NOT_MET
        await asyncio.sleep(0.3)
        assert await a.expire_once() == 1
        await asyncio.sleep(0)
        late = await net.streams["b"].open_connect("sae-b", B, A, QOS, opened.ksid)
        assert late.status is StreamStatus.KSID_IN_USE
        again = await a.open_connect("sae-a", A, B, QOS.but(max_bps=RATE_BPS))
        assert again.status is StreamStatus.PEER_NOT_CONNECTED


async def test_each_kme_message_is_taken_only_from_the_end_that_sends_it(tmp_path: Path) -> None:
    async with _network(tmp_path) as net:
        ksid = await _connected(net)
        a, b = net.streams["a"], net.streams["b"]
        (announcement,) = [s for s in b.snapshot() if s["ksid"] == str(ksid)]
        assert announcement["origin"] == "a"
        # b (the destination's KME) cannot re-rate, advance or connect a's stream.
        with pytest.raises(RelayError):
            await a.progress(ksid, 10_000, "b")
        with pytest.raises(RelayError):
            b.peer_connected(ksid, "a")
        # ... and the origin cannot claim more chunks than a batch and the window.
        with pytest.raises(RelayError):
            await b.progress(ksid, 10**9, "a")
        # An SAE served by b has no streams at a's KME.
        opened = await a.open_connect("sae-b", B, A, QOS)
        assert opened.status is StreamStatus.NO_QKD_CONNECTION


async def test_a_rate_of_zero_is_never_granted(tmp_path: Path) -> None:
    async with _network(tmp_path, StreamLimits(local_max_bps=1000)) as net:
        a = net.streams["a"]
        first = await a.open_connect("sae-a", A, A2, QOS.but(max_bps=1000, min_bps=0))
        assert first.status is StreamStatus.PEER_NOT_CONNECTED
        nothing_left = await a.open_connect("sae-a", A, A2, QOS.but(max_bps=0, min_bps=0))
        assert nothing_left.status is StreamStatus.QOS_NOT_MET
        assert nothing_left.qos.max_bps == 0


async def test_a_new_rate_keeps_what_was_due_due(tmp_path: Path) -> None:
    async with _network(tmp_path) as net:
        ksid = await _connected(net, QOS.but(max_bps=25_600))
        b = net.streams["b"]
        read = [await b.get_key("sae-b", ksid, i, 1024) for i in range(6)]
        assert all(c.status is StreamStatus.SUCCESS for c in read)
        await net.streams["a"].update_qos(ksid, max_bps=2_560)
        again = await b.get_key("sae-b", ksid, 5, 1024)
        assert again.status is StreamStatus.SUCCESS
        assert again.key == read[5].key


async def test_both_ends_on_one_node_keep_every_chunk_the_slower_has_not_read(
    tmp_path: Path,
) -> None:
    async with _network(tmp_path, StreamLimits(retained_chunks=8)) as net:
        a = net.streams["a"]
        opened = await a.open_connect("sae-a", A, A2, QOS.but(timeout=200))
        assert opened.ksid is not None
        await a.open_connect("sae-a2", A2, A, QOS, opened.ksid)
        fast = [await a.get_key("sae-a", opened.ksid, i, 1024) for i in range(8)]
        assert all(c.status is StreamStatus.SUCCESS for c in fast)
        # The faster end cannot run further ahead than the window...
        ahead = await a.get_key("sae-a", opened.ksid, 12, 1024)
        assert ahead.status is StreamStatus.TIMEOUT
        # ... and the slower one still gets the first chunk, the same.
        slow = await a.get_key("sae-a2", opened.ksid, 0, 1024)
        assert slow.status is StreamStatus.SUCCESS
        assert slow.key == fast[0].key
