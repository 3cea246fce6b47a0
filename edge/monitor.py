"""``backbeat-edge monitor``: a live table of a fleet from its status and availability topics.

Each agent's row shows whether it is online (its retained availability), the last beat it
claimed, its state, sync state and error bound, action lateness, CPU, temperature, guard
verdict and outbox backlog, the bad input it refused (``malformed``: frames that did not
decode; ``in drop``: frames its link dropped on a full inbox), and the devices it has
isolated, if any. ``--json`` prints one
JSON line per claim instead, for scripts.
Malformed claims are counted and shown, never fatal.
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
from edge.messages import StatusClaim, decode_status_claim, to_wire
from edge.mqtt_link import MqttLink, Topics


@dataclass
class AgentRow:
    agent_id: str
    online: str = "?"
    claim: StatusClaim | None = None
    claims: int = 0
    last_seen: float = 0.0


@dataclass
class FleetView:
    """The pure part: topics and payloads in, rows out."""

    topics: Topics
    rows: dict[str, AgentRow] = field(default_factory=dict)
    bad: int = 0
    last_error: str = ""

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
        row.last_seen = now
        if what == "availability":
            row.online = payload.decode("utf-8", "replace")[:16] or "?"
            return None
        try:
            claim = decode_status_claim(payload)
        except FrameError as exc:
            self.bad += 1
            self.last_error = f"{agent}: {exc}"
            return None
        row.claim = claim
        row.claims += 1
        return claim

    def table(self) -> str:
        head = (
            f"{'agent':<24} {'online':<7} {'beat':>8} {'state':<10} {'sync':<12} "
            f"{'err ms':>7} {'late p50/max ms':>16} {'cpu%':>5} {'temp':>5} "
            f"{'guard':<15} {'malformed':>9} {'in drop':>7} {'backlog':>7}"
        )
        lines = [head, "-" * len(head)]
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
            isolated = md.get("isolated")
            if isinstance(isolated, tuple) and isolated:  # devices out of service
                line += "  isolated: " + ", ".join(str(name) for name in isolated)
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
) -> int:
    problems = ConfigProblems("monitor")
    broker = parse_broker({"url": broker_url}, problems, Path.cwd(), where="--broker")
    if problems:
        print(f"backbeat-edge monitor: {ConfigError(problems.items, 'monitor')}", file=sys.stderr)
        return 2
    topics = Topics(prefix, cluster)
    view = FleetView(topics)
    link = MqttLink(
        broker,
        f"backbeat-monitor-{cluster}-{int(time.time())}",
        subscriptions=(topics.all_status, topics.all_availability),
    )
    link.start()
    end = None if duration_s is None else time.monotonic() + duration_s
    next_draw = 0.0
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
                    out.write(json.dumps(to_wire(claim), separators=(",", ":")) + "\n")
                    out.flush()
            if not as_json and now >= next_draw:
                next_draw = now + 0.5
                out.write("\x1b[H\x1b[2J" + view.table())
                out.flush()
    except KeyboardInterrupt:
        pass
    finally:
        link.stop(timeout=0.5)
    return 0
