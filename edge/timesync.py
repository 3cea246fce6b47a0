"""The agent's side of the time exchange: requests out, responses in, the reference chosen.

:class:`TimeSync` publishes the requests :class:`edge.timefilter.TimeExchange` schedules on
``{prefix}/{cluster}/time/req/{agent_id}`` (QoS 0; the monotonic send time ``t1`` is read
right before the publish, which paho writes to the socket on the calling thread), takes
the responses from ``{prefix}/{cluster}/time/resp/{agent_id}`` with the arrival time the
link stamped on its network thread (``t4``), and checks them: a response that does not
decode is counted ``malformed``; with beat keys configured (``edge.trust``) a bad
signature is refused (``bad_signature``), and so is an unsigned response while signed
beats are required (``unsigned``).

*The reference.* Until a responder has answered, the follower gets the local wall clock
as before (without a responder nothing changes). Once one has, while the exchange is
locked, the follower gets the local wall clock if it reads within the exchange's bound
of the pulse's clock (it is not proven wrong, and on the pulse's host or under PTP it is
better), else the pulse's wall clock as the exchange maps it (:meth:`TimeSync.wall_for`);
while the exchange is not locked, no wall reading (the fixed delay learnt stays; a local
wall clock hours off is not mixed in). Those readings are checked by the exchange
(:attr:`TimeSync.wall_verified`), so the follower believes each at once instead of
waiting for frames that agree (:mod:`edge.sync.wall`). :meth:`TimeSync.time_ref` names
what the fixed delay comes from: ``exchange``, ``wall`` (the local wall clock, trusted)
or ``envelope`` (neither: arrival times and ``sync.path_delay_s`` alone).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable

from edge.errors import FrameError
from edge.inbox import Inbound
from edge.sync import BeatFollower
from edge.timefilter import ExchangeConfig, TimeExchange
from edge.timewire import decode_response, encode_request, response_verdict
from edge.topics import Topics
from edge.trust import BAD_SIGNATURE, UNSIGNED, BeatTrust

log = logging.getLogger(__name__)

#: ``metadata.time_ref`` values.
EXCHANGE, WALL, ENVELOPE = "exchange", "wall", "envelope"


class TimeSync:
    """Runs the exchange over the link for one agent (on the runner's thread only)."""

    def __init__(
        self,
        prefix: str,
        cluster: str,
        agent_id: str,
        publish: Callable[[str, bytes], object],
        connected: Callable[[], bool],
        monotonic: Callable[[], float],
        trust: BeatTrust | None = None,
        config: ExchangeConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        topics = Topics(prefix, cluster)
        self.request_topic = topics.time_request(agent_id)
        self.response_topic = topics.time_response(agent_id)
        self._publish = publish
        self._connected = connected
        self._monotonic = monotonic
        self.trust = trust
        # Random ids (see TimeExchange): nobody can ask for one ahead, and after a restart a
        # late answer to the old process's request does not match a new one.
        draw = rng or random.SystemRandom()
        self.exchange = TimeExchange(config, ids=lambda: draw.getrandbits(64))
        self.refused: dict[str, int] = {}
        self._logged: set[str] = set()
        #: Whether the local wall clock agrees with the exchange (then it is used).
        self.local_agrees = True

    # ------------------------------------------------------------------ the runner's calls

    def next_at(self) -> float:
        """When :meth:`poll` next has something to do; infinity while the link is down
        (it sends nothing then, so a due time would only make the loop poll)."""
        return self.exchange.next_at() if self._connected() else math.inf

    def poll(self, now: float) -> None:
        """Send the request due now, if one is (and the link is up)."""
        if not self._connected():
            return
        request_id = self.exchange.poll(now)
        if request_id is None:
            return
        payload = encode_request(request_id)
        t1 = self._monotonic()
        self._publish(self.request_topic, payload)
        self.exchange.sent_at(request_id, t1)

    def handles(self, topic: str) -> bool:
        return topic == self.response_topic

    def receive(self, item: Inbound) -> str:
        """Take a response; returns what became of it (counted when refused)."""
        try:
            response = decode_response(item.payload)
        except FrameError as exc:
            return self._refuse("malformed", f"dropped a malformed time response: {exc}")
        if self.trust is not None:
            verdict = response_verdict(response, self.trust.verifier)
            if verdict == "forged":
                return self._refuse(BAD_SIGNATURE, "refused a time response: bad signature")
            if verdict == "unsigned" and self.trust.require:
                return self._refuse(UNSIGNED, "refused an unsigned time response")
        outcome = self.exchange.response(response, item.arrived_at)
        if outcome == "step":
            log.warning("the time responder's clock stepped; the exchange follows it")
        return outcome

    def wall_for(self, arrived_at: float, local_wall: float) -> float | None:
        """The wall reading to hand the follower with a frame that arrived at
        ``arrived_at`` (see the module's theory)."""
        if not self.exchange.answered:
            return local_wall
        return self._reading(arrived_at, local_wall)

    @property
    def wall_verified(self) -> bool:
        """Whether :meth:`wall_for` readings are the exchange's mapping of the pulse's clock
        (a responder has answered and the local wall clock disagrees with it): then each is
        within the exchange's bound. A local wall clock that agrees is learnt as any
        trusted wall clock is, by the vote of several frames."""
        return self.exchange.answered and not self.local_agrees

    def hlc_wall(self, now: float, local_wall: float) -> float:
        """The wall time the claims' HLC (and its bound on received stamps) reads at local
        monotonic ``now``: the same choice as :meth:`wall_for` (a Pi without an RTC boots
        hours behind, and would refuse every frame as ``hlc_ahead``), ``local_wall`` while
        the exchange is not locked."""
        if not self.exchange.answered:
            return local_wall
        reading = self._reading(now, local_wall)
        return local_wall if reading is None else reading

    def _reading(self, t: float, local_wall: float) -> float | None:
        """The wall reading at local monotonic ``t`` once a responder has answered: None
        while the exchange is not locked, else ``local_wall`` while it agrees with the
        exchange, else the pulse's clock as the exchange maps it."""
        exchange = self.exchange
        if not exchange.locked_at(t):
            return None
        mapped = exchange.pulse_wall_at(t)
        # The pulse's clock is within the bound of the mapping: a local wall clock inside
        # it is not proven wrong, and may be better (the same host, PTP); once outside it
        # is not used again until well inside (half the bound), so it does not flap.
        off = abs(local_wall - mapped)
        bound = exchange.bound_at(t)
        self.local_agrees = off <= (bound if self.local_agrees else bound / 2.0)
        return local_wall if self.local_agrees else mapped

    def time_ref(self, follower: BeatFollower) -> str:
        if not follower.wall_clock_trusted:
            return ENVELOPE
        if self.exchange.answered and not self.local_agrees:
            return EXCHANGE
        return WALL

    def error_ms(self, now: float) -> float | None:
        """The exchange's bound on the pulse wall clock now (ms); None without a model."""
        bound = self.exchange.bound_at(now)
        return bound * 1000.0 if bound != float("inf") else None

    @property
    def rejected(self) -> dict[str, int]:
        """Every response or request not used, by reason."""
        out = self.exchange.rejected
        for reason, count in self.refused.items():
            out[reason] = out.get(reason, 0) + count
        return out

    def _refuse(self, reason: str, message: str) -> str:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        if reason not in self._logged:  # once per reason; the count is in the claims
            self._logged.add(reason)
            log.warning("%s (counted in metadata.time_rejected)", message)
        return reason
