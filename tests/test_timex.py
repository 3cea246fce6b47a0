"""The time exchange's pure core: the wire format (edge.timewire) and the clock filter and
its schedule (edge.timefilter), against a simulated responder on a fake timeline."""

from __future__ import annotations

import functools
import itertools
import math
import random
from collections.abc import Callable

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.errors import FrameError
from edge.inbox import Inbound
from edge.signing import Keyring, SigningKey
from edge.timefilter import ClockFilter, ExchangeConfig, TimeExchange
from edge.timekeeper import Responder as TimeResponder
from edge.timesync import TimeSync
from edge.timewire import (
    TimeResponse,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    make_response,
    response_verdict,
    signed_bytes,
)
from edge.topics import Topics
from edge.trust import BeatTrust

WALL0 = 1_800_000_000 * 10**9  # the responder's wall clock at local monotonic 0 (ns)


# --------------------------------------------------------------------------- the wire


def test_request_round_trip_and_exact_bytes() -> None:
    assert encode_request(7) == cbor2.dumps({"v": 1, "id": 7}, canonical=True)
    assert decode_request(encode_request(2**64 - 1)).id == 2**64 - 1


def test_response_round_trip_exact_map() -> None:
    payload = encode_response(make_response(5, WALL0, WALL0 + 30_000))
    assert cbor2.loads(payload) == {"v": 1, "id": 5, "t2": WALL0, "t3": WALL0 + 30_000}
    response = decode_response(payload)
    assert (response.id, response.t2, response.t3, response.sig) == (5, WALL0, WALL0 + 30_000, None)


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"v": 2, "id": 1}, "v", "v must be 1"),
        ({"id": 1}, "v", "v is missing"),
        ({"v": True, "id": 1}, "v", "v must be 1"),
        ({"v": 1}, "id", "id is missing"),
        ({"v": 1, "id": -1}, "id", "between 0 and"),
        ({"v": 1, "id": 1.0}, "id", "unsigned integer, got float"),
        ({"v": 1, "id": True}, "id", "unsigned integer, got bool"),
        ({"v": 1, "id": 1, "x": 2}, "payload", "unknown key"),
    ],
)
def test_bad_requests_say_what_and_where(data: object, field: str, words: str) -> None:
    with pytest.raises(FrameError, match=words) as info:
        decode_request(cbor2.dumps(data))
    assert info.value.field == field
    assert "time request" in str(info.value)


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"", "empty payload"),
        (b"\xff\xff", "not valid CBOR"),
        (cbor2.dumps([1, 2]), "must be a CBOR map, got list"),
        (cbor2.dumps({"v": 1, "id": 1}) + b"\x00", "bytes after the CBOR item"),
        (cbor2.dumps(cbor2.CBORTag(55799, {"v": 1, "id": 1})), "not valid CBOR"),
        (b"\xa1" + cbor2.dumps("v") + b"\x5a" + b"\xff" * 4, "not valid CBOR"),
        (cbor2.dumps({"v": 1, "id": 1, "pad": "x" * 600}), "at most 512"),
    ],
)
def test_unparseable_requests(payload: bytes, words: str) -> None:
    with pytest.raises(FrameError, match=words):
        decode_request(payload)


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"v": 1, "id": 1, "t2": 5}, "t3", "t3 is missing"),
        ({"v": 1, "id": 1, "t2": 5, "t3": 4}, "t3", "before t2"),
        ({"v": 1, "id": 1, "t2": 5.0, "t3": 6}, "t2", "unsigned integer, got float"),
        ({"v": 1, "id": 1, "t2": 2**63, "t3": 2**63}, "t2", "between 0 and"),
        ({"v": 1, "id": 1, "t2": 5, "t3": 6, "sig": "abc"}, "sig", "malformed"),
        ({"v": 1, "id": 1, "t2": 5, "t3": 6, "sig_kid": "00" * 8}, "sig_kid", "without sig"),
        ({"v": 1, "id": 1, "t2": 5, "t3": 6, "metadata": {}}, "payload", "unknown key"),
    ],
)
def test_bad_responses_say_what_and_where(data: object, field: str, words: str) -> None:
    with pytest.raises(FrameError, match=words) as info:
        decode_response(cbor2.dumps(data))
    assert info.value.field == field
    assert "time response" in str(info.value)


def test_make_response_refuses_values_off_the_contract() -> None:
    with pytest.raises(ValueError, match="t3 must not be before t2"):
        make_response(1, 10, 9)
    with pytest.raises(ValueError, match="id must be between"):
        make_response(-1, 10, 10)
    with pytest.raises(ValueError, match="id must be between"):
        encode_request(2**64)


