"""The embedded MQTT broker of the process runtime: amqtt, bound to one loopback address.

`python -m qkdnet.orchestrator.broker --listen 127.X.0.1:1883` runs until SIGTERM/SIGINT.
amqtt is a maintained pure-Python MQTT 3.1.1 broker: it comes with `pip install`, so the
embedded default needs nothing installed on the machine (Mosquitto, which the docker runtime
uses, is a system package). It listens on the address given only, never on all interfaces,
and allows anonymous clients: it is reachable from this machine only.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Any

__all__ = ["broker_config", "run_broker"]


def broker_config(listen: str) -> dict[str, Any]:
    """amqtt configuration: one TCP listener on `listen`, anonymous access, no $SYS topics."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": listen}},
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
        },
    }


async def run_broker(listen: str) -> None:
    """Serve until SIGTERM or SIGINT."""
    from amqtt.broker import Broker

    broker = Broker(broker_config(listen))
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"qkdnet broker: listening on {listen}", flush=True)
    await stop.wait()
    await broker.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m qkdnet.orchestrator.broker")
    parser.add_argument("--listen", required=True, help="host:port to listen on")
    parser.add_argument(
        "--detach",
        action="store_true",
        help="run in a forked child of its own session; print its PID and return",
    )
    args = parser.parse_args()
    if args.detach:
        pid = os.fork()
        if pid:
            print(pid, flush=True)
            return 0
        os.setsid()
        os.dup2(2, 1)  # release the pipe the PID went through; output goes to the log
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    # A connection that closes without speaking MQTT (a readiness probe) is not worth a line.
    logging.getLogger("amqtt.broker").setLevel(logging.ERROR)
    asyncio.run(run_broker(args.listen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
