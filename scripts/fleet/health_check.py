#!/usr/bin/env python3
"""Fleet health gate: is this device's agent online and locked to the cluster beat?

Run on the controller with the project's venv python (the rollout playbook does, through
``delegate_to: localhost``)::

    .venv/bin/python scripts/fleet/health_check.py --broker mqtts://broker:8883 \\
        --cluster stage-left --agent-id stage-left:pi-relay-01 --expect-version 0.2.0

It connects to the broker over MQTT 5 and watches two topics of the device:

* ``{prefix}/{cluster}/agents/{agent_id}/availability``: the retained ``online`` /
  ``offline`` the agent keeps there (``offline`` is its last will);
* ``{prefix}/{cluster}/status/{agent_id}``: its StatusClaims (CBOR or JSON), of which it
  needs ``--claims`` fresh ones (retained ones are old news) whose ``metadata.sync`` says
  ``locked`` (either the string or ``{"state": "locked", ...}``), and, with
  ``--expect-version``, whose ``metadata.agent_version`` is that version.

``--broker`` may list several brokers, comma-separated (``mqtts://n1:8883,mqtts://n2:8883``,
as the agent's ``broker.url`` list): they are tried in order and the first that answers is
watched; each one that cannot be reached is said on stderr; unreachable means none could be.

The device gets ``--beats`` beats at ``--tempo-bpm`` (or ``--timeout`` seconds) to show it.
Exit status: 0 healthy, 1 unhealthy, 2 bad arguments, 3 broker unreachable or refusing
us. The last line printed says why, e.g. ``unhealthy: stage-left:pi-relay-01 sent 12
claims, none locked (last sync state 'free_running')``.
"""

from __future__ import annotations

import argparse
import queue
import ssl
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.errors import FrameError
from edge.messages import StatusClaim, decode_status_claim

HEALTHY, UNHEALTHY, USAGE, UNREACHABLE = 0, 1, 2, 3


def sync_state(claim: StatusClaim) -> str | None:
    """The claim's sync state: ``metadata.sync`` as a string or as ``{"state": ...}``."""
    if claim.metadata is None:
        return None
    sync = claim.metadata.get("sync")
    if isinstance(sync, str):
        return sync
    if isinstance(sync, Mapping) and isinstance(sync.get("state"), str):
        state: str = sync["state"]
        return state
    return None


