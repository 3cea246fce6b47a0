"""The beat review: a closed beat's ledger and the agent's parts, read into one BeatReview.

What the claim of a beat says is gathered here: the ledger's counts and lateness, the
follower's state and error bound, the guard's verdict, the metrics' recommendation and
alerts, the last probe samples, the outbox's backlog and losses, the refused frames, the
isolated devices, and the python calls' counts and returned values. Reading only:
nothing here changes a part's state, but :func:`record_beat`, which teaches the metrics
the beat and logs the alerts it starts or clears.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Mapping

from edge.guard import Sample, Verdict
from edge.metrics import Metrics
from edge.outbox import Outbox
from edge.plan import BeatLedger
from edge.status import BeatReview, claim_state
from edge.sync import BeatFollower

log = logging.getLogger(__name__)

#: The alert a second source of the beat raises (claims' ``metadata.alerts``, log, monitor).
SOURCE_CONFLICT_ALERT = "beat_source_conflict"


def record_beat(
    metrics: Metrics, follower: BeatFollower, beat: int, ledger: BeatLedger, now: float
) -> None:
    """Teach ``metrics`` the closed beat, and log the alerts that start or clear."""
    phase_s = follower.beat_seconds() / 3.0
    metrics.record_beat(
        beat,
        phase_s,
        ledger.busy_s,
        ledger.missed == 0,
        ledger.fired,
        follower.tempo_drift_ms(now),
        now,
    )
    started, cleared = metrics.check_alerts(now)
    for alert in started:
        log.warning("alert %s started: %s (%s)", alert.name, alert.message, alert.recommendation)
    for alert in cleared:
        log.info("alert %s cleared", alert.name)


def alerts(metrics: Metrics, follower: BeatFollower) -> tuple[str, ...]:
    """The metrics' alerts in force, and ``beat_source_conflict`` while the follower sees
    two sources of the beat."""
    names = tuple(a.name for a in metrics.active_alerts())
    if follower.source_conflict is not None:
        names += (SOURCE_CONFLICT_ALERT,)
    return names


def assemble(
    beat: int,
    ledger: BeatLedger,
    verdict: Verdict,
    follower: BeatFollower,
    metrics: Metrics,
    samples: tuple[Sample | None, Sample | None],
    frames_rejected: dict[str, int],
    inbox_dropped: int,
    outbox: Outbox | None,
    isolated: tuple[str, ...],
    calls: tuple[Mapping[str, int], Mapping[str, Mapping[str, object]]] = ({}, {}),
    broker: str | None = None,
    broker_unreachable: int = 0,
) -> BeatReview:
    """The review of ``beat``; ``samples`` are the last sample and the last full one;
    ``calls`` the python devices' counts and last returned values; ``broker`` /
    ``broker_unreachable`` are the link's (``MqttLink.current_broker``, ``unreachable``)."""
    sample, full = samples
    sync_state = follower.state
    late = sorted(ledger.late_ms)
    conflict = follower.source_conflict
    return BeatReview(
        beat_index=beat,
        state=claim_state(
            sync_state.value, ledger.planned, ledger.failed, sum(ledger.shed.values())
        ),
        sync_state=sync_state.value,
        error_bound_ms=follower.error_bound_s * 1000.0,
        late_ms_p50=statistics.median(late) if late else None,
        late_ms_max=late[-1] if late else None,
        fired=ledger.fired,
        missed=ledger.missed,
        shed=dict(ledger.shed),
        dropped_by_limit=sum(ledger.dropped.values()),
        frames_rejected=frames_rejected,
        inbox_dropped=inbox_dropped,
        guard_level=verdict.level.value,
        guard_reason=verdict.reason,
        recommended_tempo=metrics.recommended_tempo(),
        cpu_percent=None if sample is None else sample.cpu_percent,
        memory_mb=None if full is None else full.process_rss_mb,
        temperature_c=None if full is None else full.temperature_c,
        backlog=0 if outbox is None else outbox.backlog,
        outbox_dropped=0 if outbox is None else outbox.dropped,
        outbox_degraded=None if outbox is None else outbox.degraded,
        outbox_torn=0 if outbox is None else outbox.torn,
        outbox_corrupt=0 if outbox is None else outbox.corrupt,
        outbox_lost=0 if outbox is None else outbox.lost,
        alerts=alerts(metrics, follower),
        source_conflict_ms=None if conflict is None else conflict.spread_ms,
        isolated=isolated,
        calls=dict(calls[0]),
        values={name: dict(values) for name, values in calls[1].items()},
        broker=broker,
        broker_unreachable=broker_unreachable,
    )
