"""Fault actions, and scenarios: a timed list of them that `qkdnet fault run` plays.

Each action is one `Fault`, checked against the deployment's plan before anything happens and
applied through its runtime; the `qkdnet fault` verbs apply the same ones. A scenario file is
YAML:

```yaml
# chaos.yaml: qkdnet fault run -t examples/backbone.yaml chaos.yaml
steps:                              # in order; at: seconds from the start of the run
  - {at: 0,  action: link, args: {link: [utrecht, arnhem], eavesdrop: 0.5}}
  - {at: 5,  action: cut, args: {link: [amsterdam, utrecht]}}
  - {at: 10, action: shape, args: {node: breda, delay: 50ms, jitter: 5ms, loss: 1%, rate: 1mbit}}
  - {at: 15, action: pause, args: {nodes: [leiden]}}
  - {at: 30, action: reset}
```

Actions and their args:

- pause, unpause, stop, start, kill, restart: `nodes: [NODE, ...]`, `broker: true` (the
  embedded broker);
- cut, restore: `link: [NODE, NODE]`;
- shape (or netem): `node: NODE`, `peer: NODE` (default: all its traffic), any of `delay`,
  `jitter` (50ms, 0.2s), `loss` (1%), `rate` (500kbit, 1mbit); replaces what was set there;
- unshape (or netem-reset): `node: NODE`, `peer: NODE` (default: its node-wide shaping);
- link: `link: [NODE, NODE]` and any of `eavesdrop` (fraction of the pulses), `extra_loss_db`,
  `misalignment` (optical error probability), each over what was changed before; or
  `reset: true` (back to the configured channel, before any value given with it);
- reset: no args; every fault in force (paused nodes and broker, cuts, shaping, channels).

`at` must not decrease, and a run ends by itself after its last step (at most a day after the
start). The whole file is checked first: a bad step stops everything before it starts, naming
the step and what is wrong. A step that fails, or Ctrl-C, resets what the run applied (unpauses
what it paused, starts what it stopped, restores its cuts, removes its shaping and channel
changes); a run that completes leaves its faults in force (end with `reset` to clear them).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from qkdnet.node.core.channel_change import ChannelChange
from qkdnet.node.errors import ConfigError, QkdnetError

from . import node_faults
from .faults import (
    FaultRecord,
    FaultReport,
    Impairment,
    change_as_json,
    channel_change,
    describe_change,
    link_pair,
    parse_duration_ms,
    parse_percent,
    parse_rate_kbit,
)
from .seam import BROKER, Runtime

__all__ = [
    "LIFECYCLE",
    "MAX_SECONDS",
    "ChannelFault",
    "Cut",
    "Fault",
    "Lifecycle",
    "ResetAll",
    "Scenario",
    "Shape",
    "Step",
    "Undo",
    "change_channel",
    "channel_updates",
    "fault_of",
    "impairment_of",
    "load_scenario",
    "reset_everything",
    "run_scenario",
    "shape_toward",
]

LIFECYCLE = ("pause", "unpause", "stop", "start", "kill", "restart")
MAX_SECONDS = 86_400.0


def _label(name: str) -> str:
    return "the broker" if name == BROKER else name


@dataclass
class Undo:
    """What a run applied, to take back on Ctrl-C or when a step fails."""

    paused: set[str] = field(default_factory=set)
    stopped: set[str] = field(default_factory=set)
    cuts: set[tuple[str, str]] = field(default_factory=set)
    shaped: set[tuple[str, str | None]] = field(default_factory=set)
    channels: set[tuple[str, str]] = field(default_factory=set)

    def apply(self, runtime: Runtime) -> list[str]:
        """Take it all back; returns what could not be (each with why)."""
        failed: list[str] = []

        def attempt(what: str, action: Callable[[], object]) -> None:
            try:
                action()
            except QkdnetError as exc:
                failed.append(f"{what}: {exc}")

        for name in sorted(self.paused):
            attempt(f"unpause {_label(name)}", partial(runtime.unpause, name))
        for name in sorted(self.stopped):
            attempt(f"start {_label(name)}", partial(runtime.start, name))
        for a, b in sorted(self.cuts):
            attempt(f"restore {a} — {b}", partial(runtime.restore_link, a, b))
        for node, peer in sorted(self.shaped, key=str):
            attempt(f"unshape {node}", partial(shape_toward, runtime, node, peer, Impairment()))
        for a, b in sorted(self.channels):
            attempt(f"reset link {a} — {b}", partial(change_channel, runtime, a, b, {}, reset=True))
        return failed


class Fault:
    """One fault action, checked against the plan when made."""

    action = ""

    def apply(self, runtime: Runtime, undo: Undo) -> str:
        """Inject it; returns what was done, in words."""
        raise NotImplementedError


@dataclass
class Lifecycle(Fault):
    """pause, unpause, stop, start, kill or restart nodes (or `BROKER`)."""

    verb: str
    names: list[str]

    def apply(self, runtime: Runtime, undo: Undo) -> str:
        for name in self.names:
            getattr(runtime, self.verb)(name)
            if self.verb == "pause":
                undo.paused.add(name)
            elif self.verb == "unpause":
                undo.paused.discard(name)
            elif self.verb in ("stop", "kill"):
                undo.stopped.add(name)
            else:
                undo.stopped.discard(name)
        return f"{self.verb} {', '.join(map(_label, self.names))}"


@dataclass
class Cut(Fault):
    """Cut (or with `restore`, restore) the link between two nodes."""

    a: str
    b: str
    restore: bool = False

    def apply(self, runtime: Runtime, undo: Undo) -> str:
        pair = link_pair(self.a, self.b)
        if self.restore:
            runtime.restore_link(self.a, self.b)
            undo.cuts.discard(pair)
            return f"restored {self.a} — {self.b}"
        runtime.cut_link(self.a, self.b)
        undo.cuts.add(pair)
        return f"cut {self.a} — {self.b}"


@dataclass
class Shape(Fault):
    """Shape what `node` sends to `peer` (None: node-wide); a none impairment removes it."""

    node: str
    peer: str | None
    impairment: Impairment

    def apply(self, runtime: Runtime, undo: Undo) -> str:
        shape_toward(runtime, self.node, self.peer, self.impairment)
        target = self.node + (f" → {self.peer}" if self.peer else "")
        if self.impairment.is_none:
            undo.shaped.discard((self.node, self.peer))
            return f"{target}: no shaping"
        undo.shaped.add((self.node, self.peer))
        return f"{target}: {self.impairment.describe()}"


@dataclass
class ChannelFault(Fault):
    """Change the quantum channel of the link between `a` and `b` (`updates` of the fields of a
    ChannelChange; `reset`: back to the configured channel)."""

    a: str
    b: str
    updates: dict[str, float]
    reset: bool = False

    def apply(self, runtime: Runtime, undo: Undo) -> str:
        change = change_channel(runtime, self.a, self.b, self.updates, reset=self.reset)
        pair = link_pair(self.a, self.b)
        if change.is_none:
            undo.channels.discard(pair)
        else:
            undo.channels.add(pair)
        return f"link {self.a} — {self.b}: {describe_change(change)}"


@dataclass
class ResetAll(Fault):
    """Every fault in force."""

    def apply(self, runtime: Runtime, undo: Undo) -> str:
        report = reset_everything(runtime)
        undo.paused.clear()
        undo.cuts.clear()
        undo.shaped.clear()
        undo.channels.clear()
        return "reset " + (_summary(report) if not report.is_empty else "(nothing in force)")


def _summary(report: FaultReport) -> str:
    parts = []
    if report.paused:
        parts.append(f"{len(report.paused)} paused")
    if report.cuts:
        parts.append(f"{len(report.cuts)} cut")
    shaped = len(report.impairments) + sum(len(p) for p in report.peer_impairments.values())
    if shaped:
        parts.append(f"{shaped} shaped")
    if report.channels:
        parts.append(f"{len(report.channels)} changed channel(s)")
    return ", ".join(parts)


# -- what the actions do, shared with the verbs -----------------------------------------------


def _require_running(runtime: Runtime, node: str) -> None:
    state = runtime.inspect().nodes[node].state
    if state != "running":
        hint = ": unpause it first" if state == "paused" else ""
        raise QkdnetError(f"{node} is {state}{hint}")


def shape_toward(runtime: Runtime, node: str, peer: str | None, impairment: Impairment) -> None:
    """Replace the shaping of what `node` sends to `peer` (None: all its traffic, the runtime's
    impairment: kernel netem where there is one)."""
    runtime.check_node(node)
    if peer is None:
        runtime.set_impairment(node, impairment)
        return
    runtime.check_node(peer)
    if peer == node:
        raise ConfigError(f"--peer: {node} sends nothing to itself")
    _require_running(runtime, node)
    record = FaultRecord.load(runtime.plan.state_dir)
    if impairment.is_none:
        record.peer_impairments.pop((node, peer), None)
    else:
        record.peer_impairments[(node, peer)] = impairment
    record.save(runtime.plan.state_dir)
    node_faults.sync_runtime(runtime, [node], record)


def change_channel(
    runtime: Runtime, a: str, b: str, updates: Mapping[str, float], *, reset: bool = False
) -> ChannelChange:
    """Change the quantum channel of link a--b at both ends: `updates` (fields of a
    ChannelChange) over what was changed before, or after `reset` the configured channel.
    Returns the change now in force."""
    pair = runtime.check_link(a, b)
    record = FaultRecord.load(runtime.plan.state_dir)
    current = ChannelChange() if reset else record.channels.get(pair, ChannelChange())
    change = channel_change(**(change_as_json(current) | dict(updates)))  # type: ignore[arg-type]
    info = runtime.inspect()
    if not any(info.nodes[end].state == "running" for end in pair):
        raise QkdnetError(f"neither {a} nor {b} is running")
    if change.is_none:
        record.channels.pop(pair, None)
    else:
        record.channels[pair] = change
    record.save(runtime.plan.state_dir)
    node_faults.sync_runtime(runtime, pair, record)
    return change


def reset_everything(runtime: Runtime) -> FaultReport:
    """Undo every fault in force (paused nodes and broker, cuts, shaping, channel changes) and
    forget the record; returns what was in force."""
    report = runtime.faults()
    for name in report.paused:
        runtime.unpause(name)
    for a, b in report.cuts:
        runtime.restore_link(a, b)
    states = runtime.inspect().nodes
    for node in report.impairments:
        if states[node].state == "running":  # one that is not gets nothing once forgotten
            runtime.set_impairment(node, Impairment())
    record = FaultRecord.load(runtime.plan.state_dir)
    kernel_netem = record.kernel_netem
    record = FaultRecord(kernel_netem=kernel_netem)
    record.save(runtime.plan.state_dir)
    node_faults.sync_runtime(runtime, runtime.plan.nodes, record)
    return report


# -- scenario files --------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One step of a scenario: `fault` at `at` seconds from the start."""

    number: int
    at: float
    fault: Fault
    action: str


