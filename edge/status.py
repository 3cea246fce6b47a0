"""Building the StatusClaim an agent reports for a beat.

Theory of operation
-------------------
At the review phase of each beat the runner hands a :class:`BeatReview` (plain numbers it
gathered: sync, lateness, misses, sheds, the guard verdict, machine readings, the outbox
backlog) to :meth:`StatusBuilder.build`. The builder decides whether this beat is reported
and, if so, returns a :class:`edge.messages.StatusClaim` that validates against the upstream
``backbeat.statusclaim.v1`` schema. It reads no clock of its own: the HLC it stamps claims
with is handed in, and its only state is the last sequence number and the last reported
condition.

When a beat is reported (:class:`StatusConfig`):

* ``mode = "every"``: the first review, then whenever at least ``every`` beats have passed
  since the last reported one (a gap in beat indexes, e.g. after a lost Pulse, never makes
  the agent skip more than it should). A beat index that goes *backwards* (the cluster
  restarted) is always reported.
* ``mode = "on_change"``: the first review, then whenever the *condition* changed (state,
  sync state, guard level and reason, recommended tempo, alerts, isolated devices) or a
  trouble counter (deadline misses, sheds, drops by limit, rejected frames, outbox drops)
  differs from the last report, and otherwise as a heartbeat once ``heartbeat_beats``
  beats have passed.
  Continuous readings (lateness, CPU, memory, temperature, error bound, backlog) do not
  count as a change, or every beat would be one.
* :meth:`StatusBuilder.final` always emits (shutdown) and marks ``metadata.final``.

Every emitted claim carries ``metadata.seq``, one more than the previous claim's. It is
strictly increasing per agent, also across restarts when the caller passes the last seq it
persisted as ``start_seq`` (the outbox's ``last_seq`` serves, see ``edge.outbox``).

Where things go (upstream allows extra data only under ``metadata`` and ``resources``):

=====================  ===============================================================
``resources``          ``cpu_percent`` (number >= 0), ``memory_mb`` (integer),
                       ``temperature_c`` (number); a reading that is missing is omitted
``notes``              the alerts joined by ``"; "`` (at most 256 characters), if any
``metadata.meta_v``    version of this metadata layout (:data:`METADATA_VERSION`)
``metadata.seq``       sequence number of the claim
``metadata.incarnation`` 16 hex digits, random per process start (when the agent gives
                       one): a restart shows even where the seq could not be kept
``metadata.agent_version``, ``metadata.config_hash``
``metadata.sync``      ``{"state": str, "error_bound_ms": number}``
``metadata.late_ms``   ``{"p50": number, "max": number}`` (a missing value is omitted)
``metadata.actions``   ``{"fired": int, "deadline_misses": int, "dropped_by_limit": int}``
``metadata.shed``      ``{reason: count}``, as the runner counts them
``metadata.frames_rejected`` ``{reason: count}``: the follower's refusals, and
                       ``malformed`` for frames that did not decode
                       (``malformed_bar_report`` for bar reports)
``metadata.inbox_dropped`` frames the link dropped because the inbox was full
``metadata.guard``     ``{"level": str, "reason": str}``
``metadata.recommended_tempo_bpm`` the fastest tempo this agent's measured work allows
                       (the tempo guide's rule, :mod:`edge.metrics`), not the cluster's
                       tempo (that is the beat frames' ``tempo_bpm``); omitted when none.
                       ``meta_v`` 1 called it ``tempo_bpm``.
``metadata.outbox``    ``{"backlog": int, "dropped": int}``, plus ``"degraded": str`` while
                       the outbox keeps claims in memory (disk full or read-only), and
                       ``"torn"`` / ``"corrupt"`` (unreadable stretches found in the
                       segments at start) and ``"lost"`` (claims they cost), when not 0
``metadata.alerts``    list of alert strings (omitted when empty); ``beat_source_conflict``
                       while frames for the same beats arrive from two sources
``metadata.source_conflict_ms`` how far apart those sources arrive (only during that alert)
``metadata.isolated``  names of the devices out of service after a failure (omitted when
                       none); a reload builds them anew
``metadata.calls``     python devices' calls since start: ``{"done", "exceptions",
                       "bad_values", "overruns", "kills", "not_started", "exits",
                       "restarts": int}`` (omitted without python devices)
``metadata.values``    ``{device: {name: number | string | bool}}``: what each python
                       device's function returned last (omitted until one returns values;
                       the first :data:`MAX_VALUE_DEVICES` devices by name)
``metadata.time_ref``  what the fixed path delay comes from: ``exchange`` (the time
                       exchange with a responder), ``wall`` (the local wall clock) or
                       ``envelope`` (neither); ``metadata.time_error_ms`` the exchange's
                       bound on the pulse's wall clock (while it has one);
                       ``metadata.time_rejected`` ``{reason: count}`` of time responses
                       not used (omitted when empty)
``metadata.final``     ``true`` on the shutdown claim only
``metadata.broker``    ``"host:port"`` of the broker the link was last connected to (with a
                       ``broker.url`` list: the one in use); omitted before the first
``metadata.broker_unreachable`` connection attempts that failed so far (omitted when 0)
=====================  ===============================================================

Numbers are rounded (milliseconds to 3 decimals, percentages and degrees to 1) so claims
stay small; non-finite readings are omitted rather than sent.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, cast, get_args

from edge.errors import ConfigProblems
from edge.hlc import HybridLogicalClock
from edge.messages import CLAIM_STATES, ClaimState, Format, StatusClaim, encode
from edge.settings import Section, choice, integer

#: Version of the ``metadata`` layout above; bump it when a key changes meaning.
METADATA_VERSION = 2

StatusMode = Literal["every", "on_change"]
_MODES: tuple[str, ...] = get_args(StatusMode)
_FORMATS: tuple[str, ...] = ("cbor", "json")
_NOTES_MAX = 256
#: ``metadata.values`` carries the devices first by name, at most this many (each holds at
#: most 16 small values: ~1.5 KB at worst, so a claim stays far below 64 KiB).
MAX_VALUE_DEVICES = 16


@dataclass(frozen=True, slots=True)
class StatusConfig:
    """When and how status claims are reported.

    ``every``: in ``"every"`` mode, report one beat in ``every`` (1 = each beat).
    ``mode``: ``"every"`` or ``"on_change"`` (report changes plus a heartbeat).
    ``heartbeat_beats``: in ``"on_change"`` mode, the longest silence in beats.
    ``format``: wire encoding of claims, ``"cbor"`` (default) or ``"json"``.
    ``expiry_s``: MQTT v5 message expiry the link sets on each claim, so that a broker does
    not deliver a claim that has gone stale; ``None`` = never expires.
    """

    every: int = 1
    mode: StatusMode = "every"
    heartbeat_beats: int = 10
    format: Format = "cbor"
    expiry_s: int | None = 60


_SECTION = Section(
    StatusConfig,
    (
        integer("every", 1, 1_000_000),
        choice("mode", *_MODES),
        integer("heartbeat_beats", 1, 1_000_000),
        choice("format", *_FORMATS),
        # 0 = claims never expire, stored as None (the link then sets no expiry). MQTT
        # carries the expiry in 32 bits.
        integer("expiry_s", 0, 2**32 - 1, convert=lambda seconds: seconds or None),
    ),
)


def parse_status(
    raw: Mapping[str, object], problems: ConfigProblems, where: str = "status"
) -> StatusConfig:
    """Read the ``[status]`` TOML section; every problem goes to ``problems``.

    Keys: ``every`` (integer >= 1, default 1), ``mode`` (``"every"`` | ``"on_change"``),
    ``heartbeat_beats`` (integer >= 1, default 10), ``format`` (``"cbor"`` | ``"json"``),
    ``expiry_s`` (integer seconds >= 0, default 60; 0 = claims never expire). Unknown keys
    are problems too (a typo must not silently fall back to a default). A bad value is
    reported (worded as :mod:`edge.settings` words it) and its default used, so the
    returned config is always usable.
    """
    return _SECTION.read(raw, problems, where)


def config_hash(data: bytes) -> str:
    """A short fingerprint of the running config: the first 12 hex digits of its sha256.

    Fed the raw bytes of the config file, it lets a fleet view tell which devices run the
    same config without shipping the config itself.
    """
    return hashlib.sha256(data).hexdigest()[:12]


#: Follower states (``edge.sync.SyncState`` values) in which the agent does not act.
_BLOCKED_SYNC_STATES = frozenset({"lost", "acquiring"})


def claim_state(sync_state: str, planned: int, failed: int, shed: int) -> ClaimState:
    """The state a beat's claim carries: ``blocked`` while the beat is not followed (the
    follower lost it or is still acquiring it), else ``failed`` when an action of the beat
    failed, ``idle`` when nothing was planned nor shed, else ``reviewing``. ``planned``,
    ``failed`` and ``shed`` count the beat's actions."""
    if sync_state in _BLOCKED_SYNC_STATES:
        return "blocked"
    if failed:
        return "failed"
    if planned == 0 and not shed:
        return "idle"
    return "reviewing"


