"""The MQTT link: paho-mqtt wrapped behind an interface the runner owns.

Theory of operation
-------------------
The link owns one network thread. That thread connects, runs paho's ``loop()`` and, when
the connection drops, reconnects with exponential backoff and *full jitter* (a random wait
between 0 and ``min(cap, base * 2**attempt)``): paho's own backoff has no jitter, so a fleet
would reconnect in lock-step after a broker restart. paho's callbacks run on that thread
and only hand over, on one :class:`LinkInbox` with two lanes: ``on_message`` stamps the
local monotonic (and wall) time of arrival and offers the message to the bounded frame lane,
counting what it must drop (``dropped_inbound``); ``on_publish`` hands over the
acknowledgement of a QoS 1 publish and connect and disconnect are handed over as events, on
the control lane, which is never full and is read first: a flood of frames must not cost an
acknowledgement (a lost one would hold a publish slot) or a connection event. An
acknowledgement does not wake the loop (a wake-up costs more than the ack): it is taken at
the next one. The control
lane stays small by itself (at most one ack per publish in flight, one event per connect).
Nothing is parsed or decided on paho's thread, so the runner's core needs no locks.

**Order after a reconnect.** paho calls ``on_connect`` *before* it re-sends the QoS 1
messages left in flight by the dropped connection; a publish made from another thread in
between goes out ahead of them (a claim resent after newer ones: seq 49 after 64). So the
link says it is connected (``connected``, the ``connected`` event) only once the ``loop()``
call that handled the CONNACK has returned, when paho's re-sends are queued on the socket.

On every connect the link (re)subscribes and publishes a retained ``online`` on the
availability topic; the retained ``offline`` is the last will, delayed under MQTT 5 so a
fast reboot does not leave a stale ``offline``. QoS 1 messages in flight when the
connection drops are re-sent by paho after the reconnect (with the DUP flag).

**Several brokers.** ``broker.url`` may name a list (``BrokerConfig.brokers()``). The link
tries them in order: one that cannot be reached (refused, no CONNACK, TLS failure) is
skipped at once for the next, logged and counted (``unreachable``); when every one of a
round has failed it says so and waits the jittered backoff before the next round. When the
broker it was connected to goes away it moves on to the *next* one after a full-jitter wait
(``reconnect_min_s`` for the first try), so a fleet whose node died spreads its CONNECTs over
that window instead of landing on the next node in one burst. paho's one client is simply
connected to the other host: ``connect()`` keeps its QoS 1 messages in flight and re-sends
them after the new CONNACK (the new broker has no session, so it is a fresh delivery);
on_connect subscribes again and publishes the retained ``online`` there, and the will goes
with every CONNECT. ``current_broker`` (``host:port``) names the one in use.

TCP_NODELAY is set on the socket as soon as it opens: paho does not, and without it
Nagle's algorithm holds small publishes back for tens of milliseconds.

**A publish wakes nothing it need not.** paho writes a byte to a socket pair at every
publish, to wake its ``loop()`` out of ``select``. Here the publishing thread writes the
packet itself (paho does when no ``loop_start`` thread is registered), so that wake-up finds
nothing to do: three a second at 120 BPM, each a GIL hand-over in the middle of the
review's work. :class:`QuietWake` stands in for paho's end of the pair and keeps it quiet
during :meth:`MqttLink.publish`, which wakes the loop only when the packet is still queued
after the call (the socket was full, or paho's thread was in a callback and left it to its
next turn).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.config import BrokerConfig, FileRefused
from edge.errors import LinkError
from edge.files import read_regular
from edge.inbox import Inbound, LinkInbox

log = logging.getLogger(__name__)

#: The MQTT 5 DISCONNECT reason a broker gives a client whose id another client connected
#: with (mosquitto: "already connected, closing old connection").
SESSION_TAKEN_OVER = 0x8E

#: Linux only; elsewhere the broker side must set TCP_NODELAY (see _quickack).
_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)

#: A broker that takes the TCP connection but sends no CONNACK within this long is given
#: up on (logged, then retried with backoff) instead of being waited for in silence.
CONNACK_TIMEOUT_S = 10.0


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**attempt)]."""
    ceiling = min(cap, base * (2 ** min(attempt, 30)))
    return rng.uniform(0.0, ceiling)


