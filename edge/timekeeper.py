"""The responder side of the time exchange: the pulse's, and ``backbeat-edge timekeeper``.

:class:`Responder` answers each request on ``{prefix}/{cluster}/time/req/{agent_id}`` with
``t2`` (when the link's network thread received it: the wall time paho's ``on_message``
stamped) and ``t3`` (read right before the answer is published on
``{prefix}/{cluster}/time/resp/{agent_id}``, QoS 0), integer ns of this host's UTC wall
clock, which must be the one the pulse's ``deadline_at`` is written in. A signed answer
covers ``t3``, so ``t3`` is read before signing and moved on by the time signing took last
(the smallest of the last few), so it stays close to the real send time. A request that
does not decode is counted and logged at a bounded rate, never answered.

``backbeat-edge timekeeper`` (:func:`run_timekeeper`) is a small responder for the host of
a pulse other than ours (an upstream one): it only answers.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.errors import ConfigError, ConfigProblems, FrameError, LinkError
from edge.inbox import Inbound
from edge.loglimit import LogLimiter
from edge.timewire import decode_request, encode_response, make_response
from edge.tool_link import reach, tool_client_id
from edge.topics import Topics
from edge.trust import Signer

log = logging.getLogger(__name__)


class Responder:
    """Answers time requests; counts what it answered and what it refused."""

    def __init__(
        self,
        topics: Topics,
        publish: Callable[[str, bytes], object],
        signer: Signer | None = None,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._prefix = topics.time_request("")  # ".../time/req/"
        self._topics = topics
        self._publish = publish
        self._signer = signer
        self._wall_ns = wall_ns
        self._sign_ns: deque[int] = deque([0], maxlen=8)
        self.answered = 0
        self.refused: dict[str, int] = {}
        self._bad = LogLimiter(log, quiet_s=10.0)

    def handles(self, topic: str) -> bool:
        return topic.startswith(self._prefix)

    def handle(self, item: Inbound) -> bool:
        """Answer ``item`` (a message on a request topic); False if it was refused."""
        agent_id = item.topic[len(self._prefix) :]
        now = time.monotonic()
        if not agent_id or "/" in agent_id:
            return self._refuse("bad_topic", f"time request on {item.topic!r}: no agent id", now)
        try:
            request = decode_request(item.payload)
        except FrameError as exc:
            return self._refuse("malformed", f"time request from {agent_id!r}: {exc}", now)
        t2 = round(item.wall_at * 1e9)
        if self._signer is None:
            t3 = max(t2, self._wall_ns())
            payload = encode_response(make_response(request.id, t2, t3))
        else:
            before = self._wall_ns()
            t3 = max(t2, before + min(self._sign_ns))
            payload = encode_response(make_response(request.id, t2, t3, self._signer))
            self._sign_ns.append(max(0, self._wall_ns() - before))
        self._publish(self._topics.time_response(agent_id), payload)
        self.answered += 1
        return True

    def _refuse(self, reason: str, message: str, now: float) -> bool:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        self._bad.note(reason, f"{message} ({self.refused[reason]} refused so far)", now)
        return False


@dataclass(frozen=True, slots=True)
class TimekeeperOptions:
    broker_url: str
    cluster: str
    prefix: str = "backbeat"
    signing_key: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    connect_timeout_s: float = 5.0
    duration_s: float | None = None
    protocol: str = "5"  # "3.1.1" for NATS's MQTT gateway


def run_timekeeper(options: TimekeeperOptions, stop: threading.Event) -> int:
    """Answer time requests until ``stop`` is set; the exit code (2: bad options, 1: no
    broker)."""
    from edge.config import parse_broker
    from edge.mqtt_link import MqttLink

    problems = ConfigProblems("timekeeper")
    table: dict[str, object] = {"url": options.broker_url, "protocol": options.protocol}
    if options.username is not None:
        table["username"] = options.username
    if options.password_file is not None:
        table["password_file"] = str(options.password_file)
    broker = parse_broker(table, problems, Path.cwd(), where="--broker")
    if problems:
        print(f"backbeat-edge {ConfigError(problems.items, 'timekeeper')}", file=sys.stderr)
        return 2
    signer = None
    if options.signing_key is not None:
        from edge.signing import SigningKey

        try:
            signer = SigningKey.load(options.signing_key, where="--signing-key")
        except ConfigError as exc:
            print(f"backbeat-edge timekeeper: {exc}", file=sys.stderr)
            return 2
        log.info("signing time responses with key %s", signer.kid)
    topics = Topics(options.prefix, options.cluster)
    try:
        link = MqttLink(
            broker,
            tool_client_id("timekeeper", options.cluster),
            subscriptions=(topics.all_time_requests,),
        )
    except LinkError as exc:
        print(f"backbeat-edge timekeeper: {exc}", file=sys.stderr)
        return 2

    def publish(topic: str, payload: bytes) -> object:
        return link.publish(topic, payload, qos=0)

    responder = Responder(topics, publish, signer)
    if not reach(link, "timekeeper", options.broker_url, options.connect_timeout_s):
        return 1
    log.info("answering time requests on %s", topics.all_time_requests)
    end = None if options.duration_s is None else time.monotonic() + options.duration_s
    try:
        serve(link.inbox, responder, stop, end)
    finally:
        link.stop(timeout=1.0)
    refused = ", ".join(f"{n} {reason}" for reason, n in sorted(responder.refused.items()))
    log.info("answered %d time requests (refused: %s)", responder.answered, refused or "none")
    return 0


def serve(
    inbox: queue.Queue[Inbound],
    responder: Responder,
    stop: threading.Event,
    end: float | None = None,
    other: Callable[[Inbound], None] | None = None,
) -> None:
    """Hand each message of ``inbox`` to ``responder`` (or to ``other``, if it is on
    another topic) until ``stop`` is set or ``end`` (monotonic) passes."""
    while not stop.is_set() and (end is None or time.monotonic() < end):
        try:
            item = inbox.get(timeout=0.2)
        except queue.Empty:
            continue
        if item.kind != "message":
            continue
        if responder.handles(item.topic):
            responder.handle(item)
        elif other is not None:
            other(item)
