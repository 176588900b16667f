"""Mosquitto's configuration for a deployment's broker container (docker runtime, Compose export).

The broker image (deploy/broker.Dockerfile) bakes in a configuration that admits nobody; a
deployment runs it with the files below, mounted read-only:

```
mosquitto.conf  one listener on 1883: MQTT over TLS only, a client certificate from the
                deployment's CA required, its common name taken as the user name
acl             what each user may publish and read (telemetry_access.py)
ca.pem          the deployment's CA
cert.pem        the broker's certificate (role broker), key.pem its private key
```
"""

from __future__ import annotations

__all__ = ["MOSQUITTO_FILES", "mosquitto_conf"]

# The files of the broker's configuration directory, by name.
MOSQUITTO_FILES = ("mosquitto.conf", "acl", "ca.pem", "cert.pem", "key.pem")


def mosquitto_conf(directory: str, port: int = 1883) -> str:
    """mosquitto.conf for the files of `MOSQUITTO_FILES` in `directory` (a container path)."""
    return f"""\
# The MQTT broker of a qkdnet deployment: written by qkdnet, see orchestrator/plan/mosquitto.py.
# TLS only; a client certificate from the deployment's CA is required and its common name is
# the user name that {directory}/acl grants topics to. No anonymous client, nothing persisted.
listener {port}
protocol mqtt
cafile {directory}/ca.pem
certfile {directory}/cert.pem
keyfile {directory}/key.pem
tls_version tlsv1.2
require_certificate true
use_identity_as_username true
allow_anonymous false
acl_file {directory}/acl
persistence false
log_dest stderr
log_timestamp_format %Y-%m-%dT%H:%M:%S
connection_messages false
"""