@dataclass(frozen=True)
class Scenario:
    path: Path
    steps: list[Step]

    @property
    def duration(self) -> float:
        return self.steps[-1].at if self.steps else 0.0


_NODES_ARGS = {"nodes", "broker"}
_LINK_ARGS = {"link"}
_SHAPE_ARGS = {"node", "peer", "delay", "jitter", "loss", "rate"}
_UNSHAPE_ARGS = {"node", "peer"}
_CHANNEL_ARGS = {"link", "eavesdrop", "extra_loss_db", "misalignment", "reset"}
_ALLOWED: dict[str, set[str]] = {
    **dict.fromkeys(LIFECYCLE, _NODES_ARGS),
    "cut": _LINK_ARGS,
    "restore": _LINK_ARGS,
    "shape": _SHAPE_ARGS,
    "netem": _SHAPE_ARGS,
    "unshape": _UNSHAPE_ARGS,
    "netem-reset": _UNSHAPE_ARGS,
    "link": _CHANNEL_ARGS,
    "reset": set(),
}


def _text(args: Mapping[str, Any], key: str) -> str | None:
    value = args.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f"{key}: expected a value such as 50ms, 1% or 1mbit, not {value!r}")
    return str(value)


def _node(runtime: Runtime, args: Mapping[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a node ID, not {value!r}")
    runtime.check_node(value)
    return value


def _link(runtime: Runtime, args: Mapping[str, Any]) -> tuple[str, str]:
    value = args.get("link")
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise ConfigError(f"link: expected the link's two nodes, [A, B], not {value!r}")
    runtime.check_link(value[0], value[1])
    return value[0], value[1]


def _number(args: Mapping[str, Any], key: str) -> float | None:
    value = args.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key}: expected a number, not {value!r}")
    return float(value)


def impairment_of(
    delay: str | None,
    jitter: str | None,
    loss: str | None,
    rate: str | None,
    *,
    prefix: str = "",
) -> Impairment:
    """An Impairment from the words of the CLI (`prefix` "--") or a scenario: 50ms, 1%, 1mbit."""
    return Impairment(
        delay_ms=parse_duration_ms(delay, f"{prefix}delay") if delay else 0.0,
        jitter_ms=parse_duration_ms(jitter, f"{prefix}jitter") if jitter else 0.0,
        loss_percent=parse_percent(loss, f"{prefix}loss") if loss else 0.0,
        rate_kbit=parse_rate_kbit(rate, f"{prefix}rate") if rate else 0.0,
    )


def channel_updates(
    eavesdrop: float | None, extra_loss_db: float | None, misalignment: float | None
) -> dict[str, float]:
    """The fields of a ChannelChange that were given, checked (ConfigError)."""
    updates: dict[str, float] = {}
    if eavesdrop is not None:
        updates["eavesdrop_fraction"] = eavesdrop
    if extra_loss_db is not None:
        updates["extra_loss_db"] = extra_loss_db
    if misalignment is not None:
        updates["misalignment_error"] = misalignment
    channel_change(**updates)  # type: ignore[arg-type]
    return updates


def fault_of(runtime: Runtime, action: str, args: Mapping[str, Any]) -> Fault:
    """The fault a scenario step names (ConfigError saying what is wrong)."""
    allowed = _ALLOWED.get(action)
    if allowed is None:
        raise ConfigError(f"unknown action {action!r}; one of {', '.join(_ALLOWED)}")
    unknown = sorted(set(args) - allowed)
    if unknown:
        expected = ", ".join(sorted(allowed)) or "none"
        raise ConfigError(f"unknown argument {unknown[0]!r} (arguments: {expected})")
    if action in LIFECYCLE:
        names = args.get("nodes", [])
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise ConfigError(f"nodes: expected a list of node IDs, not {names!r}")
        for name in names:
            runtime.check_node(name)
        if args.get("broker") not in (None, True, False):
            raise ConfigError("broker: true or false")
        names = [*names, *([BROKER] if args.get("broker") else [])]
        if not names:
            raise ConfigError("name nodes (nodes: [...]) or the broker (broker: true)")
        return Lifecycle(action, names)
    if action in ("cut", "restore"):
        return Cut(*_link(runtime, args), restore=action == "restore")
    if action in ("shape", "netem", "unshape", "netem-reset"):
        node = _node(runtime, args, "node")
        peer = _node(runtime, args, "peer") if "peer" in args else None
        if action in ("unshape", "netem-reset"):
            return Shape(node, peer, Impairment())
        words = [_text(args, key) for key in ("delay", "jitter", "loss", "rate")]
        if not any(words):
            raise ConfigError("give at least one of delay, jitter, loss, rate (or use unshape)")
        return Shape(node, peer, impairment_of(*words))
    if action == "link":
        a, b = _link(runtime, args)
        if args.get("reset") not in (None, True, False):
            raise ConfigError("reset: true or false")
        updates = channel_updates(
            _number(args, "eavesdrop"),
            _number(args, "extra_loss_db"),
            _number(args, "misalignment"),
        )
        if not updates and not args.get("reset"):
            raise ConfigError("give eavesdrop, extra_loss_db or misalignment (or reset: true)")
        return ChannelFault(a, b, updates, reset=bool(args.get("reset")))
    return ResetAll()


def load_scenario(path: Path, runtime: Runtime) -> Scenario:
    """Read and check a scenario file against the deployment (ConfigError naming the file and
    the step)."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
        raise ConfigError(f"{path}: expected a mapping with a list of steps (steps: [...])")
    extra = sorted(set(data) - {"steps", "name", "description"})
    if extra:
        raise ConfigError(f"{path}: unknown field {extra[0]!r} (fields: steps, name, description)")
    if not data["steps"]:
        raise ConfigError(f"{path}: no steps")
    steps: list[Step] = []
    last = 0.0
    for number, item in enumerate(data["steps"], start=1):
        where = f"{path}: step {number}"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected a mapping with at, action and args")
        action = item.get("action")
        if isinstance(action, str):
            where += f" ({action})"
        extra = sorted(set(item) - {"at", "action", "args"})
        if extra:
            raise ConfigError(f"{where}: unknown field {extra[0]!r} (fields: at, action, args)")
        at = item.get("at")
        if isinstance(at, bool) or not isinstance(at, int | float):
            raise ConfigError(f"{where}: at: expected seconds from the start, not {at!r}")
        if not 0 <= at <= MAX_SECONDS:
            raise ConfigError(f"{where}: at: must be 0..{MAX_SECONDS:g} s, not {at:g}")
        if at < last:
            raise ConfigError(f"{where}: at {at:g} s comes before the step before it ({last:g} s)")
        last = float(at)
        if not isinstance(action, str):
            raise ConfigError(f"{where}: action: expected one of {', '.join(_ALLOWED)}")
        args = item.get("args") or {}
        if not isinstance(args, dict):
            raise ConfigError(f"{where}: args: expected a mapping, not {args!r}")
        try:
            fault = fault_of(runtime, action, args)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        steps.append(Step(number, float(at), fault, action))
    return Scenario(path, steps)


def run_scenario(
    runtime: Runtime,
    scenario: Scenario,
    on_step: Callable[[Step, float, str], None],
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Undo:
    """Play every step at its time (`on_step(step, seconds since the start, what was done)`);
    returns what the run applied. Ctrl-C (KeyboardInterrupt) or a failing step takes back what
    it applied before the exception goes on (a failed step's as QkdnetError naming it)."""
    undo = Undo()
    start = clock()
    try:
        for step in scenario.steps:
            wait = start + step.at - clock()
            if wait > 0:
                sleep(wait)
            try:
                done = step.fault.apply(runtime, undo)
            except QkdnetError as exc:
                left = undo.apply(runtime)
                note = "; could not reset: " + "; ".join(left) if left else ""
                raise type(exc)(
                    f"{scenario.path}: step {step.number} ({step.action}) failed: {exc}; "
                    f"what the run applied is reset{note}"
                ) from None
            on_step(step, clock() - start, done)
    except KeyboardInterrupt:
        undo.apply(runtime)
        raise
    return undo