@dataclass(frozen=True, slots=True)
class BeatReview:
    """What the runner hands over at the review phase of a beat.

    ``state`` must be one of the eight upstream claim states (ValueError otherwise: that is
    a bug in the caller, not bad input). Counters (``fired``, ``missed``, ``shed``,
    ``dropped_by_limit``, ``frames_rejected``, ``outbox_dropped``) are passed through as the
    runner counts them; cumulative since start is recommended so a lost claim loses no
    count. ``None`` means "no reading"; such values are left out of the claim.
    """

    beat_index: int
    state: str
    sync_state: str
    error_bound_ms: float
    late_ms_p50: float | None
    late_ms_max: float | None
    fired: int
    missed: int
    shed: Mapping[str, int]
    dropped_by_limit: int
    frames_rejected: Mapping[str, int]
    guard_level: str
    guard_reason: str
    recommended_tempo: float | None
    cpu_percent: float | None
    memory_mb: float | None
    temperature_c: float | None
    backlog: int
    outbox_dropped: int
    alerts: tuple[str, ...] = field(default=())
    #: Why the outbox is keeping claims in memory (disk full, read-only...), if it is.
    outbox_degraded: str | None = None
    #: Devices taken out of service after a failure (sorted), until a reload revives them.
    isolated: tuple[str, ...] = ()
    #: Damage the outbox found in its segments at start (see ``metadata.outbox``).
    outbox_torn: int = 0
    outbox_corrupt: int = 0
    outbox_lost: int = 0
    #: Frames the link dropped because its inbox was full (cumulative).
    inbox_dropped: int = 0
    #: While a second source of the beat is seen: how far apart they arrive (ms).
    source_conflict_ms: float | None = None
    #: Python calls since start, by what became of them (edge.hardware.pycalls'
    #: ``COUNT_KEYS``); empty without python devices.
    calls: Mapping[str, int] = field(default_factory=dict)
    #: The values each python device's function returned last, by device.
    values: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    #: ``host:port`` of the broker in use, and the link's failed connection attempts.
    broker: str | None = None
    broker_unreachable: int = 0
    #: What the fixed path delay comes from: "exchange", "wall" or "envelope" (edge.timesync).
    time_ref: str | None = None
    #: The time exchange's bound on the pulse's wall clock (ms), while it has a model.
    time_error_ms: float | None = None
    #: Time responses (and requests) not used, by reason (cumulative).
    time_rejected: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.state not in CLAIM_STATES:
            raise ValueError(
                f"state must be one of {', '.join(sorted(CLAIM_STATES))}, got {self.state!r}"
            )
        if isinstance(self.beat_index, bool) or self.beat_index < 0:
            raise ValueError(f"beat_index must be an integer >= 0, got {self.beat_index!r}")


