"""The claim publisher: claims from the runner to the broker, through the outbox.

A claim is encoded (and signed when ``[security] signing_key`` is set), then appended to
the outbox, or, without one, published straight to the link when it is up. The outbox's
publish window says how many go to the link at a time. A claim whose acknowledgement has
not come ``ACK_TIMEOUT_S`` after it was handed over (counting only connected time: over a
reconnect paho re-sends it itself) is given up on (``Outbox.lost``) and sent again, so a
lost acknowledgement never holds a window slot for ever. The link's control lane makes
that rare: acknowledgements are not shed with frames.
"""

from __future__ import annotations

import logging
import queue
from typing import Protocol

from edge.clock import Clock
from edge.config import Config
from edge.counters import Counters
from edge.inbox import Inbound
from edge.messages import StatusClaim, encode
from edge.outbox import Outbox
from edge.topics import Topics
from edge.trust import Signer, sign_message

log = logging.getLogger(__name__)

#: A claim not acknowledged this long (connected) after it was handed over is sent again.
ACK_TIMEOUT_S = 30.0


class Link(Protocol):
    """What the runner needs of the MQTT link (the real one is ``edge.mqtt_link``)."""

    @property
    def inbox(self) -> queue.Queue[Inbound]: ...

    @property
    def dropped_inbound(self) -> int:
        """Frames the link had to drop because the inbox was full (never acks or events)."""
        ...

    @property
    def connected(self) -> bool: ...

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        content_type: str | None = None,
        expiry_s: int | None = None,
    ) -> int: ...


class ClaimPublisher:
    """Encodes, signs and hands claims over; tracks each one in flight until its ack."""

    def __init__(
        self,
        config: Config,
        clock: Clock,
        topics: Topics,
        link: Link | None,
        outbox: Outbox | None,
        signer: Signer | None,
        counters: Counters,
    ) -> None:
        #: The running config (the runner swaps it in on a reload).
        self.config = config
        self.clock = clock
        self.topics = topics
        self.link = link
        self.outbox = outbox
        #: Signs every claim when [security] signing_key is set.
        self.signer = signer
        self.counters = counters
        self._outbox_degraded: str | None = None if outbox is None else outbox.degraded
        # The link's message id of each claim in flight -> when it was handed over (or the
        # link last connected): for the ack time-out.
        self._sent_at: dict[int, float] = {}
        self._link_was_down = False

    @property
    def topic(self) -> str:
        """Where this agent's claims go."""
        return self.topics.status(self.config.agent.id)

    def encode(self, claim: StatusClaim) -> bytes:
        if self.signer is not None:
            claim = sign_message(claim, self.signer)
        return encode(claim, self.config.status.format)

    def submit(self, claim: StatusClaim) -> None:
        """Encode ``claim`` and send it on its way (outbox, else the link if up)."""
        payload = self.encode(claim)
        self.counters.claims += 1
        if self.outbox is not None:
            self.outbox.append(self.topic, payload, self.clock.wall())
            if self.outbox.degraded != self._outbox_degraded:  # say it once, and the recovery
                if self.outbox.degraded:
                    log.warning("outbox: %s", self.outbox.degraded)
                else:
                    log.info("outbox: back on disk")
                self._outbox_degraded = self.outbox.degraded
            self.pump()
        elif self.link is not None and self.link.connected:
            self._publish(self.topic, payload)

    def _publish(self, topic: str, payload: bytes) -> int:
        assert self.link is not None
        content_type = (
            "application/cbor" if self.config.status.format == "cbor" else ("application/json")
        )
        return self.link.publish(
            topic, payload, qos=1, content_type=content_type, expiry_s=self.config.status.expiry_s
        )

    def pump(self) -> None:
        """Hand claims to the link in order, as many as the outbox's window lets through."""
        if self.outbox is None or self.link is None:
            return
        if not self.link.connected:
            self._link_was_down = True
            return
        if self._link_was_down:
            # Seen up again (perhaps before its ``connected`` event): paho re-sends what was
            # in flight, so each gets a full time-out from now, never a stale one.
            self._link_was_down = False
            self._sent_at = dict.fromkeys(self._sent_at, self.clock.monotonic())
        if self._sent_at:
            now = self.clock.monotonic()
            for mid in [m for m, at in self._sent_at.items() if now - at >= ACK_TIMEOUT_S]:
                del self._sent_at[mid]
                if self.outbox.resend(mid):
                    log.warning(
                        "claim (message %d) not acknowledged in %.0f s; sending it again",
                        mid,
                        ACK_TIMEOUT_S,
                    )
        for record in self.outbox.to_publish():
            mid = self._publish(record.topic, record.payload)
            self.outbox.published(record.seq, mid)
            self._sent_at[mid] = self.clock.monotonic()

    def window_full(self) -> bool:
        """Whether claims wait for the outbox's publish window (acks will let them out)."""
        if self.outbox is None or self.link is None or not self._sent_at:
            return False
        if not self.link.connected:  # nothing comes back while the link is down
            return False
        return bool(self.outbox.unsent(1)) and not self.outbox.to_publish()

    def acked(self, mid: int) -> None:
        """The broker acknowledged message ``mid`` (counted if it was a claim)."""
        self._sent_at.pop(mid, None)
        if self.outbox is not None and self.outbox.acked(mid):
            self.counters.claims_acked += 1

    def connected(self, now: float) -> None:
        """The link is up again: paho re-sends what was in flight, each gets a full
        time-out from now."""
        self._sent_at = dict.fromkeys(self._sent_at, now)

    def farewell(self, payload: bytes | None) -> list[tuple[str, bytes, bool]]:
        """What to send on the way out, as (topic, payload, retain): the final claim
        ``payload`` (kept in the outbox instead, for the next start to send first, when
        the link is down) and ``offline``."""
        final: list[tuple[str, bytes, bool]] = []
        if payload is not None:
            if self.link is not None and self.link.connected:
                final.append((self.topic, payload, False))
            elif self.outbox is not None:
                self.outbox.append(self.topic, payload, self.clock.wall())
        final.append((self.topics.availability(self.config.agent.id), b"offline", True))
        return final
