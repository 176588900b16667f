"""The process runtime: every node its own OS process on its own loopback address.

Nodes are forked by `qkdnet.node.launcher` (one warm interpreter, one fork per node), run in
sessions of their own and belong to no orchestrator process, so they keep running when the
orchestrator exits or crashes. The embedded broker (`broker.py`) is started the same way.

Finding them again needs no orchestrator memory. Every process started here carries the label
`QKDNET_DEPLOYMENT=<state dir>` in its environment (Docker labels play this part in a container
runtime), and `runtime.json` records each one's PID with its kernel start time, so a recycled
PID is never mistaken for a node. `destroy` stops whatever either source names.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from qkdnet.node.addresses import parse_address
from qkdnet.node.errors import ConfigError, QkdnetError
from qkdnet.node.file_modes import open_private_log, private_dir, write_private
from qkdnet.node.reaper import exit_record_path, read_exit_record

from ..plan.network_plan import NodePlan
from .faults import FAULTS_FILE, FaultRecord, FaultReport, Impairment
from .readiness import wait_ready
from .seam import (
    BROKER,
    ComponentState,
    DeployError,
    DeploymentInfo,
    DestroyReport,
    Runtime,
    State,
    UnknownComponent,
    ended,
)

__all__ = ["LABEL_ENV", "ProcessRuntime", "labelled_processes", "process_start_time"]

LABEL_ENV = "QKDNET_DEPLOYMENT"
_POLL = 0.05
_EXIT_RECORD_WAIT_S = 2.0  # how long a stop or kill waits for the reaper's exit record


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of a live (non-zombie) process, None when there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    if fields[0] in ("Z", "X") and not _other_threads_alive(pid):
        return None
    return int(fields[19])


def _stopped(pid: int) -> bool:
    """Whether a process is stopped by a signal (paused with SIGSTOP)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] == "T"


def _other_threads_alive(pid: int) -> bool:
    """A killed process's main thread turns zombie before its other threads have exited, and
    its sockets stay open until the last one has: it is not gone until then."""
    try:
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:
        return False


def labelled_processes(state_dir: Path) -> list[int]:
    """PIDs of live processes whose environment carries this deployment's label."""
    label = f"{LABEL_ENV}={state_dir}".encode() + b"\0"
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as handle:
                environ = handle.read()
        except OSError:
            continue
        if environ.startswith(label) or b"\0" + label in environ:
            pid = int(entry.name)
            if process_start_time(pid) is not None:
                found.append(pid)
    return found


