"""The embedded MQTT broker of the process runtime: amqtt over TLS, bound to one loopback address.

`python -m qkdnet.orchestrator.runtime.broker --listen 127.X.0.1:1883 --ca CA --cert CERT --key KEY
--access FILE` runs until SIGTERM/SIGINT. amqtt is a maintained pure-Python MQTT 3.1.1 broker: it
comes with `pip install`, so the embedded default needs nothing installed on the machine
(Mosquitto, which the docker runtime uses, is a system package).

It listens on the address given only, never on all interfaces, and speaks MQTT over TLS only,
with the broker certificate of the deployment's PKI. A client must present a certificate of the
deployment's CA (the TLS handshake fails otherwise) that names a node or the controller: any
other connection (an application's certificate, another trust domain) is closed before a byte
of MQTT is read, so that it cannot even disturb another client's session by its client ID.
A CONNECT that would resume a stored session is refused (qkdnet's clients start clean ones: a
stored session would carry the TLS identity of the connection that made it). What each
identity may then publish or read is the access list the orchestrator wrote (`TopicAccess`,
`telemetry_access.py`); a node's last will must be its own status topic.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action, BaseContext
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from qkdnet.node.file_modes import PRIVATE_UMASK
from qkdnet.node.identity import Identity, Role, peer_certificate_identity
from qkdnet.node.reaper import supervise
from qkdnet.node.structured_log import (
    DEFAULT_LOG_FILES,
    DEFAULT_LOG_MAX_BYTES,
    LogRotation,
    rotate_output,
)

from ..plan.telemetry_access import TelemetryAccess

__all__ = [
    "CertificateAuthentication",
    "TelemetryBroker",
    "TopicAccess",
    "broker_config",
    "run_broker",
]

logger = logging.getLogger("qkdnet.broker")


def _identity(session: Session | None) -> Identity | None:
    """The identity in a client's certificate (None without one)."""
    ssl_object = getattr(session, "ssl_object", None)
    return peer_certificate_identity(ssl_object.getpeercert()) if ssl_object else None


class TelemetryBroker(Broker):  # type: ignore[misc]
    """amqtt's broker, but TLS requires a client certificate, and a connection whose certificate
    names neither a node nor the controller of `trust_domain` is closed at once."""

    def __init__(self, config: dict[str, Any], trust_domain: str) -> None:
        super().__init__(config)
        self._trust_domain = trust_domain

    @staticmethod
    def _create_ssl_context(listener: Any) -> ssl.SSLContext:
        context: ssl.SSLContext = Broker._create_ssl_context(listener)
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        identity = peer_certificate_identity(writer.get_extra_info("peercert"))
        if (
            identity is None
            or identity.trust_domain != self._trust_domain
            or identity.role not in (Role.NODE, Role.CONTROLLER)
        ):
            logger.warning("closed a connection of %s", identity or "no qkdnet identity")
            writer.close()
            return
        await super().stream_connected(reader, writer, listener_name)


class _AccessPlugin:
    """Loads the access list and the trust domain once."""

    @dataclass
    class Config:
        access_file: str = ""
        trust_domain: str = ""

    def _load(self, config: Any) -> None:
        self.access = TelemetryAccess.load(Path(config.access_file))
        self.trust_domain = str(config.trust_domain)

    def _member(self, session: Session | None) -> Identity | None:
        identity = _identity(session)
        if identity is None or identity.trust_domain != self.trust_domain:
            return None
        return identity


class CertificateAuthentication(_AccessPlugin, BaseAuthPlugin):  # type: ignore[misc]
    """CONNECT succeeds only with a certificate of a node or of the controller."""

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self._load(self.config)

    async def authenticate(self, *, session: Session) -> bool | None:
        identity = self._member(session)
        client = str(getattr(session, "client_id", ""))[:64]
        if identity is None or identity.role not in (Role.NODE, Role.CONTROLLER):
            who = str(identity) if identity else "no certificate of this deployment"
            logger.warning("refused MQTT client %r: %s", client, who)
            return False
        if getattr(session, "parent", 0):  # a stored session, made by another connection
            logger.warning("refused MQTT client %r: it asked to resume a stored session", client)
            return False
        will = session.will_topic if session.will_flag else None
        if will is not None and not self.access.may_publish(identity.role, identity.name, will):
            logger.warning("refused MQTT client %r: last will on %r not allowed", client, will)
            return False
        return True


class TopicAccess(_AccessPlugin, BaseTopicPlugin):  # type: ignore[misc]
    """PUBLISH and SUBSCRIBE as the access list allows; anything else is dropped or refused."""

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self._load(self.config)

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: Action | None = None,
    ) -> bool | None:
        if action == Action.RECEIVE:
            return True  # what a client may read was decided when it subscribed
        identity = self._member(session)
        if identity is None or topic is None:
            return False
        if action == Action.PUBLISH:
            allowed = self.access.may_publish(identity.role, identity.name, topic)
        else:
            allowed = self.access.may_subscribe(identity.role, identity.name, topic)
        if not allowed:
            logger.warning("refused %s of %r by %s", action, topic[:200], identity)
        return allowed


