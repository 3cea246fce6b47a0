"""``backbeat-edge monitor``: a live table of a fleet from its status and availability topics.

Each agent's row shows whether it is online (its retained availability), the last beat it
claimed, its state, sync state and error bound, action lateness, CPU, temperature, guard
verdict and outbox backlog, the bad input it refused (``malformed``: frames that did not
decode; ``in drop``: frames its link dropped on a full inbox), and the devices it has
isolated, if any. ``--json`` prints one
JSON line per claim instead, for scripts.
Malformed claims are counted and shown, never fatal. The link's state heads the table
(connecting, connected, disconnected: then the rows are the last seen, and say so); with
``--json`` it goes to stderr. A monitor that never reached the broker exits 1. With
``--keys DIR`` every claim is checked against the public keys in DIR (``*.pub.pem``): the
row says ``signed``, ``unsigned`` or ``forged``; a forged claim is counted on its row and
never shown as the agent's state; in ``--json`` each line also carries ``"signature"``.
"""

from __future__ import annotations

import json
import queue
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from edge.config import parse_broker
from edge.errors import ConfigError, ConfigProblems, FrameError
from edge.messages import StatusClaim, decode_status_claim_with_map, to_wire
from edge.mqtt_link import MqttLink, Topics
from edge.trust import Verdict, Verifier, verdict


@dataclass
class AgentRow:
    agent_id: str
    online: str = "?"
    claim: StatusClaim | None = None
    claims: int = 0
    #: The last claim's signature verdict (monitor --keys), and how many were forged.
    signature: Verdict | None = None
    forged: int = 0


@dataclass
class FleetView:
    """The pure part: topics and payloads in, rows out."""

    topics: Topics
    rows: dict[str, AgentRow] = field(default_factory=dict)
    bad: int = 0
    last_error: str = ""
    #: What the link is doing, shown above the rows ("connecting to ...", ...).
    link_state: str = ""
    #: Checks claim signatures when set (monitor --keys).
    keyring: Verifier | None = None
    #: The verdict on the claim the last feed() returned (None without a keyring).
    last_verdict: Verdict | None = None

    def agent_of(self, topic: str) -> tuple[str, str] | None:
        base = f"{self.topics.prefix}/{self.topics.cluster}/"
        if not topic.startswith(base):
            return None
        parts = topic[len(base) :].split("/")
        if len(parts) == 2 and parts[0] == "status":
            return "status", parts[1]
        if len(parts) == 3 and parts[0] == "agents" and parts[2] == "availability":
            return "availability", parts[1]
        return None

    def feed(self, topic: str, payload: bytes, now: float) -> StatusClaim | None:
        kind = self.agent_of(topic)
        if kind is None:
            return None
        what, agent = kind
        row = self.rows.setdefault(agent, AgentRow(agent))
        if what == "availability":
            row.online = payload.decode("utf-8", "replace")[:16] or "?"
            return None
        try:
            claim, data = decode_status_claim_with_map(payload)
        except FrameError as exc:
            self.bad += 1
            self.last_error = f"{agent}: {exc}"
            return None
        if self.keyring is not None:
            self.last_verdict = row.signature = verdict(data, self.keyring)
            if row.signature == "forged":
                row.forged += 1  # counted, never shown as the agent's state
                return claim
        row.claim = claim
        row.claims += 1
        return claim

    def table(self) -> str:
        head = (
            f"{'agent':<24} {'online':<7} {'beat':>8} {'state':<10} {'sync':<12} "
            f"{'err ms':>7} {'late p50/max ms':>16} {'cpu%':>5} {'temp':>5} "
            f"{'guard':<15} {'malformed':>9} {'in drop':>7} {'backlog':>7}"
        )
        if self.keyring is not None:
            head += f" {'signature':<9}"
        lines = [self.link_state, ""] if self.link_state else []
        lines += [head, "-" * len(head)]
        for agent in sorted(self.rows):
            row = self.rows[agent]
            c = row.claim
            md = dict(c.metadata or {}) if c else {}
            res = dict(c.resources or {}) if c else {}

            def num(value: object, spec: str = ".2f") -> str:
                return format(value, spec) if isinstance(value, int | float) else "-"

            def sub(key: str, md: dict[str, object] = md) -> dict[str, object]:
                value = md.get(key)
                return dict(value) if isinstance(value, Mapping) else {}

            sync, lateness = sub("sync"), sub("late_ms")
            guard, outbox = sub("guard"), sub("outbox")
            late = f"{num(lateness.get('p50'), '.3f')}/{num(lateness.get('max'), '.3f')}"
            line = (
                f"{agent:<24} {row.online:<7} {(c.beat_index if c else '-')!s:>8} "
                f"{(c.state if c else '-'):<10} {sync.get('state', '-')!s:<12} "
                f"{num(sync.get('error_bound_ms')):>7} {late:>16} "
                f"{num(res.get('cpu_percent'), '.0f'):>5} "
                f"{num(res.get('temperature_c'), '.1f'):>5} "
                f"{guard.get('level', '-')!s:<15} "
                f"{num(sub('frames_rejected').get('malformed', 0 if c else None), 'd'):>9} "
                f"{num(md.get('inbox_dropped'), 'd'):>7} "
                f"{num(outbox.get('backlog'), 'd'):>7}"
            )
            if self.keyring is not None:
                line += f" {row.signature or '-':<9}"
                if row.forged:
                    line += f"  forged claims: {row.forged}"
            isolated = md.get("isolated")
            if isinstance(isolated, tuple) and isolated:  # devices out of service
                line += "  isolated: " + ", ".join(str(name) for name in isolated)
            alerts = md.get("alerts")
            if isinstance(alerts, tuple) and alerts:
                line += "  alerts: " + ", ".join(str(name) for name in alerts)
                spread = md.get("source_conflict_ms")
                if isinstance(spread, int | float):
                    line += f" (sources {spread:.1f} ms apart)"
            lines.append(line)
        if self.bad:
            lines.append(f"\n{self.bad} malformed claim(s); last: {self.last_error}")
        return "\n".join(lines) + "\n"