def _key() -> tuple[SigningKey, Keyring]:
    private = Ed25519PrivateKey.generate()
    signer = SigningKey(private)
    return signer, Keyring([signer.public_raw])


def test_signed_response_verifies_and_covers_the_map_without_sig() -> None:
    signer, ring = _key()
    response = make_response(9, WALL0, WALL0 + 1000, signer)
    assert response.sig is not None and response.sig_kid == signer.kid
    decoded = decode_response(encode_response(response))
    assert decoded == response
    assert response_verdict(decoded, ring) == "signed"
    assert signed_bytes(decoded) == cbor2.dumps(
        {"v": 1, "id": 9, "t2": WALL0, "t3": WALL0 + 1000}, canonical=True
    )
    # Any field changed after signing: forged.
    for changed in (
        TimeResponse(10, decoded.t2, decoded.t3, decoded.sig, decoded.sig_kid),
        TimeResponse(9, decoded.t2 + 1, decoded.t3, decoded.sig, decoded.sig_kid),
        TimeResponse(9, decoded.t2, decoded.t3 + 1, decoded.sig, decoded.sig_kid),
    ):
        assert response_verdict(changed, ring) == "forged"
    other_signer, _ = _key()
    assert response_verdict(make_response(9, WALL0, WALL0, other_signer), ring) == "forged"
    assert response_verdict(make_response(9, WALL0, WALL0), ring) == "unsigned"


# --------------------------------------------------------------------------- simulation


class Responder:
    """A responder whose wall clock runs at ``rate`` against ours and may step."""

    def __init__(self, rate_ppm: float = 0.0, offset_s: float = -3 * 3600.0) -> None:
        self.rate = rate_ppm * 1e-6
        self.offset_ns = round(offset_s * 1e9)
        self.step_ns = 0
        self.turnaround_s = 50e-6

    def wall_ns(self, t: float) -> int:
        return WALL0 + self.offset_ns + self.step_ns + round(t * (1 + self.rate) * 1e9)


def run(
    exchange: TimeExchange,
    responder: Responder,
    seconds: float,
    there: Callable[[random.Random], float],
    back: Callable[[random.Random], float],
    start: float = 100.0,
    loss: float = 0.0,
    seed: int = 1,
    answering: Callable[[float], bool] = lambda t: True,
    on_tick: Callable[[float], None] | None = None,
) -> float:
    """Drive ``exchange`` for ``seconds`` of fake time from ``start`` (1 ms ticks)."""
    rng = random.Random(seed)
    pending: list[tuple[float, TimeResponse]] = []
    t = start
    end = start + seconds
    while t < end:
        request_id = exchange.poll(t)
        if request_id is not None and answering(t) and rng.random() >= loss:
            t2 = t + there(rng)
            t3 = t2 + responder.turnaround_s
            arrive = t3 + back(rng)
            pending.append(
                (arrive, make_response(request_id, responder.wall_ns(t2), responder.wall_ns(t3)))
            )
        for item in [p for p in pending if p[0] <= t]:
            pending.remove(item)
            exchange.response(item[1], item[0])
        if on_tick is not None:
            on_tick(t)
        t += 0.001
    return t


def error_at(exchange: TimeExchange, responder: Responder, t: float) -> float:
    return abs(exchange.pulse_wall_at(t) * 1e9 - responder.wall_ns(t)) / 1e9


def fixed(seconds: float) -> Callable[[random.Random], float]:
    return lambda rng: seconds


def uniform(low: float, high: float) -> Callable[[random.Random], float]:
    return lambda rng: rng.uniform(low, high)


def pareto(floor: float, scale: float) -> Callable[[random.Random], float]:
    """Heavy tailed: mostly near the floor, sometimes far above (Pareto, alpha 1.5)."""
    return lambda rng: floor + scale * (rng.paretovariate(1.5) - 1.0)


# --------------------------------------------------------------------------- the filter


def test_locks_fast_and_maps_within_its_bound() -> None:
    exchange = TimeExchange()
    responder = Responder(rate_ppm=40.0)
    t = run(exchange, responder, 3.0, uniform(100e-6, 400e-6), uniform(100e-6, 400e-6))
    assert exchange.locked_at(t)
    error = error_at(exchange, responder, t)
    assert error <= exchange.bound_at(t)
    assert error < 100e-6
    # to_local is the inverse: a deadline_at lands at the local time it names.
    deadline_ns = responder.wall_ns(t + 0.5)
    assert abs(exchange.to_local(deadline_ns) - (t + 0.5)) < 110e-6