def _finite(value: float | None, digits: int) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def _condition(review: BeatReview) -> tuple[object, ...]:
    """What counts as a change in ``on_change`` mode (see the theory of operation)."""
    return (
        review.state,
        review.sync_state,
        review.guard_level,
        review.guard_reason,
        _finite(review.recommended_tempo, 1),
        review.alerts,
        review.missed,
        tuple(sorted(review.shed.items())),
        review.dropped_by_limit,
        tuple(sorted(review.frames_rejected.items())),
        review.outbox_dropped,
        review.outbox_degraded,
        review.isolated,
        review.inbox_dropped,
        # Trouble, not work: a call that raised, overran, was killed or lost its worker.
        tuple(sorted((k, v) for k, v in review.calls.items() if k not in ("done", "restarts"))),
        review.broker,
        review.broker_unreachable,
    )


def _outbox_meta(review: BeatReview) -> dict[str, object]:
    meta: dict[str, object] = {"backlog": review.backlog, "dropped": review.outbox_dropped}
    if review.outbox_degraded:
        meta["degraded"] = review.outbox_degraded[:200]
    for key, count in (
        ("torn", review.outbox_torn),
        ("corrupt", review.outbox_corrupt),
        ("lost", review.outbox_lost),
    ):
        if count:
            meta[key] = count
    return meta