def _epoch_of(start_ticks: int | None) -> float | None:
    """Seconds since the epoch of a kernel start time (clock ticks after boot)."""
    if start_ticks is None:
        return None
    try:
        with open("/proc/stat") as stat:
            boot = next(int(line.split()[1]) for line in stat if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return None
    return boot + start_ticks / os.sysconf("SC_CLK_TCK")


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no output"
    return lines[-1] if lines else "no output"


class ProcessRuntime(Runtime):
    """Nodes as local processes, the broker as a local process."""

    name = "process"

    @property
    def _record_path(self) -> Path:
        return self.plan.state_dir / "runtime.json"

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self._record_path.read_text())
        except (OSError, ValueError):
            return {"nodes": {}, "broker": None}
        return data if isinstance(data, dict) else {"nodes": {}, "broker": None}

    def _save(self, record: dict[str, Any]) -> None:
        record |= {"name": self.plan.name, "runtime": self.name, "subnet": self.plan.subnet}
        write_private(self._record_path, json.dumps(record, indent=2))

    @staticmethod
    def _alive(entry: dict[str, Any] | None) -> bool:
        return bool(entry) and process_start_time(int(entry["pid"])) == entry["start"]  # type: ignore[index]

    def _env(self) -> dict[str, str]:
        return dict(os.environ) | {LABEL_ENV: str(self.plan.state_dir)}

    # -- queries -------------------------------------------------------------------------------

    def inspect(self) -> DeploymentInfo:
        record = self._load()
        nodes = {}
        for node_id, node in self.plan.nodes.items():
            entry = record["nodes"].get(node_id)
            nodes[node_id] = self._state(node_id, node.address, entry)
        broker = None
        if self.plan.external_broker is None:
            broker = self._state(BROKER, self.plan.broker_address, record.get("broker"))
        return self._deployment_info(nodes, broker)

    def _exit_record_path(self, name: str) -> Path:
        if name == BROKER:
            return self.plan.broker_dir / "exit.json"
        return exit_record_path(self.plan.nodes[name].config_path)

    def _state(self, name: str, address: str, entry: dict[str, Any] | None) -> ComponentState:
        if not entry:
            return ComponentState(name, "stopped", address, detail="not started")
        pid, start = int(entry["pid"]), entry.get("start")
        if self._alive(entry):
            state: State = "paused" if _stopped(pid) else "running"
            return ComponentState(name, state, address, pid, since=_epoch_of(start))
        record = read_exit_record(self._exit_record_path(name), pid, start)
        if record is None:
            return ComponentState(
                name, "crashed", address, pid, detail="ended without an exit record"
            )
        state, detail = ended(code=record.get("exit_code"), signal_number=record.get("signal"))
        return ComponentState(name, state, address, pid, detail=detail, since=record.get("at"))

    def _node(self, name: str) -> NodePlan:
        node = self.plan.nodes.get(name)
        if node is None:
            known = ", ".join(self.plan.nodes)
            raise UnknownComponent(f"no node {name!r} in {self.plan.name} (nodes: {known})")
        return node

    # -- deploy --------------------------------------------------------------------------------

    def _deploy(self, timeout: float) -> DeploymentInfo:
        if labelled_processes(self.plan.state_dir):
            raise ConfigError(
                f"processes of {self.plan.name} are still running (state in "
                f"{self.plan.state_dir}); run qkdnet destroy --name {self.plan.name} first"
            )
        addresses = [a for node in self.plan.nodes.values() for a in node.listen_addresses()]
        if self.plan.external_broker is None:
            addresses.append(self.plan.broker_address)
        for address in addresses:
            _check_free(address, self.plan.network_cidr)
        for name in [BROKER, *self.plan.nodes]:  # records of a previous run say nothing now
            with contextlib.suppress(KeyError):
                self._exit_record_path(name).unlink(missing_ok=True)
        private_dir(self.plan.state_dir)
        (self.plan.state_dir / FAULTS_FILE).unlink(missing_ok=True)  # a new network: no fault
        pki = self.plan.provision_pki()
        self.emit("pki_ready", self.plan.name, str(self.plan.pki_dir))
        self.plan.write_node_configs(pki)
        self.plan.write_broker_files(pki)
        self._save({"nodes": {}, "broker": None})
        try:
            if self.plan.external_broker is None:
                self._start_broker(timeout=15.0)
            self._launch(list(self.plan.nodes.values()))
            self._wait_ready(list(self.plan.nodes.values()), timeout)
        except BaseException:
            self._stop_all(grace=5.0)
            raise
        return self.inspect()

    def _start_broker(self, timeout: float) -> None:
        log_path = self.plan.broker_log
        pki = self.plan.pki_dir
        with open_private_log(log_path) as log:
            # --detach: the broker is not our child, so it outlives this process quietly.
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "qkdnet.orchestrator.runtime.broker",
                    "--listen",
                    self.plan.broker_address,
                    "--ca",
                    str(pki / "ca.pem"),
                    "--cert",
                    str(pki / "broker" / "cert.pem"),
                    "--key",
                    str(pki / "broker" / "key.pem"),
                    "--access",
                    str(self.plan.broker_dir / "access.json"),
                    "--trust-domain",
                    self.plan.trust_domain,
                    *self._log_options(log_path),
                    "--detach",
                    "--exit-record",
                    str(self._exit_record_path(BROKER)),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=self._env(),
                start_new_session=True,
                check=False,
            )
        if result.returncode != 0:
            raise DeployError(f"the MQTT broker did not start: {_last_line(log_path)}")
        pid = int(result.stdout)
        entry = {"pid": pid, "start": process_start_time(pid)}
        record = self._load()
        record["broker"] = entry
        self._save(record)
        host, port = parse_address(self.plan.broker_address)
        deadline = time.monotonic() + timeout
        while True:
            if not self._alive(entry):
                raise DeployError(f"the MQTT broker exited: {_last_line(log_path)}")
            with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
                break
            if time.monotonic() > deadline:
                raise DeployError(f"the MQTT broker did not listen on {host}:{port}")
            time.sleep(_POLL)
        self.emit("broker_started", BROKER, self.plan.broker_address)

    def _log_options(self, log: Path | None = None) -> list[str]:
        """The topology's log rotation (and `--log LOG`), as the broker and launcher take it."""
        plan = self.plan
        rotation = ["--log-max-bytes", str(plan.log_max_bytes), "--log-files", str(plan.log_files)]
        return rotation if log is None else ["--log", str(log), *rotation]

    def _launch(self, nodes: list[NodePlan]) -> None:
        """Fork the nodes from one launcher and record their PIDs as they appear."""
        by_config = {str(node.config_path): node for node in nodes}
        args = [sys.executable, "-m", "qkdnet.node.launcher", *self._log_options()]
        for node in nodes:
            (node.state_dir / "ready.json").unlink(missing_ok=True)
            args += ["--node", str(node.config_path), str(node.log_path)]
        with subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self._env(),
            start_new_session=True,
        ) as proc:
            assert proc.stdout is not None
            assert proc.stderr is not None
            record = self._load()
            for line in proc.stdout:
                child = json.loads(line)
                node = by_config[child["config"]]
                pid = int(child["pid"])
                record["nodes"][node.node_id] = {"pid": pid, "start": process_start_time(pid)}
                self._save(record)
                self.emit("node_started", node.node_id, f"pid {pid}")
            error = proc.stderr.read().decode(errors="replace").strip()
        if proc.returncode != 0:
            raise DeployError(f"the node launcher failed: {error.splitlines()[-1:]}")

    def _wait_ready(self, nodes: list[NodePlan], timeout: float) -> None:
        def ready(node: NodePlan) -> None:
            self.emit("node_ready", node.node_id, node.address)

        wait_ready(nodes, _ReadyFileProbe(self._load(), self._alive), timeout, ready)

    # -- per node ------------------------------------------------------------------------------

    def start(self, name: str, timeout: float = 60.0) -> None:
        from . import node_faults  # grpc: only for faults

        record = self._load()
        if name == BROKER:
            if self.plan.external_broker is not None:
                raise UnknownComponent("this deployment uses an external broker")
            if not self._alive(record.get("broker")):
                self._start_broker(timeout=15.0)
            return
        node = self._node(name)
        if self._alive(record["nodes"].get(name)):
            return
        for address in node.listen_addresses():
            _check_free(address, self.plan.network_cidr)
        self._launch([node])
        self._wait_ready([node], timeout)
        node_faults.sync_runtime(self, [name])  # its faults, as a cut fibre stays cut

    def stop(self, name: str, timeout: float = 10.0) -> None:
        self._signal(name, signal.SIGTERM, timeout)

    def kill(self, name: str) -> None:
        self._signal(name, signal.SIGKILL, 5.0)

    def _signal(self, name: str, sig: signal.Signals, timeout: float) -> None:
        entry = self._entry(name)
        if entry is None:
            return
        pid, start = int(entry["pid"]), int(entry["start"])
        _terminate({name: (pid, start)}, sig, timeout)
        # The reaper writes the exit record just after it has reaped the process: wait for it,
        # so that a state asked for right after this call says how the process ended.
        deadline = time.monotonic() + _EXIT_RECORD_WAIT_S
        path = self._exit_record_path(name)
        while read_exit_record(path, pid, start) is None and time.monotonic() < deadline:
            time.sleep(_POLL)
        self.emit("node_stopped" if name != BROKER else "broker_stopped", name, sig.name)

    def _entry(self, name: str) -> dict[str, Any] | None:
        """The record of a live node (or the broker); None when it is not running."""
        record = self._load()
        if name == BROKER:
            if self.plan.external_broker is not None:
                raise UnknownComponent("this deployment uses an external broker")
            entry = record.get("broker")
        else:
            self._node(name)
            entry = record["nodes"].get(name)
        return entry if self._alive(entry) else None

    # -- faults --------------------------------------------------------------------------------

    def pause(self, name: str) -> None:
        self._freeze(name, signal.SIGSTOP, "paused")

    def unpause(self, name: str) -> None:
        from . import node_faults  # grpc: only for faults

        self._freeze(name, signal.SIGCONT, "unpaused")
        if name != BROKER:
            node_faults.sync_runtime(self, [name])  # what changed while it was frozen

    def _freeze(self, name: str, sig: signal.Signals, event: str) -> None:
        entry = self._entry(name)
        if entry is None:
            raise QkdnetError(f"{name} is not running")
        pid = int(entry["pid"])
        if process_start_time(pid) == entry["start"]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        # Every thread has to take the signal before the process shows as stopped (or not).
        deadline = time.monotonic() + 5.0
        while _stopped(pid) != (sig == signal.SIGSTOP) and time.monotonic() < deadline:
            time.sleep(_POLL)
        self.emit(event, name, sig.name)

    # Every node shares this host's network namespace, so the nodes cut links and shape their
    # traffic themselves, told over NodeControl (node_faults.py, qkdnet.node.edge.peer_faults).

    def cut_link(self, a: str, b: str) -> None:
        from . import node_faults  # grpc: only for faults

        pair = self.check_link(a, b)
        record = FaultRecord.load(self.plan.state_dir)
        record.cuts.add(pair)
        record.save(self.plan.state_dir)
        # Each end keeps the cut on its own, so one end that is told cuts it both ways; a node
        # that is paused or stopped gets it when it comes back.
        applied = node_faults.sync_runtime(self, pair, record)
        if not applied:
            raise QkdnetError(f"neither {a} nor {b} is running: the cut applies once one starts")
        self.emit("link_cut", f"{a}--{b}", ", ".join(applied))

    def restore_link(self, a: str, b: str) -> None:
        from . import node_faults  # grpc: only for faults

        pair = self.check_link(a, b)
        record = FaultRecord.load(self.plan.state_dir)
        record.cuts.discard(pair)
        record.save(self.plan.state_dir)
        node_faults.sync_runtime(self, pair, record)
        self.emit("link_restored", f"{a}--{b}")

    def set_impairment(self, node: str, impairment: Impairment) -> None:
        from . import node_faults  # grpc: only for faults

        self._node(node)
        state = self.inspect().nodes[node].state
        if state != "running":
            raise QkdnetError(
                f"{node} is {state}" + (": unpause it first" if state == "paused" else "")
            )
        record = FaultRecord.load(self.plan.state_dir)
        if impairment.is_none:
            record.impairments.pop(node, None)
        else:
            record.impairments[node] = impairment
        record.save(self.plan.state_dir)
        node_faults.sync_runtime(self, [node], record)
        self.emit("impairment_set", node, impairment.describe())

    def faults(self) -> FaultReport:
        """Paused nodes (and broker), and what the running nodes hold; a node that is not
        running is reported with what it gets when it starts."""
        from . import node_faults  # grpc: only for faults

        return node_faults.report(self, self.inspect(), FaultRecord.load(self.plan.state_dir))

    # -- destroy -------------------------------------------------------------------------------

    def _stop_all(self, grace: float) -> tuple[list[str], list[str]]:
        """Stop every process of the deployment; (stopped, killed) by name.

        Nodes first, the broker last (a node says "stopped" through it on its way out), then
        whatever else carries the deployment's label (reapers, which leave with their last
        child, and anything the record missed). Each is asked with SIGTERM, killed with SIGKILL
        after `grace` seconds, and waited for until the kernel has let it go, identified by
        PID and start time throughout.
        """
        record = self._load()
        targets: dict[str, tuple[int, int]] = {}
        for node_id, entry in record["nodes"].items():
            if self._alive(entry):
                targets[node_id] = (int(entry["pid"]), int(entry["start"]))
        broker: dict[str, tuple[int, int]] = {}
        if self._alive(record.get("broker")):
            broker[BROKER] = (int(record["broker"]["pid"]), int(record["broker"]["start"]))
        killed = _terminate(targets, signal.SIGTERM, grace)
        killed += _terminate(broker, signal.SIGTERM, grace)
        stopped = sorted(set(targets) - set(killed)) + sorted(set(broker) - set(killed))
        # Reapers and supervisors leave by themselves once their children are gone.
        deadline = time.monotonic() + 2.0
        while (left := self._unrecorded()) and time.monotonic() < deadline:
            time.sleep(_POLL)
        if left:
            names = {f"pid {pid}": (pid, start) for pid, start in left.items()}
            killed_left = _terminate(names, signal.SIGTERM, grace)
            killed += killed_left
            stopped += sorted(set(names) - set(killed_left))
        return stopped, killed

    def _unrecorded(self) -> dict[int, int]:
        """Live processes with the deployment's label, other than this one: PID -> start."""
        found = {}
        for pid in labelled_processes(self.plan.state_dir):
            start = process_start_time(pid)
            if pid != os.getpid() and start is not None:
                found[pid] = start
        return found

    def _destroy(self, keep_state: bool) -> DestroyReport:
        stopped, killed = self._stop_all(grace=10.0)
        for name in [*stopped, *killed]:
            self.emit("stopped", name)
        removed = False
        if not keep_state and self.plan.state_dir.exists():
            # Another destroy may be removing it at the same time: what is gone is gone.
            shutil.rmtree(self.plan.state_dir, onerror=_ignore_missing)
            removed = True
        elif self._record_path.exists():
            self._save({"nodes": {}, "broker": None})
        return DestroyReport(stopped=stopped, killed=killed, state_removed=removed)