def test_rate_is_tracked_and_carries_through_silence() -> None:
    exchange = TimeExchange()
    responder = Responder(rate_ppm=80.0)
    t = run(exchange, responder, 60.0, uniform(100e-6, 2e-3), uniform(100e-6, 2e-3))
    assert abs(exchange.filter.rate - 80e-6) < 10e-6
    # 30 s without answers: the mapping is carried at the measured rate.
    later = t + 30.0
    error = error_at(exchange, responder, later)
    assert error <= exchange.bound_at(later)
    assert error < 0.3e-3


def test_asymmetric_delays_stay_within_the_bound() -> None:
    """0.2 ms there, 1.2 ms back: the offset is off by half the difference, which the
    bound (half the delay) covers."""
    exchange = TimeExchange()
    responder = Responder()
    t = run(exchange, responder, 10.0, fixed(0.2e-3), uniform(1.2e-3, 1.3e-3))
    error = error_at(exchange, responder, t)
    assert 0.45e-3 < error <= exchange.bound_at(t)
    assert exchange.locked_at(t)


def test_heavy_tailed_delays_use_the_floor() -> None:
    exchange = TimeExchange()
    responder = Responder(rate_ppm=-30.0)
    for seed in range(3):
        t = run(
            exchange,
            responder,
            40.0,
            pareto(150e-6, 300e-6),
            pareto(150e-6, 300e-6),
            start=100.0 + 100 * seed,
            seed=seed,
        )
        error = error_at(exchange, responder, t)
        assert error <= exchange.bound_at(t)
        assert error < 0.2e-3


@pytest.mark.parametrize(("both_ways", "worst"), [(False, 1e-3), (True, 5e-3)])
def test_jitter_50ms_with_loss_is_bounded(both_ways: bool, worst: float) -> None:
    """0-50 ms on the responses (the bench's worst row; or each way) and 10 % loss: never
    outside the bound, and after a minute within ``worst``."""
    exchange = TimeExchange()
    responder = Responder(rate_ppm=20.0)
    errors: list[tuple[float, float, float]] = []

    def check(t: float) -> None:
        if round(t * 1000) % 500 == 0 and exchange.filter.samples:
            errors.append((t, error_at(exchange, responder, t), exchange.bound_at(t)))

    run(
        exchange,
        responder,
        120.0,
        uniform(0.2e-3, 50e-3) if both_ways else uniform(0.1e-3, 0.3e-3),
        uniform(0.2e-3, 50e-3),
        loss=0.1,
        on_tick=check,
    )
    assert errors
    assert all(e <= b for _, e, b in errors)
    assert max(e for t, e, _ in errors if t > 160.0) < worst
    assert exchange.lost > 0
    assert exchange.rejected["lost"] == exchange.lost


def test_lost_responses_time_out_and_bound_in_flight() -> None:
    exchange = TimeExchange()
    run(exchange, Responder(), 20.0, fixed(1e-4), fixed(1e-4), answering=lambda t: False)
    cfg = exchange.config
    # Acquiring pace until idle_after went unanswered, then backing off (the interval
    # doubling) to the idle pace: bounded.
    backing_off = math.ceil(math.log2(cfg.idle_interval_s / cfg.acquire_interval_s))
    idle = 20.0 / cfg.idle_interval_s
    assert exchange.sent <= cfg.idle_after + backing_off + cfg.max_in_flight + idle + 1
    assert exchange.lost >= exchange.sent - cfg.max_in_flight
    assert len(exchange._in_flight) <= cfg.max_in_flight
    assert not exchange.answered
    assert exchange.bound_at(120.0) == math.inf
    assert not exchange.locked_at(120.0)


def record_polls(exchange: TimeExchange) -> list[float]:
    """The times ``exchange`` sends a request at, from now on."""
    sent: list[float] = []
    original = exchange.poll

    def poll(t: float) -> int | None:
        got = original(t)
        if got is not None:
            sent.append(t)
        return got

    exchange.poll = poll  # type: ignore[method-assign,assignment]
    return sent


def test_pace_acquiring_then_tracking() -> None:
    exchange = TimeExchange()
    responder = Responder()
    sent = record_polls(exchange)
    run(exchange, responder, 30.0, fixed(1e-4), fixed(1e-4))
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    cfg = exchange.config
    assert gaps[0] == pytest.approx(cfg.acquire_interval_s, abs=0.002)
    assert gaps[-1] == pytest.approx(cfg.track_interval_s, abs=0.002)
    assert len(sent) < cfg.acquire_samples + 30