def run_monitor(
    broker_url: str,
    cluster: str,
    as_json: bool = False,
    prefix: str = "backbeat",
    duration_s: float | None = None,
    out: IO[str] = sys.stdout,
    connect_timeout_s: float | None = 10.0,
    keys_dir: str | None = None,
    protocol: str = "5",
) -> int:
    """Watch ``cluster`` until ``duration_s`` passes or Ctrl-C. Returns 0, or 1 when the
    broker was never reached (given up on after ``connect_timeout_s``; None: never)."""
    keyring = None
    if keys_dir is not None:
        from edge.signing import Keyring

        try:
            keyring = Keyring.from_directory(Path(keys_dir))
        except ConfigError as exc:
            print(f"backbeat-edge monitor: {exc}", file=sys.stderr)
            return 2
    problems = ConfigProblems("monitor")
    broker = parse_broker(
        {"url": broker_url, "protocol": protocol}, problems, Path.cwd(), where="--broker"
    )
    if problems:
        print(f"backbeat-edge monitor: {ConfigError(problems.items, 'monitor')}", file=sys.stderr)
        return 2
    topics = Topics(prefix, cluster)
    view = FleetView(topics, keyring=keyring)
    link = MqttLink(
        broker,
        f"backbeat-monitor-{cluster}-{int(time.time())}",
        subscriptions=(topics.all_status, topics.all_availability),
    )
    started = time.monotonic()
    end = None if duration_s is None else started + duration_s
    give_up = None if connect_timeout_s is None else started + connect_timeout_s
    reached = False
    next_draw = 0.0

    def say(state: str) -> None:
        nonlocal next_draw
        view.link_state = state
        next_draw = 0.0  # shown at once
        if as_json:
            print(f"backbeat-edge monitor: {state}", file=sys.stderr, flush=True)

    link.start()
    say(f"connecting to {broker_url} ...")
    try:
        while end is None or time.monotonic() < end:
            try:
                item = link.inbox.get(timeout=0.2)
            except queue.Empty:
                item = None
            except KeyboardInterrupt:
                break
            now = time.monotonic()
            if item is not None and item.kind == "message":
                claim = view.feed(item.topic, item.payload, now)
                if as_json and claim is not None:
                    line: dict[str, object] = to_wire(claim)
                    if view.last_verdict is not None:
                        line["signature"] = view.last_verdict
                    out.write(json.dumps(line, separators=(",", ":")) + "\n")
                    out.flush()
            elif item is not None and item.kind == "connected":
                reached = True
                say(f"connected to {broker_url}")
            elif item is not None and item.kind == "disconnected":
                clock = time.strftime("%H:%M:%S")
                say(
                    f"DISCONNECTED from {broker_url} at {clock} ({item.reason}); "
                    "reconnecting; the rows below are as last seen"
                )
            elif not reached and link.last_error and link.last_error not in view.link_state:
                say(f"connecting to {broker_url} ... ({link.last_error})")
            if not reached and give_up is not None and now >= give_up:
                print(
                    f"backbeat-edge monitor: cannot reach the broker at {broker_url} in "
                    f"{connect_timeout_s:g} s ({link.last_error or 'no answer'})",
                    file=sys.stderr,
                )
                return 1
            if not as_json and now >= next_draw:
                next_draw = now + 0.5
                # Clear the screen on a terminal; a file or pipe gets the tables one after another.
                out.write(("\x1b[H\x1b[2J" if out.isatty() else "\n") + view.table())
                out.flush()
    except KeyboardInterrupt:
        pass
    finally:
        link.stop(timeout=0.5)
    if not reached:
        print(
            f"backbeat-edge monitor: never reached the broker at {broker_url} "
            f"({link.last_error or 'no answer'})",
            file=sys.stderr,
        )
        return 1
    return 0