@dataclass(frozen=True)
class BrokerFiles:
    """The broker's TLS files and access list."""

    ca: Path
    cert: Path
    key: Path
    access: Path
    trust_domain: str


def broker_config(listen: str, files: BrokerFiles) -> dict[str, Any]:
    """amqtt configuration: one TLS listener on `listen`, certificates required, the access
    list enforced, no $SYS topics."""
    access = {"access_file": str(files.access), "trust_domain": files.trust_domain}
    return {
        "listeners": {
            "default": {
                "type": "tcp",
                "bind": listen,
                "ssl": True,
                "cafile": str(files.ca),
                "certfile": str(files.cert),
                "keyfile": str(files.key),
            }
        },
        "plugins": {
            f"{__name__}.CertificateAuthentication": access,
            f"{__name__}.TopicAccess": access,
        },
    }


def _quiet_disconnects(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """A client that hangs up (a refused one, say) is not worth a traceback in the log."""
    if isinstance(context.get("exception"), ConnectionError | ssl.SSLError):
        logger.debug("client connection ended: %s", context.get("exception"))
        return
    loop.default_exception_handler(context)


async def run_broker(listen: str, files: BrokerFiles) -> None:
    """Serve until SIGTERM or SIGINT."""
    from amqtt.broker import Broker

    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_disconnects)
    broker = Broker(broker_config(listen, files))
    await broker.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"qkdnet broker: listening on {listen} (MQTT over TLS)", flush=True)
    await stop.wait()
    await broker.shutdown()


def _detach(exit_record: Path | None) -> None:
    """Return in a broker process of its own session whose parent outlives the caller.

    The caller prints the broker's PID and exits; a supervisor in between waits for the broker
    and writes its exit record (when `exit_record` is given), then exits too."""
    ready, done = os.pipe()
    if os.fork():  # the caller: print the broker's PID once it exists
        os.close(done)
        pid = b""
        while chunk := os.read(ready, 32):
            pid += chunk
        print(pid.decode(), flush=True)
        os._exit(0 if pid else 1)
    os.close(ready)
    os.setsid()
    broker = os.fork()
    if broker == 0:
        os.close(done)
        os.dup2(2, 1)  # release the pipe the PID went through; output goes to the log
        return
    os.write(done, str(broker).encode())
    os.close(done)
    null = os.open(os.devnull, os.O_RDWR)
    for stream in (0, 1, 2):
        os.dup2(null, stream)
    if exit_record is not None:
        supervise({broker: exit_record})
    else:
        os.waitpid(broker, 0)
    os._exit(0)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m qkdnet.orchestrator.runtime.broker")
    parser.add_argument("--listen", required=True, help="host:port to listen on")
    parser.add_argument("--ca", required=True, type=Path, help="the deployment's CA certificate")
    parser.add_argument("--cert", required=True, type=Path, help="the broker's certificate")
    parser.add_argument("--key", required=True, type=Path, help="the broker's private key")
    parser.add_argument("--access", required=True, type=Path, help="the access list (JSON)")
    parser.add_argument("--trust-domain", required=True, help="the deployment's trust domain")
    parser.add_argument(
        "--detach",
        action="store_true",
        help="run in a forked child of its own session; print its PID and return",
    )
    parser.add_argument(
        "--exit-record",
        type=Path,
        default=None,
        help="with --detach: where a supervisor records how the broker ended (reaper.py)",
    )
    parser.add_argument(
        "--log", type=Path, default=None, help="send the output to this file, rotated by size"
    )
    parser.add_argument("--log-max-bytes", type=int, default=DEFAULT_LOG_MAX_BYTES)
    parser.add_argument("--log-files", type=int, default=DEFAULT_LOG_FILES)
    args = parser.parse_args()
    os.umask(PRIVATE_UMASK)
    files = BrokerFiles(args.ca, args.cert, args.key, args.access, args.trust_domain)
    if args.detach:
        _detach(args.exit_record)
    handlers: list[logging.Handler] | None = None
    if args.log is not None:  # its output to a log file, rotated by size
        handlers = [rotate_output(LogRotation(args.log, args.log_max_bytes, args.log_files))]
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(name)s %(message)s", handlers=handlers
    )
    # A connection that closes without speaking MQTT (a readiness probe) is not worth a line.
    logging.getLogger("amqtt.broker").setLevel(logging.ERROR)
    asyncio.run(run_broker(args.listen, files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