def test_responder_restart_keeps_the_lock() -> None:
    """A responder gone for 5 s (its in-flight requests lost), then back (same clock):
    the mapping carries through and tightens again."""
    exchange = TimeExchange()
    responder = Responder(rate_ppm=50.0)
    t = run(
        exchange,
        responder,
        40.0,
        uniform(1e-4, 5e-4),
        uniform(1e-4, 5e-4),
        answering=lambda t: not 120.0 <= t < 125.0,
    )
    assert exchange.lost >= 3
    assert exchange.filter.steps == 0
    assert error_at(exchange, responder, t) < 0.1e-3
    assert exchange.locked_at(t)


def test_responder_wall_clock_step_is_followed_after_confirmation() -> None:
    exchange = TimeExchange()
    responder = Responder()
    t = run(exchange, responder, 20.0, uniform(1e-4, 3e-4), uniform(1e-4, 3e-4))
    responder.step_ns = 250_000_000  # the responder's clock jumps 250 ms
    stepped_at: list[float] = []

    def watch(now: float) -> None:
        if exchange.filter.steps and not stepped_at:
            stepped_at.append(now)

    step = t
    t = run(
        exchange, responder, 4.0, uniform(1e-4, 3e-4), uniform(1e-4, 3e-4), start=t, on_tick=watch
    )
    assert exchange.filter.steps == 1
    # The first outlier brings back the acquiring pace: confirmed well before the two more
    # requests the tracking pace would have taken 2 s for.
    assert stepped_at[0] < step + cfg_track(exchange) + 0.5
    assert exchange.filter.rejected["outlier"] == exchange.config.step_confirm - 1
    assert error_at(exchange, responder, t) < 0.1e-3
    t = run(exchange, responder, 5.0, uniform(1e-4, 3e-4), uniform(1e-4, 3e-4), start=t)
    assert exchange.locked_at(t)
    assert error_at(exchange, responder, t) < 0.1e-3


def cfg_track(exchange: TimeExchange) -> float:
    return exchange.config.track_interval_s


def test_one_lying_response_is_an_outlier_not_a_step() -> None:
    exchange = TimeExchange()
    responder = Responder()
    t = run(exchange, responder, 10.0, fixed(1e-4), fixed(1e-4))
    request_id = exchange.poll(t + 1.0)
    assert request_id is not None
    bad = responder.wall_ns(t + 1.0) + 40_000_000
    assert exchange.response(make_response(request_id, bad, bad), t + 1.0002) == "outlier"
    t = run(exchange, responder, 5.0, fixed(1e-4), fixed(1e-4), start=t + 1.001)
    assert exchange.filter.steps == 0
    assert error_at(exchange, responder, t) < 20e-6


def _watch_bounds(
    exchange: TimeExchange, responder: Responder, every_ms: int = 250
) -> tuple[list[tuple[float, float, float]], Callable[[float], None]]:
    """A tick hook recording (t, |error|, bound) every ``every_ms`` once a model exists."""
    seen: list[tuple[float, float, float]] = []

    def check(t: float) -> None:
        if round(t * 1000) % every_ms == 0 and exchange.filter.samples >= 2:
            seen.append((t, error_at(exchange, responder, t), exchange.bound_at(t)))

    return seen, check


def test_the_best_request_and_the_best_response_count_apart() -> None:
    """Every exchange is slow one way or the other (never fast both ways), so the best
    single exchange is 5 ms off; the request way's envelope and the response way's are
    each tight, and together they pin the clock down to what the fast ways give."""
    exchange = TimeExchange()
    responder = Responder(rate_ppm=25.0)
    fast_there = itertools.cycle([True, False])
    last: list[bool] = []

    def there(rng: random.Random) -> float:
        last[:] = [next(fast_there)]
        return (0.1e-3 if last[0] else 10e-3) + rng.uniform(0, 20e-6)

    def back(rng: random.Random) -> float:  # the other way of the same exchange
        return (10e-3 if last[0] else 0.1e-3) + rng.uniform(0, 20e-6)

    seen, check = _watch_bounds(exchange, responder)
    t = run(exchange, responder, 30.0, there, back, on_tick=check)
    assert all(e <= b for _, e, b in seen)
    assert min(s.delay for s in exchange.filter._window) > 9e-3  # no exchange is fast
    assert error_at(exchange, responder, t) < 20e-6
    assert exchange.bound_at(t) < 0.2e-3
    assert abs(exchange.filter.rate - 25e-6) < 1e-6


@pytest.mark.parametrize("ppm", [100.0, -100.0])
def test_a_rate_of_100_ppm_is_learned_from_the_whole_window(ppm: float) -> None:
    exchange = TimeExchange()
    responder = Responder(rate_ppm=ppm)
    seen, check = _watch_bounds(exchange, responder)
    t = run(exchange, responder, 60.0, uniform(0.1e-3, 2e-3), uniform(0.1e-3, 2e-3), on_tick=check)
    assert all(e <= b for _, e, b in seen)
    assert abs(exchange.filter.rate - ppm * 1e-6) < 2e-6
    assert exchange.filter.rate_error < 10e-6
    assert error_at(exchange, responder, t) < 50e-6
    # Carried through 20 s without answers at that rate: still within 0.1 ms and the bound.
    later = t + 20.0
    assert error_at(exchange, responder, later) <= exchange.bound_at(later)
    assert error_at(exchange, responder, later) < 0.1e-3