def _check_free(address: str, block: str) -> None:
    """ConfigError when something already listens on `address` (in the deployment's `block`)."""
    host, port = parse_address(address)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {address}: {exc.strerror}. Something that is not a "
                f"registered qkdnet deployment uses {block}; choose another block with "
                "--subnet (or subnet: in the topology)"
            ) from None


def _ignore_missing(function: Any, path: str, error: tuple[type, BaseException, Any]) -> None:
    if not isinstance(error[1], FileNotFoundError):
        raise error[1]


# How long a process may take to vanish after SIGKILL: the kernel frees a big process's memory
# before it goes, which takes seconds on a loaded machine.
_KILL_WAIT_S = 60.0


def _terminate(targets: dict[str, tuple[int, int]], sig: signal.Signals, grace: float) -> list[str]:
    """Send `sig` to every (pid, start time); SIGKILL what is left after `grace` seconds, and
    wait until every one is gone (QkdnetError naming those still there after a minute).

    Returns the names that needed SIGKILL. A PID whose start time changed is someone else's.
    """

    def alive() -> dict[str, tuple[int, int]]:
        return {n: t for n, t in targets.items() if process_start_time(t[0]) == t[1]}

    for pid, start in targets.values():
        if process_start_time(pid) == start:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                os.kill(pid, signal.SIGCONT)  # a paused process handles SIGTERM only once resumed
    deadline = time.monotonic() + grace
    while (left := alive()) and time.monotonic() < deadline:
        time.sleep(_POLL)
    killed = sorted(left)
    for pid, start in left.values():
        if process_start_time(pid) == start:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + _KILL_WAIT_S
    while (left := alive()) and time.monotonic() < deadline:
        time.sleep(_POLL)
    if left:
        raise QkdnetError(
            "still running a minute after SIGKILL: "
            + ", ".join(f"{name} (pid {pid})" for name, (pid, _) in sorted(left.items()))
        )
    return killed


class _ReadyFileProbe:
    """Readiness of node processes: the ready file the node writes once it serves, for the
    process the launcher started (its PID); a process that is gone has failed."""

    def __init__(self, record: dict[str, Any], alive: Callable[[dict[str, Any]], bool]) -> None:
        self._record = record
        self._alive = alive

    def ready(self, node: NodePlan) -> bool:
        try:
            ready = json.loads((node.state_dir / "ready.json").read_text())
        except (OSError, ValueError):
            return False
        return bool(ready.get("pid") == self._record["nodes"][node.node_id]["pid"])

    def failure(self, node: NodePlan) -> str | None:
        if self._alive(self._record["nodes"][node.node_id]):
            return None
        return (
            f"node {node.node_id} exited during start-up: {_last_line(node.log_path)} "
            f"(log: {node.log_path})"
        )

    def timed_out(self, waiting: Sequence[str], timeout: float) -> str:
        return f"not ready after {timeout:.0f} s: {', '.join(waiting)}"