@dataclass
class Watch:
    """What has been seen of one agent so far, and the verdict on it (no I/O)."""

    agent_id: str
    claims_needed: int
    expect_version: str | None = None
    availability: str | None = None
    claims: int = 0
    locked: int = 0
    last_state: str | None = None
    last_beat: int | None = None
    wrong_versions: set[str] = field(default_factory=set)
    malformed: int = 0
    last_problem: str | None = None

    def on_availability(self, payload: bytes) -> None:
        self.availability = payload.decode("utf-8", errors="replace").strip()

    def on_claim(self, payload: bytes) -> None:
        try:
            claim = decode_status_claim(payload)
        except FrameError as exc:
            self.malformed += 1
            self.last_problem = str(exc)
            return
        if claim.agent_id != self.agent_id:
            self.malformed += 1
            self.last_problem = f"claim names agent_id {claim.agent_id!r}"
            return
        self.claims += 1
        self.last_beat = claim.beat_index
        self.last_state = sync_state(claim)
        version = None if claim.metadata is None else claim.metadata.get("agent_version")
        if self.expect_version is not None and version != self.expect_version:
            self.wrong_versions.add(str(version))
            return
        if self.last_state == "locked":
            self.locked += 1

    def healthy(self) -> bool:
        return self.availability == "online" and self.locked >= self.claims_needed

    def verdict(self, waited_s: float) -> tuple[int, str]:
        """(exit status, one-line reason)."""
        who = self.agent_id
        if self.healthy():
            version = f", version {self.expect_version}" if self.expect_version else ""
            return HEALTHY, (
                f"healthy: {who} online, {self.locked} locked claims "
                f"(last beat {self.last_beat}{version})"
            )
        if self.availability is None:
            reason = "never announced availability (agent not running or not connected?)"
        elif self.availability != "online":
            reason = f"is {self.availability!r}, not 'online'"
        elif self.claims == 0:
            reason = f"sent no valid status claims in {waited_s:.1f} s"
            if self.malformed:
                reason += f" ({self.malformed} malformed: {self.last_problem})"
        elif self.wrong_versions and self.locked == 0:
            reason = (
                f"runs version {', '.join(sorted(self.wrong_versions))}, expected "
                f"{self.expect_version}"
            )
        elif self.locked == 0:
            reason = (
                f"sent {self.claims} claims in {waited_s:.1f} s, none locked "
                f"(last sync state {self.last_state!r})"
            )
        else:
            reason = (
                f"only {self.locked} of {self.claims_needed} claims locked in "
                f"{waited_s:.1f} s (last sync state {self.last_state!r})"
            )
        return UNHEALTHY, f"unhealthy: {who} {reason}"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--broker",
        required=True,
        help="mqtt://host:port or mqtts://host:port, or several, comma-separated",
    )
    p.add_argument("--cluster", required=True)
    p.add_argument("--agent-id", required=True)
    p.add_argument("--topic-prefix", default="backbeat")
    p.add_argument("--username")
    p.add_argument("--password-file", type=Path, help="file holding the password (empty: none)")
    p.add_argument("--ca-file", type=Path, help="CA bundle for mqtts (default: the system's)")
    p.add_argument("--beats", type=int, default=16, help="beats to wait (default 16)")
    p.add_argument("--tempo-bpm", type=float, default=120.0, help="the cluster tempo")
    p.add_argument("--timeout", type=float, help="seconds to wait (overrides --beats)")
    p.add_argument("--claims", type=int, default=3, help="locked claims needed (default 3)")
    p.add_argument("--expect-version", help="metadata.agent_version the claims must show")
    p.add_argument("--connect-timeout", type=float, default=10.0)
    args = p.parse_args(argv)
    if args.beats < 1 or args.claims < 1 or not 0.1 <= args.tempo_bpm <= 1000:
        p.error("--beats and --claims must be at least 1, --tempo-bpm within 0.1..1000")
    if args.timeout is not None and args.timeout <= 0:
        p.error("--timeout must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    urls = [urlsplit(part.strip()) for part in args.broker.split(",")]
    for i, url in enumerate(urls):
        try:
            good_port = url.port is None or url.port > 0
        except ValueError:
            good_port = False
        if url.scheme not in ("mqtt", "mqtts") or not url.hostname or not good_port:
            which = f" (entry {i})" if len(urls) > 1 else ""
            print(
                f"error: --broker must be mqtt://host:port or mqtts://host:port{which}, "
                f"got {args.broker!r}",
                file=sys.stderr,
            )
            return USAGE
    if len({url.scheme for url in urls}) > 1:
        print(f"error: --broker mixes mqtt:// and mqtts://: {args.broker!r}", file=sys.stderr)
        return USAGE
    url = urls[0]
    base = f"{args.topic_prefix}/{args.cluster}"
    avail_topic = f"{base}/agents/{args.agent_id}/availability"
    status_topic = f"{base}/status/{args.agent_id}"
    window = args.timeout if args.timeout is not None else args.beats * 60.0 / args.tempo_bpm

    # paho's thread only hands over; the verdict is reached on this thread.
    connacks: queue.Queue[ReasonCode] = queue.Queue()
    inbox: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"backbeat-health-{uuid.uuid4().hex[:12]}",
        protocol=mqtt.MQTTv5,
    )

    def on_connect(
        c: mqtt.Client, userdata: object, flags: object, rc: ReasonCode, props: Properties | None
    ) -> None:
        if not rc.is_failure:
            c.subscribe([(avail_topic, 1), (status_topic, 1)])
        connacks.put(rc)

    def on_message(c: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        inbox.put((msg.topic, bytes(msg.payload), bool(msg.retain)))

    client.on_connect = on_connect
    client.on_message = on_message
    if args.username:
        password = None
        if args.password_file is not None:
            try:
                text = args.password_file.read_text()
                # As the agent reads it: one trailing newline is not part of the password.
                text = text.removesuffix("\n").removesuffix("\r")
                password = text or None
            except OSError as exc:
                print(f"error: cannot read --password-file: {exc}", file=sys.stderr)
                return USAGE
        client.username_pw_set(args.username, password)
    if url.scheme == "mqtts":
        client.tls_set(
            ca_certs=str(args.ca_file) if args.ca_file else None, cert_reqs=ssl.CERT_REQUIRED
        )
    failures = []
    for candidate in urls:
        port = candidate.port or (8883 if candidate.scheme == "mqtts" else 1883)
        try:
            client.connect(str(candidate.hostname), port, keepalive=15)
            break
        except (OSError, ValueError) as exc:
            failures.append(f"{candidate.geturl()}: {exc}")
            if len(urls) > 1:
                print(f"skipped {candidate.geturl()}: {exc}", file=sys.stderr)
    else:
        print(f"unreachable: cannot connect to {args.broker}: {'; '.join(failures)}")
        return UNREACHABLE
    client.loop_start()
    try:
        return watch(args, connacks, inbox, window, avail_topic, status_topic)
    finally:
        client.disconnect()
        client.loop_stop()


def watch(
    args: argparse.Namespace,
    connacks: queue.Queue[ReasonCode],
    inbox: queue.Queue[tuple[str, bytes, bool]],
    window: float,
    avail_topic: str,
    status_topic: str,
) -> int:
    """Read the inbox until the agent proves healthy or the window closes."""
    try:
        rc = connacks.get(timeout=args.connect_timeout)
    except queue.Empty:
        print(f"unreachable: no answer from {args.broker} in {args.connect_timeout:g} s")
        return UNREACHABLE
    if rc.is_failure:
        print(f"unreachable: {args.broker} refused the connection: {rc}")
        return UNREACHABLE
    seen = Watch(args.agent_id, args.claims, args.expect_version)
    start = time.monotonic()
    deadline = start + window
    while not seen.healthy():
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            topic, payload, retained = inbox.get(timeout=left)
        except queue.Empty:
            break
        if topic == avail_topic:
            seen.on_availability(payload)
        elif topic == status_topic and not retained:
            seen.on_claim(payload)
    code, reason = seen.verdict(time.monotonic() - start)
    print(reason)
    return code


if __name__ == "__main__":
    sys.exit(main())
