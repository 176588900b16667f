"""The registry of deployments on this machine: which name runs from which state directory, on
which runtime, in which address block.

Every deployment is registered under its topology name in one file,
`$XDG_STATE_HOME/qkdnet/registry.json` (`~/.local/state/qkdnet/registry.json` by default), so
that every verb finds a deployment by its name whatever its state directory, and two
deployments never share a name or an address block. The file is changed under an exclusive
`flock` of `registry.lock` beside it, so concurrent `qkdnet` commands never lose an entry.

Address blocks: a deployment owns one /16, `127.X.0.0/16` on the process runtime and
`10.X.0.0/16` on the docker runtime, with `X` in 1..254 unique across all registered
deployments. A new deployment gets the block its topology (`subnet:`) or `--subnet` asks for,
refused when another deployment holds it; otherwise the lowest block that no registered
deployment holds and nothing on the machine uses (a listening socket in 127.X.0.0/16, a route
to 10.X.0.0/16: a deployment of another registry, a Docker network), so a network deployed alone
gets the same addresses every time. Destroy releases it.

An entry whose state directory no longer exists is stale (its deployment was removed by hand)
and is dropped whenever the registry is read.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qkdnet.node.errors import ConfigError
from qkdnet.node.file_modes import private_dir, write_private

from ..durations import format_age

__all__ = [
    "BLOCKS",
    "NotDeployed",
    "Registration",
    "Registry",
    "block_of_subnet",
    "blocks_in_use",
    "network_prefix",
    "state_home",
]

BLOCKS = range(1, 255)  # X of 127.X.0.0/16 and 10.X.0.0/16
_FIRST_OCTET = {"process": 127, "docker": 10}
_VERSION = 1


class NotDeployed(ConfigError):
    """The verb is aimed at a deployment that is not registered on this machine."""


def state_home() -> Path:
    """`$XDG_STATE_HOME/qkdnet` (`~/.local/state/qkdnet` by default)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "qkdnet"


def network_prefix(runtime: str) -> int:
    """The first octet of every address of a deployment on `runtime`."""
    return _FIRST_OCTET[runtime]


def block_of_subnet(subnet: str, runtime: str, where: str) -> int:
    """X of a /16 given as `127.X.0.0/16` (process) or `10.X.0.0/16` (docker).

    ConfigError naming `where` (the option or field) when it is not such a block."""
    try:
        network = ipaddress.IPv4Network(subnet, strict=True)
    except ValueError as exc:
        raise ConfigError(f"{where}: {subnet!r} is not an IPv4 network ({exc})") from None
    first, second = network.network_address.packed[:2]
    expected = network_prefix(runtime)
    if network.prefixlen != 16 or first != expected or second not in BLOCKS:
        raise ConfigError(
            f"{where}: {subnet} is not a block the {runtime} runtime can use: give a /16 "
            f"{expected}.X.0.0/16 with X in 1..254"
        )
    return second


@dataclass(frozen=True)
class Registration:
    """One deployment as the registry knows it."""

    name: str
    state_dir: Path
    runtime: str
    block: int
    topology: Path  # the topology file it was deployed from
    created: float  # seconds since the epoch

    @property
    def subnet(self) -> str:
        return f"{network_prefix(self.runtime)}.{self.block}.0.0/16"

    @property
    def topology_copy(self) -> Path:
        """The copy of the topology file deploy keeps in the state directory."""
        return self.state_dir / "topology.yaml"

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["state_dir"] = str(self.state_dir)
        data["topology"] = str(self.topology)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Registration:
        return cls(
            name=str(data["name"]),
            state_dir=Path(data["state_dir"]),
            runtime=str(data["runtime"]),
            block=int(data["block"]),
            topology=Path(data["topology"]),
            created=float(data["created"]),
        )


