"""The SECOQC example as it ships: 200 keys between every pair of its SAEs and by multicast.

sae-stp (node stp) hangs off brt by the 85 km link; sae-sie and sae-gud are neighbours, and
every key for or from stp is relayed by brt (and maybe erd or gud), with pools on. Here the
keys cross a real deployment, where the 85 km link's key rate sets the pace; volume through
the API and the relay (a thousand keys each way) is tested in memory
(`tests/unit/test_etsi014_in_memory.py`).
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from qkdnet.orchestrator.plan.network_plan import NetworkPlan

from .sae import Sae, assert_link_keys_used_alike, deployed, sae_clients

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).parents[2] / "examples" / "secoqc.yaml"
SAES = ("sae-stp", "sae-sie", "sae-gud")
KEYS = 200
BATCH = 100


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetworkPlan]:
    with deployed(EXAMPLE, tmp_path_factory.mktemp("secoqc")) as plan:
        yield plan


@pytest.fixture
async def saes(plan: NetworkPlan) -> AsyncIterator[dict[str, Sae]]:
    async with sae_clients(plan) as clients:
        yield clients


async def _issue(master: Sae, slave: str, **body: object) -> dict[str, str]:
    issued: dict[str, str] = {}
    while len(issued) < KEYS:
        keys = await master.enc(slave, number=min(BATCH, KEYS - len(issued)), **body)
        issued.update({k["key_ID"]: k["key"] for k in keys})
    return issued


async def _fetch_once(slave: Sae, master: str, issued: dict[str, str]) -> None:
    ids = list(issued)
    fetched: dict[str, str] = {}
    for start in range(0, len(ids), BATCH):
        fetched |= await slave.dec(master, ids[start : start + BATCH])
    assert fetched == issued
    status, body = await slave.call("GET", f"{master}/dec_keys", params={"key_ID": ids[-1]})
    assert status == 400, "a key reaches each slave once"
    assert body["message"] == "one or more keys specified are not found on KME"


async def test_keys_between_every_pair_and_by_multicast(
    plan: NetworkPlan, saes: dict[str, Sae]
) -> None:
    everything: set[str] = set()
    for master, slave in itertools.permutations(SAES, 2):
        issued = await _issue(saes[master], slave, size=256)
        assert all(len(base64.b64decode(k)) == 32 for k in issued.values())
        await _fetch_once(saes[slave], master, issued)
        everything |= set(issued.values())
    multicast = await _issue(saes["sae-stp"], "sae-sie", additional_slave_SAE_IDs=["sae-gud"])
    for slave in ("sae-sie", "sae-gud"):
        await _fetch_once(saes[slave], "sae-stp", multicast)
    everything |= set(multicast.values())
    assert len(everything) == 7 * KEYS, "no key was ever handed out twice"

    used = await assert_link_keys_used_alike(plan)
    for link in ("brt--stp", "brt--sie"):
        assert used[link] > 0, f"{link} relayed: {used}"
