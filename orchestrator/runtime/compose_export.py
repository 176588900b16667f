"""`qkdnet export compose`: a topology as a Compose file that runs without qkdnet.

The output directory holds everything the file refers to, by relative paths:

```
compose.yaml    one service per node (named as the node), `broker` (Mosquitto), one network,
                one named volume per node for its key stores, the PKI and configurations as secrets
pki/            CA, controller, broker, node and SAE certificates, link secrets (kept on
                re-export, so that stores in existing volumes still match their link secrets)
nodes/<id>.yaml each node's configuration
broker/         Mosquitto's configuration and access list (mosquitto.py, telemetry_access.py)
endpoints.json  per SAE: the URL of its KME's ETSI GS QKD 014 API on the host and its credentials;
                the broker's URL (when published) and the controller's credentials to read it
```

The same file serves both engines:

- `docker compose up` (or docker-compose 1.x): the network is a bridge, secrets are the files
  bind-mounted read-only on /run/secrets/;
- `docker stack deploy` (Swarm): the network becomes an overlay across the swarm's hosts,
  secrets are stored by the swarm. Services use `endpoint_mode: dnsrr` and ports published in
  `host` mode, so neither needs the routing mesh (IPVS), which not every kernel has.

Nodes find each other and the broker by service name (Docker's DNS), listen on every address of
their container, and name the node ID in their certificates (peers verify that name); KME
certificates also name `localhost`, 127.0.0.1 and any `--san`, for applications on the hosts.
A node service with SAEs publishes its ETSI 014 port on the host, from `--key-api-port` up in the
topology's order. The broker speaks MQTT over TLS only and admits only certificates of the
deployment's nodes and controller; its port stays on the deployment's network unless
`--mqtt-port` asks to publish it (then on every interface of the host: Swarm cannot bind a
published port to one address).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from qkdnet.node.config import node_config_yaml
from qkdnet.node.errors import ConfigError
from qkdnet.node.file_modes import private_dir, write_private

from ..plan.container_layout import NODE_STATE_DIR, NODE_UID
from ..plan.mosquitto import mosquitto_conf
from ..plan.network_plan import (
    GRPC_PORT,
    KEY_API_PORT,
    MQTT_PORT,
    ConfigLayout,
    NetworkPlan,
    NodePlan,
)
from ..plan.pki import provision_pki

__all__ = ["BROKER_SERVICE", "ComposeExport", "SaeEndpoint", "export_compose"]

BROKER_SERVICE = "broker"
SECRETS_DIR = "/run/secrets"
_SERVICE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


@dataclass(frozen=True)
class SaeEndpoint:
    """Where an SAE reaches its KME from a host running the exported services."""

    sae: str
    node: str
    url: str
    cert: Path
    key: Path
    ca: Path

    def as_json(self) -> dict[str, str]:
        return {
            "node": self.node,
            "url": self.url,
            "cert": str(self.cert),
            "key": str(self.key),
            "ca": str(self.ca),
        }


@dataclass(frozen=True)
class ComposeExport:
    """What `export_compose` wrote."""

    directory: Path
    compose_file: Path
    mqtt_port: int | None
    endpoints: dict[str, SaeEndpoint]


def _check_names(plan: NetworkPlan) -> None:
    for node_id in plan.nodes:
        if not _SERVICE_NAME.match(node_id):
            raise ConfigError(
                f"node {node_id!r}: a Compose service and DNS name needs lower-case letters, "
                "digits and inner hyphens only; rename it to export this topology"
            )
    if BROKER_SERVICE in plan.nodes:
        raise ConfigError(f"node {BROKER_SERVICE!r}: the name of the broker's service; rename it")


def _ports(key_api_port: int, mqtt_port: int | None, kmes: int) -> None:
    wanted = [("--key-api-port", key_api_port + k) for k in range(kmes)]
    if mqtt_port is not None:
        wanted.append(("--mqtt-port", mqtt_port))
    for option, port in wanted:
        if not 1 <= port <= 65535:
            raise ConfigError(f"{option}: port {port} is out of range")
    if mqtt_port is not None and mqtt_port in range(key_api_port, key_api_port + kmes):
        raise ConfigError(
            f"--mqtt-port: {mqtt_port} is one of the key API ports "
            f"{key_api_port}..{key_api_port + kmes - 1}"
        )


def _readable_in_container(path: Path) -> None:
    """A file Compose bind-mounts as a secret must be readable by the node's uid (10001)."""
    if os.geteuid() == 0:
        os.chown(path, NODE_UID, NODE_UID)
        os.chmod(path, 0o400)
    else:  # the output directory is the owner's only
        os.chmod(path, 0o444)