class Registry:
    """The registry file (`state_home()/registry.json` unless `directory` says otherwise)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or state_home()
        self.path = self.directory / "registry.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Registration]]:
        """The entries by name, under the lock; what the block leaves in the dict is saved."""
        private_dir(self.directory)
        with open(self.directory / "registry.lock", "a+b") as lock:
            os.fchmod(lock.fileno(), 0o600)
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = self._read()
            before = dict(entries)
            yield entries
            if entries != before:
                data = {
                    "version": _VERSION,
                    "deployments": [entries[name].as_json() for name in sorted(entries)],
                }
                write_private(self.path, json.dumps(data, indent=2) + "\n")

    @contextlib.contextmanager
    def deployment_lock(self, name: str) -> Iterator[None]:
        """Hold the lock of one deployment's lifecycle (deploy, destroy): a second command on
        the same deployment waits for the first to finish."""
        locks = private_dir(self.directory / "locks")
        with open(locks / f"{name}.lock", "a+b") as lock:
            os.fchmod(lock.fileno(), 0o600)
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _read(self) -> dict[str, Registration]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{self.path}: unreadable ({exc}); move it away to start a new registry"
            ) from None
        try:
            entries = [Registration.from_json(item) for item in data["deployments"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"{self.path}: malformed ({exc!r}); move it away to start a new registry"
            ) from None
        return {entry.name: entry for entry in entries if entry.state_dir.is_dir()}

    def all(self) -> list[Registration]:
        """Every registered deployment, by name (stale entries dropped)."""
        with self._locked() as entries:
            return [entries[name] for name in sorted(entries)]

    def get(self, name: str) -> Registration | None:
        """The deployment registered under `name`, if any."""
        with self._locked() as entries:
            return entries.get(name)

    def proposed_block(
        self, name: str, state_dir: Path, avoid: frozenset[int] = frozenset()
    ) -> int:
        """The block `claim` would give `name` now, without claiming it (for a plan that is
        laid out before it is deployed), other than those in `avoid` (blocks of plans laid
        out beside it)."""
        with self._locked() as entries:
            entry = entries.get(name)
            if entry is not None and entry.state_dir == state_dir:
                return entry.block
            return _free_blocks(entries, name, avoid)[0]

    def claim(
        self,
        name: str,
        state_dir: Path,
        runtime: str,
        topology: Path,
        block: int | None = None,
    ) -> Registration:
        """Register a deployment about to start; returns its entry (with its block).

        A name is one deployment: claiming it again from the same state directory keeps the
        entry (a deploy after a failed one); from another state directory is refused. A block
        asked for (`block`) held by another deployment is refused with that deployment's name.
        """
        with self._locked() as entries:
            entry = entries.get(name)
            if entry is not None and entry.state_dir != state_dir:
                raise ConfigError(
                    f"a deployment named {name!r} is already registered with state dir "
                    f"{entry.state_dir} (deployed {_ago(entry.created)} from {entry.topology}); "
                    f"destroy it first (qkdnet destroy --name {name}) or rename the topology"
                )
            if block is None:
                block = entry.block if entry is not None else _free_blocks(entries, name)[0]
            holder = next(
                (e for e in entries.values() if e.block == block and e.name != name), None
            )
            if holder is not None:
                raise ConfigError(
                    f"address block {network_prefix(runtime)}.{block}.0.0/16 is held by "
                    f"deployment {holder.name!r} (state dir {holder.state_dir}); choose another "
                    "block (--subnet, or subnet: in the topology) or destroy that deployment"
                )
            claimed = Registration(
                name=name,
                state_dir=state_dir,
                runtime=runtime,
                block=block,
                topology=topology,
                created=entry.created if entry is not None else time.time(),
            )
            entries[name] = claimed
            return claimed

    def release(self, name: str, state_dir: Path) -> bool:
        """Forget `name` (when registered with `state_dir`); whether it was registered."""
        with self._locked() as entries:
            entry = entries.get(name)
            if entry is None or entry.state_dir != state_dir:
                return False
            del entries[name]
            return True


def blocks_in_use() -> set[int]:
    """X of every 127.X.0.0/16 with a listening TCP socket and every 10.X.0.0/16 with a route
    on this machine: blocks taken by something the registry does not know (a deployment of
    another user or another registry, a Docker network), which allocation skips."""
    used: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) < 4 or fields[3] != "0A":  # 0A: LISTEN
                    continue
                address = bytes.fromhex(fields[1].partition(":")[0])
                if len(address) == 16:  # an IPv4-mapped IPv6 address ::ffff:a.b.c.d
                    address = address[12:]
                if len(address) == 4 and address[3] == 127:  # little-endian: 127 last
                    used.add(address[2])
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/route").read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 1 and len(fields[1]) == 8:
                destination = bytes.fromhex(fields[1])[::-1]
                if destination[0] == 10:
                    used.add(destination[1])
    return used


def _free_blocks(
    entries: dict[str, Registration], name: str, avoid: frozenset[int] = frozenset()
) -> list[int]:
    """Blocks nobody holds nor uses, the lowest first (ConfigError when none is left)."""
    held = {entry.block for other, entry in entries.items() if other != name}
    held |= blocks_in_use() | avoid
    free = [block for block in BLOCKS if block not in held]
    if not free:
        raise ConfigError(
            f"all {len(BLOCKS)} address blocks are held by registered deployments or in use "
            "on this machine; destroy some (qkdnet inspect --all lists them)"
        )
    return free


def _ago(when: float) -> str:
    return format_age(time.time() - when) + " ago"