class QuietWake:
    """paho's write end of its wake-up socket pair, quiet while ``quiet`` is set.

    Installed only by the link's network thread, the one that makes (and closes) the pair,
    so no other thread can put a stale one back. ``wakes`` counts what reached the loop."""

    __slots__ = ("quiet", "sock", "wakes")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.quiet = False
        self.wakes = 0

    def send(self, data: bytes) -> int:
        if self.quiet:
            return len(data)
        self.wakes += 1
        return self.sock.send(data)

    def wake(self) -> None:
        """Wake the loop (a packet is still queued); a pair closed by a reconnect meanwhile
        is fine, as that connection's packets are re-sent after the next CONNACK."""
        with contextlib.suppress(OSError):
            self.send(b"0")

    def close(self) -> None:
        self.sock.close()


def read_password(path: Path | None) -> str | None:
    """Read the broker password from a file (a systemd credential), stripping the newline.

    Under systemd (``$CREDENTIALS_DIRECTORY`` set) the credential named like the file is
    tried first, whether the configured path is relative or absolute: ``LoadCredential=``
    copies the root-only file there, and the original beside the config usually *exists*
    but is unreadable to the service's user. Only then is the path itself read. Raises
    LinkError naming the file if neither can be read.
    """
    if path is None:
        return None
    candidates = [path]
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds:
        # config.py has already made a relative name absolute (beside the config file),
        # so the credential is found by the file's name.
        candidates.insert(0, Path(creds) / path.name)
    for candidate in candidates:
        try:
            # Regular files only, never blocking: a FIFO here must not hang the link.
            text = read_regular(candidate).decode("utf-8")
        except FileRefused as exc:
            if exc.problem == "does not exist":
                continue
            raise LinkError(f"broker.password_file {exc}") from exc
        except UnicodeDecodeError as exc:
            raise LinkError(f"broker.password_file {str(candidate)!r} is not UTF-8") from exc
        # One trailing newline (echo pw > file) is not part of the password.
        if text.endswith("\r\n"):
            return text[:-2]
        return text[:-1] if text.endswith("\n") else text
    raise LinkError(f"broker.password_file {str(path)!r} does not exist")


