"""The ETSI GS QKD 014 API of a real node under a few thousand generated requests (fixed seeds):
no answer is a 500, every error is an ETSI Error body, and every answer is what the OpenAPI
document the node serves says.

Two generators: schemathesis, from the OpenAPI document (valid requests and requests that break
it, as requests would send them); and hypothesis, writing raw HTTP over TLS (what no HTTP library
sends: bad percent-encoding, non-ASCII digits, stray charsets, deep or huge JSON, bad methods).
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from schemathesis import Case, CheckContext, Response

from qkdnet.node.edge.etsi014 import INTERNAL_ERROR, openapi_document
from qkdnet.orchestrator.plan.network_plan import NetworkPlan

from .sae import deployed, sae_clients
from .schema_fuzz import schema_config

pytestmark = pytest.mark.integration

TOPOLOGY = {
    "name": "fuzzed",
    "defaults": {"speedup": 20, "frame_bits": 100_000},
    "nodes": {"a": {"saes": ["sae-a", "sae-a2"]}, "b": {"saes": ["sae-b"]}},
    "links": [{"endpoints": ["a", "b"], "length_km": 5}],
    "key_delivery": {"pool_keys": 32},
}
SAES = ["sae-a2", "sae-b", "sae-a", "nobody"]
ALLOWED = {200, 400, 401, 404, 405, 408, 413, 415, 503}
SEED = 20261207
# schemathesis: examples per operation (6 operations, valid and invalid) and its own coverage
# cases; hypothesis: raw requests.
SCHEMA_EXAMPLES = 350
RAW_EXAMPLES = 1200
STATUSES: Counter[str] = Counter()


def _document() -> dict[str, Any]:
    """The served document, with the SAE IDs in paths drawn from this network's (and one
    unknown), so that valid requests reach the keys; invalid ones still go anywhere."""
    document: dict[str, Any] = json.loads(openapi_document())
    for operations in document["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path":
                    parameter["schema"] = {"type": "string", "enum": SAES}
    return document


CONFIG = schema_config(SEED, SCHEMA_EXAMPLES)
SCHEMA = schemathesis.openapi.from_dict(_document(), config=CONFIG)


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetworkPlan]:
    with deployed(TOPOLOGY, tmp_path_factory.mktemp("fuzzed")) as plan:
        yield plan


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def _tls(plan: NetworkPlan) -> dict[str, Any]:
    where = plan.pki_dir / "saes" / "sae-a"
    return {
        "verify": str(plan.pki_dir / "ca.pem"),
        "cert": (str(where / "cert.pem"), str(where / "key.pem")),
    }


def _etsi_answer(response_status: int, content_type: str, body: bytes, method: str) -> None:
    """What every answer must be: an allowed status, JSON, an Error body unless 200."""
    STATUSES[str(response_status)] += 1
    assert response_status in ALLOWED, (response_status, body[:300])
    if method == "HEAD":
        return
    assert content_type.startswith("application/json"), (response_status, content_type)
    data = json.loads(body)
    assert isinstance(data, dict)
    if response_status != 200:
        assert isinstance(data.get("message"), str), data
        assert set(data) <= {"message", "details"}, data
        assert isinstance(data.get("details", []), list), data
    # A request that met a bug gets a 503 too (never a 500), but it is a bug all the same.
    assert data.get("message") not in (INTERNAL_ERROR, "the server could not handle the request")


def etsi_error_contract(ctx: CheckContext, response: Response, case: Case[Any]) -> None:
    content_type = (response.headers.get("content-type") or [""])[0]  # lower-case names, lists
    _etsi_answer(response.status_code, content_type, response.content, case.method.upper())


def test_the_node_serves_the_openapi_document(plan: NetworkPlan, session: requests.Session) -> None:
    url = f"{plan.nodes['a'].key_api_url}/api/v1/openapi.json"
    answer = session.get(url, timeout=10, **_tls(plan))
    assert answer.status_code == 200
    assert answer.content == openapi_document()
    assert set(answer.json()["paths"]) == {
        "/api/v1/keys/{slave_SAE_ID}/status",
        "/api/v1/keys/{slave_SAE_ID}/enc_keys",
        "/api/v1/keys/{master_SAE_ID}/dec_keys",
        "/api/v1/openapi.json",
    }


@SCHEMA.parametrize()
def test_generated_requests_get_documented_answers(
    case: Case[Any], plan: NetworkPlan, session: requests.Session
) -> None:
    case.call_and_validate(
        base_url=plan.nodes["a"].key_api_url,
        session=session,
        additional_checks=[etsi_error_contract],
        timeout=30,
        **_tls(plan),
    )


# -- raw requests -----------------------------------------------------------------------------
#
# Each raw request is a valid one (an operation with valid parameters) with one thing wrong, so
# that what is wrong reaches the code that handles it: a nasty value in the query or the body, a
# charset or media type, a path segment, a method, a body that is not JSON or nests too deeply.

# Values that broke, or could break, a parser: huge, non-ASCII digits, bad percent-encoding.
NASTY = [
    "9" * 5000,
    "²",
    "١٢",
    "%C2%B2",
    "%FF%FE",
    "%zz",
    "%",
    "0x10",
    "1e3",
    " 1",
    "-1",
    "0",
    "",
    "\u202e",
    "ＡＢ",
]
_NASTY = st.sampled_from(NASTY)
_ESCAPED = st.binary(min_size=1, max_size=8).map(lambda b: "".join(f"%{x:02X}" for x in b))
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


class Raw:
    """One HTTP/1.1 request, written out by hand."""

    def __init__(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        body: bytes = b"",
        content_type: str | None = "application/json",
    ) -> None:
        self.method, self.path, self.query = method, path, query
        self.body, self.content_type = body, content_type

    def encode(self) -> bytes:
        target = self.path
        if self.query:
            target += "?" + "&".join(f"{k}={v}" for k, v in self.query)
        head = [
            f"{self.method} {target} HTTP/1.1",
            "Host: kme",
            f"Content-Length: {len(self.body)}",
        ]
        if self.content_type is not None and self.body:
            head.append(f"Content-Type: {self.content_type}")
        return ("\r\n".join(head) + "\r\n\r\n").encode() + self.body

    def __repr__(self) -> str:
        return f"Raw({self.method} {self.path} {self.query} {self.content_type} {self.body[:80]!r})"


def _valid(draw: st.DrawFn) -> Raw:
    """A request that the node would answer with 200 (keys permitting)."""
    kind = draw(st.sampled_from(["status", "enc GET", "enc POST", "dec GET", "dec POST"]))
    peer = draw(st.sampled_from(["sae-b", "sae-a2"]))
    key_id = str(uuid.uuid4())
    if kind == "status":
        return Raw("GET", f"/api/v1/keys/{peer}/status", [])
    if kind == "enc GET":
        return Raw("GET", f"/api/v1/keys/{peer}/enc_keys", [("number", "2"), ("size", "256")])
    if kind == "enc POST":
        body = {"number": 2, "size": 256}
        return Raw("POST", f"/api/v1/keys/{peer}/enc_keys", [], json.dumps(body).encode())
    if kind == "dec GET":
        return Raw("GET", f"/api/v1/keys/{peer}/dec_keys", [("key_ID", key_id)])
    ids = {"key_IDs": [{"key_ID": key_id}]}
    return Raw("POST", f"/api/v1/keys/{peer}/dec_keys", [], json.dumps(ids).encode())


@st.composite
def _requests(draw: st.DrawFn) -> Raw:
    raw = _valid(draw)
    flaw = draw(
        st.sampled_from(
            ["query value", "query name", "body field", "body", "media type", "path", "method"]
        )
    )
    if flaw == "query value":
        name = draw(st.sampled_from(["number", "size", "key_ID"]))
        raw.query = [*raw.query, (name, draw(_NASTY | _ESCAPED))]
    elif flaw == "query name":
        raw.query = [*raw.query, (draw(_NASTY | _ESCAPED | st.text(max_size=6)), "1")]
    elif flaw == "body field":
        field = draw(st.sampled_from(["number", "size", "key_IDs", "additional_slave_SAE_IDs"]))
        value = draw(_NASTY | _JSON | st.integers())
        raw.method = "POST"
        raw.body = json.dumps({field: value}).encode()
    elif flaw == "body":
        raw.method = "POST"
        raw.body = draw(
            st.one_of(
                _JSON.map(lambda v: json.dumps(v).encode()),
                st.integers(1, 60_000).map(lambda depth: b"[" * depth + b"]" * depth),
                st.integers(4000, 6000).map(lambda n: b'{"number": ' + b"7" * n + b"}"),
                st.binary(max_size=64),
                st.just('{"number": ١}'.encode()),
                st.just(b"\xff\xfe{}"),
            )
        )
    elif flaw == "media type":
        raw.method = "POST"
        raw.body = raw.body or b"{}"
        raw.content_type = draw(
            st.sampled_from(
                [
                    None,
                    "application/json; charset=latin-1",
                    "application/json; charset=bogus",
                    "application/json; charset",
                    "application/vnd.etsi+json",
                    "text/plain",
                    "application/x-www-form-urlencoded",
                    "multipart/form-data; boundary=x",
                ]
            )
        )
    elif flaw == "path":
        segment = draw(_NASTY | _ESCAPED | st.text(max_size=8))
        parts = raw.path.split("/")
        parts[draw(st.sampled_from([4, 5]))] = segment
        raw.path = "/".join(parts)
    else:
        raw.method = draw(st.sampled_from(["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO"]))
    return raw


def _send(plan: NetworkPlan, raw: bytes) -> tuple[int, str, bytes]:
    """Send `raw` over TLS as sae-a; the answer."""
    host, port = plan.nodes["a"].key_api_address.rsplit(":", 1)  # type: ignore[union-attr]
    where = plan.pki_dir / "saes" / "sae-a"
    context = ssl.create_default_context(cafile=str(plan.pki_dir / "ca.pem"))
    context.load_cert_chain(str(where / "cert.pem"), str(where / "key.pem"))
    with (
        socket.create_connection((host, int(port)), timeout=30) as sock,
        context.wrap_socket(sock, server_hostname=host) as tls,
    ):
        tls.sendall(raw)
        response = http.client.HTTPResponse(tls)
        response.begin()
        return response.status, response.getheader("Content-Type", ""), response.read()


@seed(SEED)
@settings(
    max_examples=RAW_EXAMPLES,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(request=_requests())
def test_raw_requests_never_get_a_500(plan: NetworkPlan, request: Raw) -> None:
    status, kind, answer = _send(plan, request.encode())
    _etsi_answer(status, kind, answer, request.method)


# What the security probe of issue 13 found answered with 500 (or without an ETSI body), each
# sent as it was found.
FOUND = [
    Raw("GET", "/api/v1/keys/sae-b/enc_keys", [("number", "9" * 4301)]),
    Raw("GET", "/api/v1/keys/sae-b/enc_keys", [("number", "%C2%B2")]),
    Raw("GET", "/api/v1/keys/sae-b/enc_keys", [("size", "%D9%A1%D9%A2")]),
    Raw("GET", "/api/v1/keys/%FF%FE/status", []),
    Raw("GET", "/api/v1/keys/sae-b/dec_keys", [("key_ID", "%zz")]),
    Raw("POST", "/api/v1/keys/sae-b/enc_keys", [], b'{"number": ' + b"1" * 4301 + b"}"),
    Raw("POST", "/api/v1/keys/sae-b/enc_keys", [], b"[" * 100_000 + b"]" * 100_000),
    Raw("POST", "/api/v1/keys/sae-b/enc_keys", [], b'{"number": 1}', "application/json; charset=x"),
    Raw("POST", "/api/v1/keys/sae-b/enc_keys", [], '{"number": 1}'.encode("utf-16")),
    Raw("POST", "/api/v1/keys/sae-b/enc_keys", [], b"{" * 2 * (1 << 20)),  # 413
    Raw("GET", "/nowhere", []),  # 404
    Raw("DELETE", "/api/v1/keys/sae-b/enc_keys", []),  # 405
    Raw("PUT", "/api/v1/keys/sae-b/status", [], b"{}"),  # 405
]


@pytest.mark.parametrize("request_", FOUND, ids=[str(i) for i in range(len(FOUND))])
def test_what_the_probe_found_gets_an_etsi_error(plan: NetworkPlan, request_: Raw) -> None:
    status, kind, answer = _send(plan, request_.encode())
    _etsi_answer(status, kind, answer, request_.method)
    assert status in (400, 404, 405, 413, 415)


def test_a_malformed_chunked_body_gets_400(plan: NetworkPlan) -> None:
    raw = (
        b"POST /api/v1/keys/sae-b/enc_keys HTTP/1.1\r\nHost: kme\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\n{}\r\n0\r\n\r\n"
    )
    status, kind, answer = _send(plan, raw)
    _etsi_answer(status, kind, answer, "POST")
    assert status == 400


async def test_key_ids_are_compared_without_regard_to_case(plan: NetworkPlan) -> None:
    async with sae_clients(plan) as saes:
        keys = await saes["sae-a"].enc("sae-b", number=2)
        wanted = [keys[0]["key_ID"].upper(), keys[1]["key_ID"]]
        got = await saes["sae-b"].dec("sae-a", wanted)
    assert got == {wanted[0]: keys[0]["key"], wanted[1]: keys[1]["key"]}


def test_figures(request: pytest.FixtureRequest, plan: NetworkPlan) -> None:
    """How many requests were generated and what they got (printed with -s; the closing note
    quotes it). Also: the node is still serving, and said 200 and 400 and 405 at least."""
    total = sum(STATUSES.values())
    print(f"\nETSI 014 fuzz: {total} requests, statuses {dict(sorted(STATUSES.items()))}")
    if request.config.getoption("-k") or total == 0:
        pytest.skip("the generators above did not run in this session")
    assert total >= 2000
    assert {"200", "400", "405"} <= set(STATUSES)
    assert "500" not in STATUSES
    assert Path(plan.nodes["a"].log_path).exists()