@pytest.mark.parametrize("seed", range(3))
def test_asymmetric_heavy_tailed_delays_truth_always_inside_the_bound(seed: int) -> None:
    """Requests over a quiet way (0.1-0.2 ms), answers over a heavy-tailed one (Pareto
    from 1 ms): the estimate sits within 0.6 ms of the truth (half the answers' floor: no
    exchange can tell an asymmetric floor) and the truth is inside the bound at every
    check."""
    exchange = TimeExchange()
    responder = Responder(rate_ppm=-60.0)
    seen, check = _watch_bounds(exchange, responder)
    t = run(
        exchange,
        responder,
        40.0,
        uniform(0.1e-3, 0.2e-3),
        pareto(1e-3, 2e-3),
        seed=seed,
        loss=0.05,
        on_tick=check,
    )
    assert seen and all(e <= b for _, e, b in seen)
    assert error_at(exchange, responder, t) < 0.6e-3
    assert exchange.locked_at(t)


def test_a_rate_barely_known_stays_near_the_prior() -> None:
    """The first seconds over a 0-50 ms way: the slopes the data allow span most of
    +/-max_rate_ppm, lopsided, and one envelope slope from a few points is noisy; the rate
    in use is drawn to the prior (0, rate_prior_ppm) while the data say little, and the
    truth is inside the bound."""
    exchange = TimeExchange()
    responder = Responder(rate_ppm=30.0)
    rates: list[float] = []
    seen, check = _watch_bounds(exchange, responder, every_ms=100)

    def watch(t: float) -> None:
        check(t)
        if exchange.filter.samples >= 2:
            rates.append(exchange.filter.rate)

    run(exchange, responder, 3.0, uniform(0.2e-3, 1.2e-3), uniform(0.2e-3, 50e-3), on_tick=watch)
    assert all(e <= b for _, e, b in seen)
    # Not at an end of +/-500 ppm (where the middle of a lopsided interval or one noisy
    # envelope slope would put it): within half of it.
    assert max(abs(r - 30e-6) for r in rates) < 0.5 * exchange.config.max_rate_ppm * 1e-6


def test_a_rate_change_prunes_the_old_exchanges() -> None:
    """The responder's clock changes rate by 20 ppm (NTP slewing it): no line explains the
    window any more, the older exchanges go (it is no step), the rate moves to the new one,
    and the truth stays inside the bound all along."""
    exchange = TimeExchange()
    responder = Responder(rate_ppm=0.0)
    t = run(exchange, responder, 40.0, uniform(1e-4, 3e-4), uniform(1e-4, 3e-4))
    # Keep the responder's clock continuous at t while its rate changes.
    responder.step_ns -= round(t * 20e-6 * 1e9)
    responder.rate = 20e-6
    seen, check = _watch_bounds(exchange, responder)
    t = run(
        exchange, responder, 40.0, uniform(1e-4, 3e-4), uniform(1e-4, 3e-4), start=t, on_tick=check
    )
    assert exchange.filter.pruned > 0
    assert exchange.filter.steps == 0
    assert 10e-6 < exchange.filter.rate < 25e-6  # on its way: the window straddles the change
    assert error_at(exchange, responder, t) <= exchange.bound_at(t)
    # A jump of the rate is outside the model (it drifts by rate_drift_ppm_per_s at most):
    # while the window straddles the change the truth may leave the bound, not by much.
    assert max(e - b for _, e, b in seen) < 0.1e-3