def export_compose(
    plan: NetworkPlan,
    directory: Path,
    *,
    node_image: str,
    broker_image: str,
    key_api_port: int = 18440,
    mqtt_port: int | None = None,
    hosts: tuple[str, ...] = (),
) -> ComposeExport:
    """Write compose.yaml, the PKI, node configurations and endpoints.json into `directory`.

    ConfigError when the topology cannot be exported or `directory` cannot be written."""
    _check_names(plan)
    kmes = [node for node in plan.nodes.values() if node.saes]
    _ports(key_api_port, mqtt_port, len(kmes))
    directory = directory.absolute()
    try:
        return _write(
            plan, directory, kmes, node_image, broker_image, key_api_port, mqtt_port, hosts
        )
    except OSError as exc:
        where = exc.filename or directory
        raise ConfigError(f"--output: cannot write {where}: {exc.strerror}") from None


def _write(
    plan: NetworkPlan,
    directory: Path,
    kmes: list[NodePlan],
    node_image: str,
    broker_image: str,
    key_api_port: int,
    mqtt_port: int | None,
    hosts: tuple[str, ...],
) -> ComposeExport:
    private_dir(directory)
    pki = provision_pki(
        directory / "pki",
        {node.node_id: list(node.saes) for node in plan.nodes.values()},
        plan.link_ids(),
        deployment=plan.name,
        extra_names=["localhost", "127.0.0.1", *hosts],
    )
    addresses = {node_id: f"{node_id}:{GRPC_PORT}" for node_id in plan.nodes}
    layout = ConfigLayout(
        addresses=addresses,
        listen={node_id: f"0.0.0.0:{GRPC_PORT}" for node_id in plan.nodes},
        key_api_listen={node_id: f"0.0.0.0:{KEY_API_PORT}" for node_id in plan.nodes},
        broker=f"{BROKER_SERVICE}:{MQTT_PORT}",
        broker_tls=True,
        tls=lambda _: {
            "ca": f"{SECRETS_DIR}/ca.pem",
            "cert": f"{SECRETS_DIR}/cert.pem",
            "key": f"{SECRETS_DIR}/key.pem",
        },
        psk_file=lambda link_id: f"{SECRETS_DIR}/{link_id}.psk",
        state_dir=lambda _: NODE_STATE_DIR,
    )
    configs = plan.node_configs(layout)
    private_dir(directory / "nodes")

    def rel(path: Path) -> str:
        return f"./{path.relative_to(directory)}"

    secrets: dict[str, dict[str, str]] = {"ca": {"file": rel(pki.ca)}}
    _readable_in_container(pki.ca)
    for link_id, path in pki.link_secrets.items():
        secrets[f"link-{link_id}"] = {"file": rel(path)}
        _readable_in_container(path)
    broker_dir = directory / "broker"
    private_dir(broker_dir)
    broker_files = {
        "mosquitto.conf": broker_dir / "mosquitto.conf",
        "acl": broker_dir / "acl",
        "cert.pem": pki.broker.cert,
        "key.pem": pki.broker.key,
    }
    write_private(broker_files["mosquitto.conf"], mosquitto_conf(SECRETS_DIR, MQTT_PORT))
    write_private(broker_files["acl"], plan.telemetry_access().mosquitto_acl())
    broker_secrets = [{"source": "ca", "target": "ca.pem"}]
    for name, path in broker_files.items():
        secrets[f"broker-{name.replace('.', '-')}"] = {"file": rel(path)}
        broker_secrets.append({"source": f"broker-{name.replace('.', '-')}", "target": name})
        _readable_in_container(path)
    broker: dict[str, Any] = {
        "image": broker_image,
        "hostname": BROKER_SERVICE,
        # Mosquitto runs as the nodes' user, who can read the secrets.
        "user": f"{NODE_UID}:{NODE_UID}",
        "command": ["-c", f"{SECRETS_DIR}/mosquitto.conf"],
        "networks": ["qkdnet"],
        "secrets": broker_secrets,
        "labels": {"org.qkdnet.deployment": plan.name, "org.qkdnet.role": "broker"},
        "restart": "unless-stopped",
        "deploy": _deploy_options(),
    }
    if mqtt_port is not None:
        broker["ports"] = [_port(MQTT_PORT, mqtt_port)]
    services: dict[str, Any] = {BROKER_SERVICE: broker}
    volumes: dict[str, dict[str, Any]] = {}
    endpoints: dict[str, SaeEndpoint] = {}
    kme_port = {node.node_id: key_api_port + k for k, node in enumerate(kmes)}
    for node_id, config in configs.items():
        config_path = directory / "nodes" / f"{node_id}.yaml"
        write_private(config_path, node_config_yaml(config))
        _readable_in_container(config_path)
        tls = pki.nodes[node_id]
        for kind, path in (("config", config_path), ("cert", tls.cert), ("key", tls.key)):
            secrets[f"{node_id}-{kind}"] = {"file": rel(path)}
            _readable_in_container(path)
        mounted = [
            {"source": f"{node_id}-config", "target": "node.yaml"},
            {"source": "ca", "target": "ca.pem"},
            {"source": f"{node_id}-cert", "target": "cert.pem"},
            {"source": f"{node_id}-key", "target": "key.pem"},
        ]
        mounted += [
            {"source": f"link-{link_id}", "target": f"{link_id}.psk"}
            for link_id in sorted(link.psk_file.stem for link in config.links)
        ]
        volumes[f"store-{node_id}"] = {}
        service: dict[str, Any] = {
            "image": node_image,
            "hostname": node_id,
            "command": ["node", "--config", f"{SECRETS_DIR}/node.yaml"],
            "networks": ["qkdnet"],
            "depends_on": [BROKER_SERVICE],
            "volumes": [f"store-{node_id}:{NODE_STATE_DIR}"],
            "secrets": mounted,
            "labels": {"org.qkdnet.deployment": plan.name, "org.qkdnet.node": node_id},
            "stop_grace_period": "15s",
            "restart": "unless-stopped",
            "deploy": _deploy_options(),
        }
        if node_id in kme_port:
            service["ports"] = [_port(KEY_API_PORT, kme_port[node_id])]
            for sae in plan.nodes[node_id].saes:
                where = pki.saes[sae]
                endpoints[sae] = SaeEndpoint(
                    sae,
                    node_id,
                    f"https://localhost:{kme_port[node_id]}",
                    where.cert,
                    where.key,
                    where.ca,
                )
        services[node_id] = service
    document = {
        "version": "3.8",  # read by docker-compose 1.x and `docker stack deploy` alike
        "services": services,
        "networks": {"qkdnet": {}},  # a bridge under Compose, an overlay under Swarm
        "volumes": volumes,
        "secrets": secrets,
    }
    compose_file = directory / "compose.yaml"
    header = (
        f"# qkdnet {plan.name}: written by `qkdnet export compose`; paths are relative to this "
        "file.\n# Run: docker compose up -d  |  docker stack deploy -c compose.yaml "
        f"{plan.name}\n"
    )
    write_private(compose_file, header + yaml.safe_dump(document, sort_keys=False))
    write_private(
        directory / "endpoints.json",
        json.dumps(
            {
                "name": plan.name,
                # MQTT over TLS: the broker certificate names localhost; read it as the
                # controller, whose certificate and key these are.
                "mqtt": f"mqtts://localhost:{mqtt_port}" if mqtt_port is not None else None,
                "mqtt_client": {
                    "cert": str(pki.controller.cert),
                    "key": str(pki.controller.key),
                    "ca": str(pki.ca),
                },
                "topics": f"{plan.topic_prefix}/#",
                "saes": {sae: endpoint.as_json() for sae, endpoint in endpoints.items()},
            },
            indent=2,
        ),
    )
    return ComposeExport(directory, compose_file, mqtt_port, endpoints)


def _port(target: int, published: int) -> dict[str, Any]:
    # Host mode: Swarm publishes on the host running the task, without the routing mesh.
    return {"target": target, "published": published, "protocol": "tcp", "mode": "host"}


def _deploy_options() -> dict[str, Any]:
    """What Swarm reads (Compose ignores it): one replica, DNS round robin rather than a
    virtual IP (no IPVS needed), restarted whatever ends it."""
    return {
        "replicas": 1,
        "endpoint_mode": "dnsrr",
        "restart_policy": {"condition": "any", "delay": "2s"},
    }