class MqttLink:
    """A paho client with our reconnect policy, bounded hand-over and availability.

    ``subscriptions`` are (re)subscribed on every connect. ``availability_topic`` gets a
    retained ``online`` on connect and is the retained ``offline`` last will. ``on_wake`` is
    called (on the network thread) after anything is queued, so the loop can stop waiting.
    Messages on ``quiet_topics`` do not wake the loop: they are taken at its next wake-up
    (their arrival is stamped in the callback, so the wait loses them nothing).
    """

    def __init__(
        self,
        broker: BrokerConfig,
        client_id: str,
        subscriptions: Sequence[str] = (),
        availability_topic: str | None = None,
        on_wake: Callable[[], None] | None = None,
        rng: random.Random | None = None,
        quiet_topics: Sequence[str] = (),
        connack_timeout_s: float = CONNACK_TIMEOUT_S,
    ) -> None:
        self.broker = broker
        self.client_id = client_id
        self.subscriptions = tuple(subscriptions)
        self.availability_topic = availability_topic
        self.inbox = LinkInbox(broker.inbox_size)
        self._on_wake = on_wake
        self._quiet = frozenset(quiet_topics)
        self._rng = rng or random.Random()
        self.connack_timeout_s = connack_timeout_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connected = threading.Event()
        # Set by on_connect, turned into ``connected`` after that loop() returns (see the
        # theory: paho re-sends what was in flight only after on_connect).
        self._session_up = False
        #: The broker refused this attempt's CONNECT (its reason is in last_error).
        self._refused = False
        self.mqtt5 = broker.protocol == "5"
        # Counters, written on the network thread, read anywhere (ints: atomic enough).
        #: Frames dropped because the frame lane was full (acks and events never are).
        self.dropped_inbound = 0
        self.connects = 0
        self.last_error: str | None = None
        self.last_connected_at: float | None = None
        #: Connection attempts that failed (a broker unreachable, refusing or silent).
        self.unreachable = 0
        #: Connections the broker closed because another client connected with our id
        #: (MQTT 5 reason 0x8E, "session taken over"): not the broker going away.
        self.taken_over = 0
        self._taken_over = False  # the current connection's, set on the network thread
        #: Which of ``broker.brokers()`` is tried or in use now (the network thread's).
        self._index = 0
        #: ``host:port`` of the broker last connected to (None before the first).
        self.current_broker: str | None = None
        # The MQTT 5 properties last published per topic, so stop()'s final messages carry
        # the same content type and expiry as the ones before them.
        self._props_by_topic: dict[str, Properties] = {}
        self._props_made: dict[tuple[str | None, int | None], Properties] = {}
        self._client = self._make_client()

    # ------------------------------------------------------------------ set-up

    def _make_client(self) -> mqtt.Client:
        protocol = mqtt.MQTTv5 if self.mqtt5 else mqtt.MQTTv311
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=protocol,
            clean_session=None if self.mqtt5 else False,
        )
        client.max_inflight_messages_set(64)
        client.connect_timeout = 3.0
        if self.broker.username is not None:
            client.username_pw_set(self.broker.username, read_password(self.broker.password_file))
        if self.broker.tls:
            try:
                # Read like every operator file; given, it is the only CA trusted.
                ca_file = self.broker.ca_file
                cadata = None if ca_file is None else read_regular(ca_file).decode("latin-1")
                context = ssl.create_default_context(cadata=cadata)
                if self.broker.cert_file and self.broker.key_file:
                    context.load_cert_chain(str(self.broker.cert_file), str(self.broker.key_file))
            except (OSError, ssl.SSLError) as exc:
                raise LinkError(f"broker TLS set-up failed: {exc}") from exc
            client.tls_set_context(context)
        if self.availability_topic is not None:
            props: Properties | None = None
            if self.mqtt5:
                props = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
                props.WillDelayInterval = self.broker.will_delay_s
            client.will_set(
                self.availability_topic, b"offline", qos=1, retain=True, properties=props
            )
        client.on_socket_open = self._on_socket_open
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    # ------------------------------------------------------------------ callbacks (network thread)

    def _hand_over(self, item: Inbound) -> None:
        if item.kind == "message":
            wake = item.topic not in self._quiet
            if not self.inbox.offer(item, wake=wake):
                self.dropped_inbound += 1
                return
            if not wake:
                return
        elif item.kind == "ack":
            # Nothing waits on an ack: it is taken at the loop's next wake-up (a beat later
            # at most; sooner while claims wait for the publish window: Runner.next_deadline).
            self.inbox.put_control(item, wake=False)
            return
        else:
            self.inbox.put_control(item)
        if self._on_wake is not None:
            self._on_wake()

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        try:
            raw = sock if isinstance(sock, socket.socket) else getattr(sock, "_sock", sock)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass  # not a TCP socket (e.g. a unix socket in a test): nothing to tune

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason}"
            if "protocol version" in str(reason).lower() and self.broker.protocol == "5":
                # NATS's MQTT gateway (and old brokers) speak only 3.1.1.
                self.last_error += ' (a NATS gateway? it speaks MQTT 3.1.1: protocol = "3.1.1")'
            self._refused = True
            return
        self.connects += 1
        self.last_error = None
        for topic in self.subscriptions:
            client.subscribe(topic, qos=0)
        if self.availability_topic is not None:
            client.publish(self.availability_topic, b"online", qos=1, retain=True)
        self._session_up = True  # ``connected`` once paho has re-sent what was in flight

    def _announce_connected(self) -> None:
        """After the loop() that handled the CONNACK: paho's re-sends are queued now."""
        self._session_up = False
        host, port = self.broker.brokers()[self._index]
        moved = self.current_broker not in (None, f"{host}:{port}")
        self.current_broker = f"{host}:{port}"
        if moved:
            log.warning("moved to broker %s:%d", host, port)
        self._connected.set()
        now = time.monotonic()
        self.last_connected_at = now
        self._hand_over(Inbound("connected", now, time.time()))

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        was = self._connected.is_set()
        self._session_up = False
        self._connected.clear()
        if getattr(reason, "value", None) == SESSION_TAKEN_OVER:
            self._taken_over = True  # said by _run, once this connection's loop is done
        if was:
            self._hand_over(
                Inbound("disconnected", time.monotonic(), time.time(), reason=str(reason))
            )

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        arrived = time.monotonic()
        self._hand_over(
            Inbound("message", arrived, time.time(), message.topic, bytes(message.payload))
        )

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        self._hand_over(Inbound("ack", time.monotonic(), mid=mid))

    # ------------------------------------------------------------------ the network thread

    def _quiet_wake(self) -> None:
        """Put a QuietWake in place of the wake-up socket paho made (at connect, or in
        ``loop()``), on this network thread only."""
        made = getattr(self._client, "_sockpairW", None)
        if isinstance(made, socket.socket):
            self._client._sockpairW = QuietWake(made)  # type: ignore[assignment]

    def _quickack(self) -> None:
        """Re-arm TCP_QUICKACK after each read (Linux clears it again on its own).

        Our QoS 1 claims make the broker send PUBACKs; if we delay the TCP ACK of one (the
        kernel's delayed-ACK timer, up to 40 ms), a broker without TCP_NODELAY (Mosquitto's
        default) holds the next beat frame back behind it (Nagle's algorithm): frames then
        arrive 20-40 ms late, in steps, which no filter can tell from a moved timeline.
        """
        sock = self._client.socket()
        if sock is None or _TCP_QUICKACK is None:
            return
        with contextlib.suppress(OSError, AttributeError, ValueError):
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)  # type: ignore[attr-defined]

    def _connect_once(self, host: str, port: int) -> bool:
        try:
            if self.mqtt5:
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = 300
                self._client.connect(
                    host, port, self.broker.keepalive_s, clean_start=False, properties=props
                )
            else:  # MQTT 3.1.1: the persistent session comes from clean_session=False
                self._client.connect(host, port, self.broker.keepalive_s)
            return True
        except ssl.SSLCertVerificationError as exc:
            self.last_error = f"TLS: the broker's certificate did not verify: {exc.verify_message}"
        except ssl.SSLError as exc:
            self.last_error = f"TLS error talking to {host}:{port}: {exc}"
        except OSError as exc:
            self.last_error = f"cannot reach broker {host}:{port}: {exc.strerror or exc}"
        except Exception as exc:  # a paho surprise must not kill the link for good
            log.exception("unexpected error connecting to the broker")
            self.last_error = f"unexpected error connecting: {type(exc).__name__}: {exc}"
        return False

    def _pump(self, host: str, port: int) -> bool:
        """Run one connection to ``host:port`` until it drops or is given up on; whether
        it was ever up (CONNACKed)."""
        was_up = False
        connecting_since: float | None = time.monotonic()  # None once CONNACKed
        self._refused = False  # on_connect sets it when the broker refuses us
        while not self._stop.is_set():
            try:
                self._quiet_wake()
                rc = self._client.loop(timeout=0.5)
                self._quickack()
                if self._session_up and rc == mqtt.MQTT_ERR_SUCCESS:
                    self._announce_connected()
            except Exception as exc:  # keep the link alive whatever paho raises
                log.exception("unexpected error in the MQTT loop")
                self.last_error = f"MQTT loop error: {type(exc).__name__}: {exc}"
                break
            if rc != mqtt.MQTT_ERR_SUCCESS:
                if not was_up and not self._refused:
                    # Not a stale reason from an earlier attempt: say what happened here.
                    self.last_error = (
                        f"broker {host}:{port} closed the connection before its CONNACK"
                    )
                break
            if self._connected.is_set():
                was_up = True
                connecting_since = None
            elif (
                connecting_since is not None
                and time.monotonic() - connecting_since > self.connack_timeout_s
            ):
                self.last_error = (
                    f"broker {host}:{port} took the connection"
                    f" but sent no CONNACK in {self.connack_timeout_s:g} s"
                )
                break
        return was_up

    def _run(self) -> None:
        brokers = self.broker.brokers()
        attempt = 0  # the backoff's exponent; 0 again once connected
        failed = 0  # failed attempts since the last connection
        reported: str | None = None
        while not self._stop.is_set():
            host, port = brokers[self._index]
            self._taken_over = False
            was_up = self._connect_once(host, port) and self._pump(host, port)
            if self._taken_over:
                self.taken_over += 1
                log.warning(
                    "broker %s:%d closed the connection: session taken over (another client"
                    " connected with our client id %r; %d times so far)",
                    host,
                    port,
                    self.client_id,
                    self.taken_over,
                )
            if self._stop.is_set():
                break
            self._connected.clear()
            if was_up:
                attempt, failed, reported = 0, 0, None
            else:
                self.unreachable += 1
                failed += 1
            if len(brokers) > 1:
                self._index = (self._index + 1) % len(brokers)
                if not was_up and failed % len(brokers):
                    # Others of this round are untried: skip to the next one at once.
                    if failed <= len(brokers):  # said once per outage, not every round
                        log.warning(
                            "%s; skipping to the next broker, %s:%d",
                            self.last_error or f"broker {host}:{port} failed",
                            *brokers[self._index],
                        )
                    continue
                if not was_up:
                    message = f"all {len(brokers)} brokers unreachable (last: {self.last_error})"
                    if message != reported:
                        log.warning("%s; retrying with backoff", message)
                        reported = message
            elif self.last_error and self.last_error != reported:
                log.warning("%s; retrying with backoff", self.last_error)
                reported = self.last_error
            delay = backoff_delay(
                attempt, self.broker.reconnect_min_s, self.broker.reconnect_max_s, self._rng
            )
            attempt += 1
            self._stop.wait(delay)
        with contextlib.suppress(Exception):  # best effort on the way out
            self._client.disconnect()

    # ------------------------------------------------------------------ the loop's side

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mqtt-link", daemon=True)
        self._thread.start()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        content_type: str | None = None,
        expiry_s: int | None = None,
    ) -> int:
        """Queue a publish; returns its message id (acked later as an ``ack`` Inbound)."""
        props: Properties | None = None
        if self.mqtt5 and (content_type or expiry_s):
            # Made once per kind: building paho's Properties costs ~0.1 ms a claim.
            key = (content_type, expiry_s)
            props = self._props_made.get(key)
            if props is None:
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                if content_type:
                    props.ContentType = content_type
                if expiry_s:
                    props.MessageExpiryInterval = expiry_s
                self._props_made[key] = props
            self._props_by_topic[topic] = props
        wake = getattr(self._client, "_sockpairW", None)
        if not isinstance(wake, QuietWake):
            info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
            return int(info.mid)
        wake.quiet = True
        try:
            info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        finally:
            wake.quiet = False
        if self._client.want_write():  # not all written here: the loop's turn
            wake.wake()
        return int(info.mid)

    def stop(
        self, final: Sequence[tuple[str, bytes, bool]] = (), timeout: float = 2.0
    ) -> list[tuple[str, bytes, bool]]:
        """Publish ``final`` (topic, payload, retain) messages, wait for them, and close.

        A final message goes out with the MQTT 5 properties of the last :meth:`publish` to
        its topic (the shutdown claim is marked like every claim before it). Returns the
        messages the broker did not acknowledge within ``timeout`` (the link was down, the
        connection dropped while sending, or the broker stalled), so the caller can keep
        them; never raises for a failed publish.
        """
        undelivered: list[tuple[str, bytes, bool]] = list(final)
        was_connected = self.connected
        if was_connected:
            sent = [
                (
                    message,
                    self._client.publish(
                        message[0],
                        message[1],
                        qos=1,
                        retain=message[2],
                        properties=self._props_by_topic.get(message[0]),
                    ),
                )
                for message in final
            ]
            deadline = time.monotonic() + timeout
            undelivered = []
            for message, info in sent:
                if not self._wait_published(info, deadline):
                    undelivered.append(message)
        why = "not acknowledged by the broker" if was_connected else "not sent: no broker connected"
        for topic, _, _ in undelivered:
            log.warning("final message to %s %s", topic, why)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        return undelivered

    @staticmethod
    def _wait_published(info: mqtt.MQTTMessageInfo, deadline: float) -> bool:
        """Whether the broker acknowledged ``info`` by ``deadline``. paho raises from
        ``is_published`` when the publish failed (the connection dropped meanwhile)."""
        try:
            while not info.is_published():
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.01)
        except (RuntimeError, ValueError):
            return False
        return True
