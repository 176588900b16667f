"""A WireGuard encryptor fed by qkdnet, as arnika feeds one: its preshared key rotated from an
ETSI GS QKD 004 key stream.

Run in a container holding `wireguard-go`, `wg` and `ip`, with NET_ADMIN and /dev/net/tun,
as one SAE of a deployment (`python -m qkdnet.orchestrator.client.wireguard_psk --help`):

1. brings up `wg0` (userspace WireGuard) with its own X25519 key, its tunnel address and the
   peer encryptor's public key, endpoint and tunnel address;
2. opens the key stream `--ksid` towards the peer encryptor's SAE at its own KME (both sides
   name the same KSID: whichever opens first makes the stream, the other joins it), with one
   32-byte chunk per `--interval` seconds as its QoS;
3. for rotation k = 0, 1, 2, ...: GET_KEY of chunk k (which the KME hands out once it is due:
   the stream's pacing keeps both sides' rotations together), sets it as the peer's preshared
   key, and, on the side that `--initiates`, drops and re-adds the peer a moment later so that
   WireGuard shakes hands again at once, under the new key (without it the key would apply from
   the next rekey, within two minutes).

Each rotation is one JSON line on stdout: its index, the key's SHA-256 fingerprint (never the
key), and WireGuard's latest handshake. The key is written to a file of mode 0600 on a tmpfs
only for `wg` to read, and removed at once. `--rotations` bounds the run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from qkdnet.node.edge.etsi004_client import (
    GetKeyAnswer,
    KeyStreamClient,
    StreamQos,
    StreamStatus,
)
from qkdnet.node.edge.etsi014_client import client_ssl_context
from qkdnet.orchestrator.plan.credentials import CertificatePaths

__all__ = ["main", "wireguard_keypair"]

CHUNK_BYTES = 32  # a WireGuard preshared key
INTERFACE = "wg0"
PORT = 51820


def wireguard_keypair() -> tuple[str, str]:
    """(private, public) X25519 keys in WireGuard's base64."""
    private = X25519PrivateKey.generate()
    raw_private = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    raw_public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return base64.b64encode(raw_private).decode(), base64.b64encode(raw_public).decode()


def _run(*command: str, secret: bytes | None = None) -> str:
    done = subprocess.run(command, input=secret, capture_output=True, timeout=30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])}: {done.stderr.decode(errors='replace')}")
    return done.stdout.decode()


def _with_secret_file(secret: str, *command: str) -> None:
    """Run `command` with `@` replaced by a 0600 file holding `secret` (removed after)."""
    fd, path = tempfile.mkstemp(dir="/dev/shm" if Path("/dev/shm").is_dir() else None)
    try:
        os.write(fd, secret.encode())
        os.close(fd)
        _run(*(path if part == "@" else part for part in command))
    finally:
        os.unlink(path)


def _bring_up(args: argparse.Namespace) -> None:
    env = os.environ | {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}
    done = subprocess.run(
        ["wireguard-go", INTERFACE], env=env, capture_output=True, timeout=30, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"wireguard-go: {done.stderr.decode(errors='replace')}")
    _run("ip", "address", "add", args.address, "dev", INTERFACE)
    _with_secret_file(
        args.private_key, "wg", "set", INTERFACE, "listen-port", str(PORT), "private-key", "@"
    )
    for attempt in range(30):  # the peer's container (its name) may not be up yet
        try:
            _add_peer(args, None)
            break
        except RuntimeError:
            if attempt == 29:
                raise
            time.sleep(1.0)
    _run("ip", "link", "set", INTERFACE, "up")


def _add_peer(args: argparse.Namespace, psk: str | None) -> None:
    command = [
        "wg", "set", INTERFACE, "peer", args.peer_public_key,
        "endpoint", f"{args.peer_endpoint}:{PORT}",
        "allowed-ips", args.peer_allowed_ip,
        "persistent-keepalive", "1",
    ]  # fmt: skip
    if psk is None:
        _run(*command)
    else:
        _with_secret_file(psk, *command, "preshared-key", "@")


def _latest_handshake(args: argparse.Namespace) -> int:
    for line in _run("wg", "show", INTERFACE, "latest-handshakes").splitlines():
        key, _, stamp = line.partition("\t")
        if key == args.peer_public_key:
            return int(stamp or 0)
    return 0


