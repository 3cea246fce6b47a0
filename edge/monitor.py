"""``backbeat-edge monitor``: a live table of a fleet from its status and availability topics.

Each agent's row shows whether it is online (its retained availability), the last beat it
claimed, its state, sync state and error bound, action lateness, CPU, temperature, guard
verdict and outbox backlog, the bad input it refused (``malformed``: frames that did not
decode; ``in drop``: frames its link dropped on a full inbox), and the devices it has
isolated, if any. ``--json`` prints one
JSON line per claim instead, for scripts.

For a fleet the screen (:meth:`FleetView.render`) puts a summary line on top (how many
agents are online and locked, the worst lateness and whose it is, how many have alerts)
and sorts the rows worst first: offline, forged, not locked, alerting or shedding, then by
lateness. On a terminal narrower than the full table it uses compact rows (sync, error
bound, lateness, CPU, from 110 columns the broker in use, and a notes column) and, on one
shorter than the fleet, shows the worst rows that fit and says how many more there are.
Malformed claims are counted and shown, never fatal. The link's state heads the table
(connecting, connected, disconnected: then the rows are the last seen, and say so); with
``--json`` it goes to stderr. A monitor that never reached the broker exits 1. With
``--keys DIR`` every claim is checked against the public keys in DIR (``*.pub.pem``): the
row says ``signed``, ``unsigned`` or ``forged``; a forged claim is counted on its row and
never shown as the agent's state; in ``--json`` each line also carries ``"signature"``.

Which claim is an agent's state: one on its own topic that names it (``agent_id``), newer
than the claim shown (:func:`supersedes`), and, with ``--keys``, once the agent was seen
signing with a key, signed with that key again: a claim signed with another key of the
ring is forged, an unsigned one refused. Refused claims are counted on the row by reason
(``refused``; in ``--json`` on the agent's next lines) and not printed in ``--json``;
forged ones are printed, marked ``"signature": "forged"``, as before.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import sys
import textwrap
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from edge.config import parse_broker
from edge.errors import ConfigError, ConfigProblems, FrameError
from edge.hlc import compare
from edge.messages import StatusClaim, decode_status_claim_with_map, to_wire
from edge.mqtt_link import MqttLink
from edge.tool_link import tool_client_id
from edge.topics import Topics
from edge.trust import Keys, Verdict, signer, verdict

#: Compact rows name the broker in use from this many columns on.
_WITH_BROKER = 110

#: An online agent that sent no claim follows no beat yet: it claims per beat once locked
#: (its frames may all be refused, e.g. unsigned ones where signatures are required).
NO_CLAIM = "no claim yet"

#: Why a decoded claim on an agent's topic was not taken as its state (``AgentRow.refused``).
WRONG_AGENT = "wrong_agent"  # its agent_id is not the agent its topic names
OTHER_KEY = "other_key"  # signed with a key of the ring not the agent's (counted forged too)
UNSIGNED = "unsigned"  # unsigned, from an agent seen signing
STALE = "stale"  # not newer than the claim shown: a replay, a resend, a retained copy
_REFUSED_TEXT = {WRONG_AGENT: "wrong agent_id", UNSIGNED: "unsigned", STALE: "stale"}

#: The HLC's wire wall second wraps every 18.2 h, so it orders two claims only within 9.1 h
#: of each other; past this silence a restart is taken without asking it.
HLC_HORIZON_S = 9 * 3600.0


def supersedes(claim: StatusClaim, last: StatusClaim, silent_s: float) -> bool:
    """Whether ``claim`` is newer than ``last``, the agent's claim shown, taken ``silent_s``
    seconds ago. Within a process (the same ``metadata.incarnation``, or none) its
    ``metadata.seq`` must be higher; after a restart (another incarnation) the seq may start
    again where ``seq.hw`` could not be written, so its ``hlc`` must be later instead (the
    HLC follows the wall clock, which a restart does not set back). Without seqs, the HLC."""
    md, last_md = claim.metadata or {}, last.metadata or {}
    incarnation, last_incarnation = md.get("incarnation"), last_md.get("incarnation")
    seq, last_seq = md.get("seq"), last_md.get("seq")
    restarted = (
        incarnation is not None and last_incarnation is not None and incarnation != last_incarnation
    )
    if restarted:
        return silent_s > HLC_HORIZON_S or compare(claim.hlc, last.hlc) > 0
    if type(seq) is int and type(last_seq) is int:
        return seq > last_seq
    return compare(claim.hlc, last.hlc) > 0


def values_text(md: Mapping[str, object]) -> str:
    """What an agent's python devices returned last (``metadata.values``), for its row:
    ``"  values: sensor temperature_c=21.3"``, or empty."""
    values = md.get("values")
    if not isinstance(values, Mapping) or not values:
        return ""
    parts = []
    for device in sorted(values):
        fields = values[device]
        if isinstance(fields, Mapping):
            shown = " ".join(f"{k}={fields[k]}" for k in sorted(fields))
            parts.append(f"{device} {shown}".rstrip())
    return "  values: " + "; ".join(parts) if parts else ""


@dataclass
class AgentRow:
    agent_id: str
    online: str = "?"
    claim: StatusClaim | None = None
    claims: int = 0
    #: The last claim's signature verdict (monitor --keys), and how many were forged.
    signature: Verdict | None = None
    forged: int = 0
    #: The kid of the key this agent was first seen signing with: only it passes after.
    kid: str | None = None
    #: Claims not taken as the state, by reason (WRONG_AGENT, OTHER_KEY, UNSIGNED, STALE).
    refused: dict[str, int] = field(default_factory=dict)
    #: feed()'s ``now`` when the claim shown was taken.
    taken_at: float = 0.0

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def refused_text(self) -> str:
        """The refused claims, ``"1 unsigned, 2 stale"``, or empty; OTHER_KEY is told with
        the forged ones."""
        return ", ".join(
            f"{n} {_REFUSED_TEXT[r]}" for r, n in sorted(self.refused.items()) if r != OTHER_KEY
        )

    def forged_text(self) -> str:
        """The forged claims, ``"2 (1 by another key)"``, or empty."""
        if not self.forged:
            return ""
        other = self.refused.get(OTHER_KEY, 0)
        return f"{self.forged}" + (f" ({other} by another key)" if other else "")


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
    keyring: Keys | None = None
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
        """Take one message. Returns the claim when it became its agent's state, or when it
        is forged (``last_verdict`` then says so); None for anything else: availability,
        other topics, malformed or refused claims (counted on the row)."""
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
        if claim.agent_id != agent:
            row.refuse(WRONG_AGENT)  # neither this agent's state nor the one it names
            return None
        first_signed = False
        if self.keyring is not None:
            if row.kid is None:  # a key named like the agent is its key from the start
                row.kid = self.keyring.kid_for(agent)
            kid = signer(data, self.keyring, (row.kid,) if row.kid else self.keyring.kids)
            seen: Verdict = "signed"
            if kid is None:
                seen = verdict(data, self.keyring)
                if seen == "signed":  # by another key of the ring than this agent's
                    seen = "forged"
                    row.refuse(OTHER_KEY)
            elif row.kid is None:
                row.kid, first_signed = kid, True  # pinned: only this key passes from now on
            self.last_verdict = row.signature = seen
            if seen == "forged":
                row.forged += 1  # counted, never shown as the agent's state
                return claim
            if seen == "unsigned" and row.kid is not None:
                row.refuse(UNSIGNED)  # this agent signs
                return None
        # The first signed claim replaces whatever unsigned claim came before, however new.
        last = row.claim
        if (
            last is not None
            and not first_signed
            and not supersedes(claim, last, now - row.taken_at)
        ):
            row.refuse(STALE)
            return None
        row.claim = claim
        row.claims += 1
        row.taken_at = now
        return claim

    # ------------------------------------------------------------------ the fleet screen

    @staticmethod
    def _md(row: AgentRow) -> dict[str, object]:
        return dict(row.claim.metadata or {}) if row.claim is not None else {}

    @classmethod
    def _sub(cls, row: AgentRow, key: str) -> dict[str, object]:
        value = cls._md(row).get(key)
        return dict(value) if isinstance(value, Mapping) else {}

    @classmethod
    def _late_max(cls, row: AgentRow) -> float | None:
        value = cls._sub(row, "late_ms").get("max")
        return float(value) if isinstance(value, int | float) else None

    @classmethod
    def _alerting(cls, row: AgentRow) -> bool:
        md = cls._md(row)
        guard = cls._sub(row, "guard").get("level", "full")
        return bool(md.get("alerts")) or bool(md.get("isolated")) or guard != "full"

    @classmethod
    def _severity(cls, row: AgentRow) -> tuple[int, float, str]:
        """Sort key, worst first: offline, forged (or refused as not its own: another
        agent_id, unsigned from a signer), not locked, alerting, then lateness."""
        if row.online != "online":
            rank = 0
        elif row.forged or WRONG_AGENT in row.refused or UNSIGNED in row.refused:
            rank = 1
        elif cls._sub(row, "sync").get("state") != "locked":
            rank = 2
        elif cls._alerting(row):
            rank = 3
        else:
            rank = 4
        late = cls._late_max(row)
        return rank, -(late if late is not None else 0.0), row.agent_id

    def summary(self, width: int | None = None) -> str:
        """One line: agents online and locked, alerting, the worst lateness and whose (its
        id cut from the front to fit ``width``)."""
        rows = list(self.rows.values())
        online = sum(1 for r in rows if r.online == "online")
        locked = sum(1 for r in rows if self._sub(r, "sync").get("state") == "locked")
        alerting = sum(1 for r in rows if self._alerting(r))
        noun = "agent" if len(rows) == 1 else "agents"
        line = f"{len(rows)} {noun}: {online} online, {locked} locked, {alerting} alerting"
        if self.bad:
            line += f", {self.bad} malformed claim(s)"
        lates = [(late, r.agent_id) for r in rows if (late := self._late_max(r)) is not None]
        if lates:
            worst, who = max(lates)
            line += f"; worst late {worst:.3f} ms"
            room = len(who) if width is None else width - len(line) - 3
            if room < len(who):
                who = "~" + who[-max(room - 1, 4) :]
            line += f" ({who})"
        return line if width is None else line[:width]

    def _compact_row(self, row: AgentRow, width: int) -> str:
        c = row.claim
        md = self._md(row)
        sync, guard = self._sub(row, "sync"), self._sub(row, "guard")
        res = dict(c.resources or {}) if c else {}

        def num(value: object, spec: str) -> str:
            return format(value, spec) if isinstance(value, int | float) else "-"

        notes = []
        if c is None and row.online == "online":
            notes.append(NO_CLAIM)
        if row.forged:
            notes.append(f"forged {row.forged_text()}")
        if row.refused_text():
            notes.append(f"refused {row.refused_text()}")
        if guard.get("level", "full") != "full":
            notes.append(f"guard {guard.get('level')}")
        for key in ("alerts", "isolated"):
            value = md.get(key)
            if isinstance(value, tuple) and value:
                notes.append(f"{key}: " + ",".join(str(v) for v in value))
        backlog = self._sub(row, "outbox").get("backlog")
        if isinstance(backlog, int) and backlog > 1:
            notes.append(f"backlog {backlog}")
        # A long id keeps its end: that is where a fleet's names differ.
        agent = row.agent_id if len(row.agent_id) <= 20 else "~" + row.agent_id[-19:]
        online = {"online": "on", "offline": "OFF"}.get(row.online, row.online[:3])
        state = str(sync.get("state", "-"))[:10]
        line = (
            f"{agent:<20} {online:<3} {(c.beat_index if c else '-')!s:>7} {state:<10} "
            f"{num(sync.get('error_bound_ms'), '.2f'):>6} {num(self._late_max(row), '.3f'):>8} "
            f"{num(res.get('cpu_percent'), '.0f'):>4}"
        )
        if width >= _WITH_BROKER:  # room for the broker in use
            line += f" {str(md.get('broker', '-'))[-21:]:<21}"
        if notes:
            line += " " + "; ".join(notes)
        return line[:width]

    def render(self, width: int | None = None, height: int | None = None) -> str:
        """The fleet screen: the link state, the summary, then the rows worst first. The
        full table when ``width`` is None or wide enough, compact rows otherwise; with
        ``height``, only the worst rows that fit, and how many more there are."""
        rows = sorted(self.rows.values(), key=self._severity)
        full = self.table(rows)
        full_width = max(len(line) for line in full.splitlines() if line.startswith("agent "))
        if width is None or width >= full_width:
            lines = full.rstrip("\n").split("\n")
            top = ([self.link_state, ""] if self.link_state else []) + [self.summary()]
            body = lines[2:] if self.link_state else lines
        else:
            head = (
                f"{'agent':<20} {'on':<3} {'beat':>7} {'sync':<10} {'err ms':>6} "
                f"{'late max':>8} {'cpu%':>4}"
            )
            head += f" {'broker':<21} notes" if width >= _WITH_BROKER else " notes"
            # Wrapped, not cut: its end says how to read the rows ("as last seen").
            top = [*textwrap.wrap(self.link_state, width), ""] if self.link_state else []
            top.append(self.summary(width))
            body = [head[:width], "-" * min(width, len(head))]
            body += [self._compact_row(row, width) for row in rows]
            if self.bad:
                body.append(f"{self.bad} malformed claim(s); last: {self.last_error}"[:width])
        if height is not None:
            room = max(1, height - len(top) - 3)  # header, rule, and the "more" line
            shown = body[: 2 + room]
            hidden = len(body) - len(shown)
            if hidden > 0:
                shown.append(f"... and {hidden} more, better off (sorted worst first)")
            body = shown
        return "\n".join(top + body) + "\n"

    def table(self, rows: list[AgentRow] | None = None) -> str:
        """The full table, one row per agent (by id, or the ``rows`` given, in order)."""
        head = (
            f"{'agent':<24} {'online':<7} {'beat':>8} {'state':<10} {'sync':<12} "
            f"{'err ms':>7} {'late p50/max ms':>16} {'cpu%':>5} {'temp':>5} "
            f"{'guard':<15} {'malformed':>9} {'in drop':>7} {'backlog':>7}"
        )
        if self.keyring is not None:
            head += f" {'signature':<9}"
        lines = [self.link_state, ""] if self.link_state else []
        lines += [head, "-" * len(head)]
        for row in rows if rows is not None else [self.rows[a] for a in sorted(self.rows)]:
            agent = row.agent_id
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
                    line += f"  forged claims: {row.forged_text()}"
            if row.refused_text():
                line += f"  refused claims: {row.refused_text()}"
            line += values_text(md)
            if c is None and row.online == "online":
                line += f"  {NO_CLAIM}: following no beat (see its log)"
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


def _columns_asked() -> int | None:
    """The width ``COLUMNS`` asks for when the output is a file or pipe (None: full)."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        return None
    return columns if columns > 0 else None


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
        print(f"backbeat-edge {ConfigError(problems.items, 'monitor')}", file=sys.stderr)
        return 2
    topics = Topics(prefix, cluster)
    view = FleetView(topics, keyring=keyring)
    link = MqttLink(
        broker,
        tool_client_id("monitor", cluster),  # unguessable: nobody can evict it by its id
        subscriptions=(topics.all_status, topics.all_availability),
    )
    started = time.monotonic()
    end = None if duration_s is None else started + duration_s
    give_up = None if connect_timeout_s is None else started + connect_timeout_s
    reached = False
    next_draw = 0.0
    pipe_width = _columns_asked()  # read once: a pipe's width does not change

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
                    refused = view.rows[claim.agent_id].refused
                    if refused:  # claims of this agent not taken, by reason, so far
                        line["refused"] = dict(sorted(refused.items()))
                    out.write(json.dumps(line, separators=(",", ":")) + "\n")
                    out.flush()
            elif item is not None and item.kind == "connected":
                reached = True
                using = f" (using {link.current_broker})" if len(broker.brokers()) > 1 else ""
                say(f"connected to {broker_url}{using}")
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
                if out.isatty():
                    size = shutil.get_terminal_size()
                    screen = view.render(size.columns, size.lines)
                    out.write("\x1b[H\x1b[2J" + screen)
                else:
                    out.write("\n" + view.render(pipe_width))
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