class StatusBuilder:
    """Turns beat reviews into status claims for one agent.

    ``start_seq`` is the last seq emitted before (0 on a first start); the first claim
    carries ``start_seq + 1``. ``incarnation`` (random per process start, made by the
    caller: the core draws no random numbers) goes into every claim when given. ``seq``
    is the last seq emitted. ``hlc`` stamps each claim at the moment it is built. Not
    thread-safe; the runner owns it.
    """

    def __init__(
        self,
        agent_id: str,
        config: StatusConfig,
        hlc: HybridLogicalClock,
        agent_version: str,
        config_hash: str,
        start_seq: int = 0,
        incarnation: str | None = None,
    ) -> None:
        if start_seq < 0:
            raise ValueError(f"start_seq must be >= 0, got {start_seq}")
        self._agent_id = agent_id
        self._config = config
        self._hlc = hlc
        self._agent_version = agent_version
        self._config_hash = config_hash
        self.seq = start_seq
        self._incarnation = incarnation
        self._last_beat: int | None = None
        self._last_condition: tuple[object, ...] | None = None

    @property
    def config(self) -> StatusConfig:
        return self._config

    def reconfigured(self, config: StatusConfig, config_hash: str) -> StatusBuilder:
        """A builder for a reloaded config: the same agent, clock and process start (its
        seq goes on, its incarnation stays: a reload is not a restart), the new settings
        and hash. The first claim after it is due at once."""
        return StatusBuilder(
            self._agent_id,
            config,
            self._hlc,
            self._agent_version,
            config_hash,
            start_seq=self.seq,
            incarnation=self._incarnation,
        )

    def due(self, review: BeatReview) -> bool:
        """Whether :meth:`build` would report this beat (no state changes)."""
        last = self._last_beat
        if last is None or review.beat_index < last:
            return True
        passed = review.beat_index - last
        if self._config.mode == "every":
            return passed >= self._config.every
        if passed >= self._config.heartbeat_beats:
            return True
        return _condition(review) != self._last_condition

    def build(self, review: BeatReview) -> StatusClaim | None:
        """The claim for this beat, or ``None`` when this beat is not reported."""
        if not self.due(review):
            return None
        return self._emit(review, final=False)

    def final(self, review: BeatReview) -> StatusClaim:
        """The shutdown claim: always emitted, with ``metadata.final = true``."""
        return self._emit(review, final=True)

    def emit(self, review: BeatReview) -> StatusClaim:
        """A claim for ``review`` now, whether or not the beat is due (a program's own
        claim, ``edge.client``); it takes the next seq like any other."""
        return self._emit(review, final=False)

    def encode(self, claim: StatusClaim) -> bytes:
        """The claim's bytes in the configured format (canonical CBOR or compact JSON)."""
        return encode(claim, self._config.format)

    def _emit(self, review: BeatReview, final: bool) -> StatusClaim:
        seq = self.seq + 1
        claim = StatusClaim(
            agent_id=self._agent_id,
            beat_index=review.beat_index,
            state=cast(ClaimState, review.state),
            hlc=self._hlc.now_wire(),
            notes=self._notes(review.alerts),
            resources=self._resources(review),
            metadata=self._metadata(review, seq, final),
        )
        # Only a claim that was built counts: a bad review must not burn a seq.
        self.seq = seq
        self._last_beat = review.beat_index
        self._last_condition = _condition(review)
        return claim

    @staticmethod
    def _notes(alerts: tuple[str, ...]) -> str | None:
        if not alerts:
            return None
        text = "; ".join(alerts)
        return text if len(text) <= _NOTES_MAX else text[: _NOTES_MAX - 3] + "..."

    @staticmethod
    def _resources(review: BeatReview) -> dict[str, object] | None:
        out: dict[str, object] = {}
        cpu = _finite(review.cpu_percent, 1)
        if cpu is not None:
            out["cpu_percent"] = max(cpu, 0.0)  # the schema wants >= 0; a probe may dip below
        memory = _finite(review.memory_mb, 0)
        if memory is not None:
            out["memory_mb"] = max(int(memory), 0)  # upstream types memory_mb as an integer
        temperature = _finite(review.temperature_c, 1)
        if temperature is not None:
            out["temperature_c"] = temperature
        return out or None

    def _metadata(self, review: BeatReview, seq: int, final: bool) -> dict[str, object]:
        late: dict[str, object] = {}
        p50 = _finite(review.late_ms_p50, 3)
        if p50 is not None:
            late["p50"] = p50
        worst = _finite(review.late_ms_max, 3)
        if worst is not None:
            late["max"] = worst
        sync: dict[str, object] = {"state": review.sync_state}
        bound = _finite(review.error_bound_ms, 3)
        if bound is not None:
            sync["error_bound_ms"] = bound
        meta: dict[str, object] = {
            "meta_v": METADATA_VERSION,
            "seq": seq,
            **({"incarnation": self._incarnation} if self._incarnation else {}),
            "agent_version": self._agent_version,
            "config_hash": self._config_hash,
            "sync": sync,
            "late_ms": late,
            "actions": {
                "fired": review.fired,
                "deadline_misses": review.missed,
                "dropped_by_limit": review.dropped_by_limit,
            },
            "shed": dict(review.shed),
            "frames_rejected": dict(review.frames_rejected),
            "inbox_dropped": review.inbox_dropped,
            "guard": {"level": review.guard_level, "reason": review.guard_reason},
            "outbox": _outbox_meta(review),
        }
        tempo = _finite(review.recommended_tempo, 1)
        if tempo is not None:
            meta["recommended_tempo_bpm"] = tempo
        if review.alerts:
            meta["alerts"] = list(review.alerts)
        spread = _finite(review.source_conflict_ms, 1)
        if spread is not None:
            meta["source_conflict_ms"] = spread
        if review.isolated:
            meta["isolated"] = list(review.isolated)
        if review.calls:
            meta["calls"] = dict(review.calls)
        if review.values:
            # Bounded, so claims stay far below the payload limit (16 values a device).
            shown = sorted(review.values)[:MAX_VALUE_DEVICES]
            meta["values"] = {name: dict(review.values[name]) for name in shown}
        if review.broker is not None:
            meta["broker"] = review.broker
        if review.broker_unreachable:
            meta["broker_unreachable"] = review.broker_unreachable
        if review.time_ref is not None:
            meta["time_ref"] = review.time_ref
        time_error = _finite(review.time_error_ms, 3)
        if time_error is not None:
            meta["time_error_ms"] = time_error
        if review.time_rejected:
            meta["time_rejected"] = dict(review.time_rejected)
        if final:
            meta["final"] = True
        return meta