def test_acquiring_goes_on_until_the_bound_is_tight_and_no_longer_than_bounded() -> None:
    """Answers over 0.2-3 ms: locked at once, but the bound stays above tight_bound_s for
    a while, so requests keep the acquiring pace past acquire_samples until it is down
    there, then every second; a path that never gets tight (a 1.5 ms floor each way) is
    asked at that pace for acquire_max_s of lock, then every second."""
    cfg = ExchangeConfig()
    fast = TimeExchange()
    fast_sent = record_polls(fast)
    tight: list[float] = []  # when the bound got tight

    def watch(t: float) -> None:
        if not tight and fast.filter.samples and fast.bound_at(t) <= cfg.tight_bound_s:
            tight.append(t)

    run(fast, Responder(), 20.0, fixed(1e-4), uniform(0.2e-3, 3e-3), seed=4, on_tick=watch)
    assert tight
    before = [b - a for a, b in itertools.pairwise(fast_sent) if b <= tight[0]]
    after = [b - a for a, b in itertools.pairwise(fast_sent) if a > tight[0] + 1.0]
    assert len(before) > cfg.acquire_samples + 5  # acquiring after 16 answers ...
    assert max(before) < 2 * cfg.acquire_interval_s  # ... at the acquiring pace
    assert after and min(after) > 0.9 * cfg.track_interval_s  # then tracking, steadily
    slow = TimeExchange()
    sent = record_polls(slow)
    run(slow, Responder(), 60.0, fixed(1.5e-3), fixed(1.5e-3))
    assert slow.locked_at(160.0) and slow.bound_at(160.0) > cfg.tight_bound_s
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert gaps[0] == pytest.approx(cfg.acquire_interval_s, abs=0.002)
    assert gaps[-1] == pytest.approx(cfg.track_interval_s, abs=0.002)
    acquiring = sum(1 for g in gaps if g < 0.5)
    assert acquiring <= cfg.acquire_max_s / cfg.acquire_interval_s + 2


def test_a_verified_reading_is_believed_from_the_first_frame() -> None:
    """The follower with readings the exchange checked: the first one gives the fixed
    delay, even while the envelope of a few 0-50 ms arrivals sits more than
    sync.wall_max_bias_s above its floor (an unchecked wall clock would need
    wall_trust_frames plausible frames first)."""
    from edge.testing.sync_sim import Network, Pulse, simulate

    pulse = Pulse(tempo=lambda i: 120.0, beats=6)
    net = Network(base=30e-3, jitter=lambda rng: rng.uniform(0.0, 20e-3), seed=2)
    unchecked = simulate(pulse, net, wall_error=lambda t: 0.0)
    assert not unchecked.follower.wall_clock_trusted  # 30 ms: more than wall_max_bias_s

    from edge.sync import BeatFollower

    original = BeatFollower.__init__

    def verified_init(self: BeatFollower, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        self.wall_verified = True

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BeatFollower, "__init__", verified_init)
        checked = simulate(Pulse(tempo=lambda i: 120.0, beats=6), net, wall_error=lambda t: 0.0)
    assert checked.follower.wall_clock_trusted
    assert checked.follower.wall_verified
    assert max(abs(e) for e in checked.errors(after=1003)) < 20e-6


def test_stale_unknown_and_impossible_responses_are_counted() -> None:
    draws = iter([2**64 - 1, 2**64 - 1, 0, 5, 6])
    exchange = TimeExchange(ids=lambda: next(draws))
    first = exchange.poll(0.0)
    assert first == 2**64 - 1
    second = exchange.poll(0.25)
    assert second == 0  # a draw of an id in flight is drawn again
    assert exchange.response(make_response(first, WALL0, WALL0), 0.0001) == "used"
    assert exchange.response(make_response(first, WALL0, WALL0), 0.0002) == "stale"
    assert exchange.response(make_response(77, WALL0, WALL0), 0.0003) == "unknown"
    # t3 - t2 longer than the round trip: the responder's clock cannot be right.
    assert exchange.response(make_response(0, WALL0, WALL0 + 10**9), 0.26) == "negative_delay"
    slow = exchange.poll(0.5)
    assert slow is not None
    assert exchange.response(make_response(slow, WALL0, WALL0), 1.9) == "slow"
    assert exchange.rejected == {"stale": 1, "unknown": 1, "negative_delay": 1, "slow": 1}


def test_clock_filter_before_any_exchange() -> None:
    f = ClockFilter(ExchangeConfig())
    assert f.bound_at(1.0) == math.inf
    with pytest.raises(RuntimeError, match="no exchange yet"):
        f.to_local(WALL0)


# --------------------------------------------------------------------------- the adapters