def _emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def _open(client: KeyStreamClient, args: argparse.Namespace, qos: StreamQos) -> None:
    """Open or join the stream, whichever this side gets to first (bounded)."""
    ksid = uuid.UUID(args.ksid)
    deadline = time.monotonic() + 120
    while True:
        opened = await client.open_connect(f"qkd://{args.sae}", f"qkd://{args.peer_sae}", qos, ksid)
        if opened.status in (StreamStatus.SUCCESS, StreamStatus.PEER_NOT_CONNECTED):
            _emit(event="stream_opened", status=int(opened.status), ksid=args.ksid)
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"OPEN_CONNECT answered {opened.status.value} for two minutes")
        # 7 while routing learns the key rates; 5 when both sides opened at once: again, at
        # another moment than the peer.
        await asyncio.sleep(random.uniform(0.5, 1.5))


async def _chunk(
    client: KeyStreamClient, ksid: uuid.UUID, index: int, interval: float
) -> GetKeyAnswer | None:
    """Chunk `index` once it is due; while the peer has not joined yet (3) or the chunk is
    late (6), again (bounded). None, said on stdout, when it never came."""
    deadline = time.monotonic() + 2 * interval + 60
    while True:
        got = await client.get_key(ksid, index, 0)
        if got.status is StreamStatus.SUCCESS and got.index == index:
            return got
        if got.status not in (StreamStatus.NOT_CONNECTED, StreamStatus.TIMEOUT) or (
            time.monotonic() > deadline
        ):
            _emit(event="rotation_failed", rotation=index, status=int(got.status))
            return None
        await asyncio.sleep(0.5)


async def _rotate(args: argparse.Namespace) -> None:
    credentials = CertificatePaths(Path(args.cert), Path(args.key), Path(args.ca))
    host, _, port = args.kme.rpartition(":")
    max_bps = max(1, round(CHUNK_BYTES * 8 / args.interval))
    qos = StreamQos(
        key_chunk_size=CHUNK_BYTES,
        max_bps=max_bps,
        timeout=min(60_000, int(args.interval * 1000) + 5000),
        ttl=max(60, int(args.interval * (args.rotations + 4))),
        metadata_mimetype="",  # no metadata: the key is all this side needs
    )
    async with KeyStreamClient(host, int(port), client_ssl_context(credentials)) as client:
        await _open(client, args, qos)
        ksid = uuid.UUID(args.ksid)
        for rotation in range(args.rotations):
            got = await _chunk(client, ksid, rotation, args.interval)
            if got is None:
                continue
            psk = base64.b64encode(got.key).decode()
            if args.initiates:
                await asyncio.sleep(0.5)  # the peer has set the same key by then
                _run("wg", "set", INTERFACE, "peer", args.peer_public_key, "remove")
                _add_peer(args, psk)
            else:
                _with_secret_file(
                    psk, "wg", "set", INTERFACE, "peer", args.peer_public_key, "preshared-key", "@"
                )
            _emit(
                event="rotated",
                rotation=rotation,
                psk_sha256=hashlib.sha256(got.key).hexdigest()[:16],
                at=time.time(),
                latest_handshake=_latest_handshake(args),
            )
        await asyncio.sleep(2.0)  # the peer reads its last chunk too
        await client.close(ksid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qkdnet.orchestrator.client.wireguard_psk",
        description="Bring up WireGuard and rotate its preshared key from an ETSI 004 stream.",
    )
    parser.add_argument("--sae", required=True, help="this encryptor's SAE ID")
    parser.add_argument("--peer-sae", required=True, help="the peer encryptor's SAE ID")
    parser.add_argument("--kme", required=True, help="host:port of this SAE's ETSI 004 server")
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--ksid", required=True, help="the stream both sides open")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between keys")
    parser.add_argument("--rotations", type=int, default=6)
    parser.add_argument("--initiates", action="store_true", help="force the handshakes")
    parser.add_argument("--address", required=True, help="this side's tunnel address (CIDR)")
    parser.add_argument("--peer-endpoint", required=True, help="the peer's host")
    parser.add_argument("--peer-allowed-ip", required=True, help="the peer's tunnel /32")
    parser.add_argument("--peer-public-key", required=True)
    parser.add_argument(
        "--private-key-file", required=True, help="this side's private key (WireGuard base64)"
    )
    args = parser.parse_args(argv)
    try:
        args.private_key = Path(args.private_key_file).read_text().strip()
    except OSError as exc:
        parser.error(f"--private-key-file: {exc.strerror}")
    if not 1 <= args.interval <= 3600 or args.rotations < 1:
        parser.error("--interval is 1 to 3600 s, --rotations at least 1")
    try:
        _bring_up(args)
        _emit(event="up", interface=INTERFACE, address=args.address)
        asyncio.run(_rotate(args))
    except (RuntimeError, OSError) as exc:
        _emit(event="failed", error=str(exc))
        return 1
    _emit(event="done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