class Wire:
    """A loopback between a TimeSync and a Responder: what each published."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.now = 50.0

    def publish(self, topic: str, payload: bytes) -> object:
        self.sent.append((topic, payload))
        return None


def _sync(wire: Wire, trust: BeatTrust | None = None) -> TimeSync:
    return TimeSync(
        "backbeat",
        "c1",
        "c1:pi-01",
        wire.publish,
        lambda: True,
        lambda: wire.now,
        trust,
        rng=random.Random(3),
    )


def _answer(
    wire: Wire, sync: TimeSync, responder: TimeResponder, wall_s: float, back_s: float = 1e-4
) -> str:
    """The last request, answered by ``responder`` at the wall time ``wall_s``."""
    topic, payload = wire.sent[-1]
    assert topic == "backbeat/c1/time/req/c1:pi-01"
    answers: list[tuple[str, bytes]] = []
    responder._publish = lambda t, p: answers.append((t, p))
    assert responder.handle(Inbound("message", 0.0, wall_s, topic, payload))
    ((resp_topic, resp_payload),) = answers
    assert resp_topic == "backbeat/c1/time/resp/c1:pi-01" and sync.handles(resp_topic)
    return sync.receive(Inbound("message", wire.now + back_s, 0.0, resp_topic, resp_payload))


def test_timesync_and_responder_over_a_loopback() -> None:
    wire = Wire()
    sync = _sync(wire)
    walls = iter(range(10**18, 10**18 + 10**12, 10**4))
    responder = TimeResponder(Topics("backbeat", "c1"), wire.publish, wall_ns=lambda: next(walls))
    assert sync.wall_for(wire.now, 123.0) == 123.0  # no responder yet: the local wall clock
    for _ in range(4):
        sync.poll(wire.now)
        assert _answer(wire, sync, responder, 1e9 + wire.now) == "used"
        wire.now += 0.25
    assert sync.exchange.answered
    assert sync.error_ms(wire.now) is not None
    # A local wall clock hours off: the exchange's mapping is used instead.
    mapped = sync.wall_for(wire.now, 123.0)
    assert mapped is not None and abs(mapped - (1e9 + wire.now)) < 0.01
    assert not sync.local_agrees
    # Back inside half the bound: the local wall clock is used again; it stays in use
    # up to the bound, and not beyond.
    bound = sync.exchange.bound_at(wire.now)
    assert mapped is not None
    assert sync.wall_for(wire.now, mapped + 0.4 * bound) == mapped + 0.4 * bound
    assert sync.local_agrees
    assert sync.wall_for(wire.now, mapped + 0.9 * bound) == mapped + 0.9 * bound
    assert sync.wall_for(wire.now, mapped + 1.1 * bound) == pytest.approx(mapped, abs=1e-6)
    assert responder.answered == 4


def test_only_the_exchanges_own_readings_are_verified() -> None:
    # A local wall clock that agrees is learnt by the follower's vote, as any trusted wall
    # clock; readings are believed at once only when they are the exchange's mapping.
    wire = Wire()
    sync = _sync(wire)
    walls = iter(range(10**18, 10**18 + 10**12, 10**4))
    responder = TimeResponder(Topics("backbeat", "c1"), wire.publish, wall_ns=lambda: next(walls))
    assert not sync.wall_verified  # no responder yet
    for _ in range(4):
        sync.poll(wire.now)
        _answer(wire, sync, responder, 1e9 + wire.now)
        wire.now += 0.25
    mapped = sync.wall_for(wire.now, 123.0)  # hours off: the mapping is used
    assert not sync.local_agrees and sync.wall_verified
    assert mapped is not None
    sync.wall_for(wire.now, mapped)  # agrees: the local wall clock is used
    assert sync.local_agrees and not sync.wall_verified


def test_responder_refuses_bad_requests_and_counts_them() -> None:
    sent: list[tuple[str, bytes]] = []
    responder = TimeResponder(Topics("backbeat", "c1"), lambda t, p: sent.append((t, p)))
    assert responder.handles("backbeat/c1/time/req/x")
    assert not responder.handles("backbeat/c1/beat")
    assert not responder.handle(Inbound("message", 0.0, 1.0, "backbeat/c1/time/req/x", b"\x00"))
    assert not responder.handle(Inbound("message", 0.0, 1.0, "backbeat/c1/time/req/", b""))
    assert responder.refused == {"malformed": 1, "bad_topic": 1}
    assert sent == []


def _keeper(signer: SigningKey | None = None) -> TimeResponder:
    """A responder whose wall clock reads 1e9 s + 1 us at t3 (t2: 1e9 s, see _answer)."""
    return TimeResponder(Topics("backbeat", "c1"), Wire().publish, signer, lambda: 10**18 + 1000)


def test_signed_responses_required_when_signed_beats_are() -> None:
    signer, ring = _key()
    wire = Wire()
    sync = _sync(wire, BeatTrust(ring, require=True))
    unsigned, signed = _keeper(), _keeper(signer)
    other, _ = _key()
    forger = _keeper(other)
    sync.poll(wire.now)
    assert _answer(wire, sync, unsigned, 1e9) == "unsigned"
    assert _answer(wire, sync, forger, 1e9) == "bad_signature"
    assert _answer(wire, sync, signed, 1e9) == "used"
    assert sync.rejected == {"unsigned": 1, "bad_signature": 1}
    assert not sync.handles("backbeat/c1/time/resp/c1:other")
    junk = sync.receive(Inbound("message", 1.0, 0.0, sync.response_topic, b"\xa0"))
    assert junk == "malformed" and sync.rejected["malformed"] == 1


def test_signed_beats_not_required_take_unsigned_but_never_forged() -> None:
    _, ring = _key()
    wire = Wire()
    sync = _sync(wire, BeatTrust(ring, require=False))
    other, _ = _key()
    sync.poll(wire.now)
    assert _answer(wire, sync, _keeper(other), 1e9) == "bad_signature"
    assert _answer(wire, sync, _keeper(), 1e9) == "used"


def test_time_ref_names_the_reference() -> None:
    class Follower:
        wall_clock_trusted = False

    wire = Wire()
    sync = _sync(wire)
    follower = Follower()
    assert sync.time_ref(follower) == "envelope"  # type: ignore[arg-type]
    follower.wall_clock_trusted = True
    assert sync.time_ref(follower) == "wall"  # type: ignore[arg-type]
    sync.exchange.answered = True
    assert sync.time_ref(follower) == "wall"  # type: ignore[arg-type]
    sync.local_agrees = False
    assert sync.time_ref(follower) == "exchange"  # type: ignore[arg-type]


@pytest.mark.parametrize(("appears", "within"), [(1.3, 0.6), (4.0, 1.7)])
def test_a_responder_that_appears_is_heard_at_once(appears: float, within: float) -> None:
    """Requests nobody answered do not hold the in-flight slots until they time out; and
    one that appears after idle_after requests went unanswered is heard within the
    backing-off interval (about a second then), not at the idle pace (5 s)."""
    exchange = TimeExchange()
    responder = Responder()
    locked_at: list[float] = []

    def watch(t: float) -> None:
        if not locked_at and exchange.locked_at(t):
            locked_at.append(t)

    run(
        exchange,
        responder,
        8.0,
        fixed(1e-4),
        fixed(1e-4),
        answering=lambda t: t >= 100.0 + appears,
        on_tick=watch,
    )
    assert locked_at and locked_at[0] < 100.0 + appears + within, locked_at


def test_the_timekeeper_takes_the_brokers_protocol(capsys: pytest.CaptureFixture[str]) -> None:
    """``--protocol`` reaches the broker settings (NATS's gateway speaks 3.1.1 only): a
    wrong one is refused as the other tools refuse it, before any connection."""
    import threading

    from edge.cli import main
    from edge.timekeeper import TimekeeperOptions, run_timekeeper

    options = TimekeeperOptions(broker_url="mqtt://127.0.0.1:1", cluster="c", protocol="9")
    assert run_timekeeper(options, threading.Event()) == 2
    assert 'protocol: must be "5" or "3.1.1"' in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the command line offers only the two
        main(["timekeeper", "--cluster", "c", "--protocol", "9"])


def _keep(into: list[tuple[str, bytes]], topic: str, payload: bytes) -> None:
    into.append((topic, payload))


def test_an_answer_asked_for_ahead_under_another_name_never_matches() -> None:
    # An attacker on the broker sees each request. A response is signed over its id and
    # times only, so with an id it could guess it would ask the responder for the next one
    # early, under its own name, and play that answer (an exchange that seems to have
    # taken no time) before the real one: the agent's timeline would move by the lead.
    wire = Wire()
    sync = _sync(wire)
    walls = iter(range(10**18, 10**18 + 10**12, 10**4))
    responder = TimeResponder(Topics("backbeat", "c1"), wire.publish, wall_ns=lambda: next(walls))
    seen: list[int] = []
    while len(seen) < 20:
        wire.now += 0.25
        before = len(wire.sent)
        sync.poll(wire.now)
        if len(wire.sent) == before:
            continue  # none due yet
        request_id = decode_request(wire.sent[-1][1]).id
        # Whatever is near the ids seen so far (counting on from the last, or back).
        guesses = {i + k for i in seen[-3:] for k in range(-1000, 1001)}
        assert request_id not in guesses
        seen.append(request_id)
        assert _answer(wire, sync, responder, 1e9 + wire.now) == "used"
        # Asked for once seen, the attacker's answer comes after the responder's own.
        evil_topic = "backbeat/c1/time/req/evil"
        answers: list[tuple[str, bytes]] = []
        responder._publish = functools.partial(_keep, answers)
        assert responder.handle(Inbound("message", 0.0, 0.0, evil_topic, wire.sent[-1][1]))
        ((_, forged),) = answers
        played = Inbound("message", wire.now + 2e-4, 0.0, sync.response_topic, forged)
        assert sync.receive(played) == "stale"
    assert len(set(seen)) == 20
