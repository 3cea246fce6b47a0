"""Assemble the agent process from a config and run it until told to stop.

This is what ``backbeat-edge run`` and the demo execute: build the hardware, the link, the
outbox, the probe and the systemd notifier around a :class:`~edge.runner.Runner`, install
signal handlers (SIGTERM/SIGINT stop, SIGHUP reloads), run the loop, and on the way out
drive every output to its safe state, send a final claim and ``offline``, and return 0.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING
from urllib.parse import quote

from edge.beatmark import BeatMark
from edge.clock import Clock, SystemClock
from edge.collector import Collector
from edge.config import Config, load_config
from edge.errors import ConfigError, EdgeError
from edge.files import read_regular
from edge.hardware import Hardware
from edge.mqtt_link import MqttLink
from edge.outbox import Outbox
from edge.outbox_seq import boot_id
from edge.preflight import preflight
from edge.probe import Probe
from edge.profile import Profile
from edge.runner import Runner
from edge.service import Notifier, WatchdogGate
from edge.timesync import TimeSync
from edge.topics import Topics
from edge.trust import BeatTrust, SecurityConfig

if TYPE_CHECKING:
    from edge.signing import SigningKey

log = logging.getLogger(__name__)


def client_id_for(config: Config) -> str:
    """A stable client id: the configured one, else derived from the agent id."""
    if config.broker.client_id:
        return config.broker.client_id
    return "backbeat-edge-" + config.agent.id.replace(":", "-")


def default_outbox_directory(agent_id: str, environ: Mapping[str, str]) -> Path | None:
    """Where claims are kept when ``[outbox] directory`` is not given: systemd's
    ``$STATE_DIRECTORY/outbox``, else ``$XDG_STATE_HOME`` (or ``~/.local/state``)
    ``/backbeat-edge/<agent id>/outbox``, the id made safe for a file name (``:`` is
    ``%3A``). None if there is no home to put it in (the outbox then keeps claims in memory,
    and says so)."""
    state = environ.get("STATE_DIRECTORY", "")
    if state:
        return Path(state.split(":")[0]) / "outbox"
    xdg = environ.get("XDG_STATE_HOME", "")
    if xdg and Path(xdg).is_absolute():  # the XDG spec: a relative path is to be ignored
        base = Path(xdg)
    else:
        try:
            base = Path.home() / ".local" / "state"
        except (KeyError, RuntimeError):  # no HOME and no passwd entry
            return None
    return base / "backbeat-edge" / quote(agent_id, safe="-_") / "outbox"


def outbox_config_for(config: Config, environ: Mapping[str, str] = os.environ) -> Config:
    """Place the outbox: relative to the config file if given, else the default place
    (:func:`default_outbox_directory`); ``memory = true`` keeps claims in memory, but the
    seq high-water file still goes there."""
    directory = config.outbox.directory
    if directory is None:
        directory = default_outbox_directory(config.agent.id, environ)
    elif not directory.is_absolute():
        directory = Path(config.source).parent / directory
    if directory == config.outbox.directory:
        return config
    return replace(config, outbox=replace(config.outbox, directory=directory))


def security_for(security: SecurityConfig) -> tuple[BeatTrust | None, SigningKey | None]:
    """The trust stage (None when no beat keys are configured) and the claim signer (None
    without ``signing_key``); raises ConfigError if the signing key cannot be used."""
    # Imported only where keys are configured: `cryptography` costs ~7 MB of RSS.
    trust = None
    if security.beat_keys:
        from edge.signing import Keyring

        keyring = Keyring(key.raw for key in security.beat_keys)
        trust = BeatTrust(keyring, require=security.require_signed_beats)
        log.info(
            "beat frames are checked against key(s) %s; unsigned frames are %s",
            ", ".join(keyring.kids),
            "rejected" if security.require_signed_beats else "accepted",
        )
    signer = None
    if security.signing_key is not None:
        from edge.signing import SigningKey

        signer = SigningKey.load(security.signing_key, where="security.signing_key")
        log.info("claims are signed with key %s", signer.kid)
    return trust, signer


def open_outbox(config: Config) -> Outbox:
    """The claim outbox of ``config`` (placed by :func:`outbox_config_for`), and one log line
    saying where claims are kept (a warning when not where they were meant)."""
    outbox = Outbox(config.outbox)
    level = logging.WARNING if outbox.degraded else logging.INFO
    log.log(level, "outbox: %s; incarnation %s", outbox.where(), outbox.incarnation)
    return outbox


def link_for(config: Config) -> MqttLink:
    """The MQTT link of ``config``: subscribed to the beat and bar topics and this agent's
    time responses, with this agent's availability as the last will. A time response
    wakes nothing: its t4 is its arrival, stamped then, and the exchange's pace does
    not hang on it (one wake-up a second less, ten while acquiring)."""
    topics = Topics(config.agent.topic_prefix, config.agent.cluster)
    responses = topics.time_response(config.agent.id)
    return MqttLink(
        config.broker,
        client_id_for(config),
        subscriptions=(topics.beat, topics.bar, responses),
        availability_topic=topics.availability(config.agent.id),
        quiet_topics=(responses,),
    )


def timesync_for(config: Config, link: MqttLink, clock: Clock, trust: BeatTrust | None) -> TimeSync:
    """The time exchange over ``link`` (QoS 0 requests), checked by ``trust`` when signed
    beats are required."""

    def publish(topic: str, payload: bytes) -> object:
        return link.publish(topic, payload, qos=0)

    return TimeSync(
        config.agent.topic_prefix,
        config.agent.cluster,
        config.agent.id,
        publish,
        lambda: link.connected,
        clock.monotonic,
        trust,
    )


def farewell(runner: Runner, link: MqttLink, outbox: Outbox, clock: Clock) -> None:
    """The way out after the loop: outputs safe, the final claim and ``offline`` sent (a
    final claim the broker did not acknowledge kept in the outbox for the next start), the
    outbox closed."""
    final = runner.shutdown()
    # The final claim may go straight to the link: its seq is used all the same.
    outbox.note_seq(runner.status.seq)
    undelivered = link.stop(final=final, timeout=2.0)
    runner.take_late_acks()
    for topic, payload, retain in undelivered:
        if not retain:  # the final claim: kept for the next start to send first
            outbox.append(topic, payload, clock.wall())
    outbox.close()


def lower_timer_slack() -> None:
    """Ask Linux for 1 ns timer slack on this thread: sleeps then wake ~25-50 us late
    instead of the default 50 us slack plus rounding. A no-op where prctl is missing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        pass


def _oneline(exc: BaseException) -> str:
    """An error for one log record: a ConfigError's problems joined, else its type and
    text (an unexpected error is a bug, and says which)."""
    if isinstance(exc, ConfigError):
        return f"{exc.source}: " + "; ".join(exc.problems)
    if isinstance(exc, EdgeError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class Agent:
    """One agent process: owns the runner and every adapter around it."""

    def __init__(
        self,
        config_path: str | Path,
        trace: IO[str] | None = None,
        on_view: Callable[[Runner, float], None] | None = None,
        pin_factory: object | None = None,
    ) -> None:
        self.config_path = Path(config_path)
        # Refused here, before a pin is touched: ConfigError (the config, its files, its
        # pins, a device that cannot be built) or NoPinFactory.
        config = outbox_config_for(load_config(self.config_path, read=read_regular))
        preflight(config, pin_factory)
        trust, signer = security_for(config.security)  # before any device is touched
        self.clock = SystemClock()
        self.notifier = Notifier.from_env()
        if self.notifier.problem:
            log.warning("systemd notify: %s", self.notifier.problem)
        interval = self.notifier.watchdog_interval_s
        self.gate = None if interval is None else WatchdogGate(interval)

        def make_hardware(profile: Profile) -> Hardware:
            return Hardware(profile, pin_factory=pin_factory)

        hardware = make_hardware(config.profile)
        self.outbox = open_outbox(config)
        self.link = link_for(config)
        self.probe = Probe(disk_path=config.outbox.directory)
        self.runner = Runner(
            config,
            hardware,
            self.clock,
            link=self.link,
            outbox=self.outbox,
            probe=self.probe,
            notifier=self.notifier,
            trace=trace,
            on_view=on_view,
            start_seq=self.outbox.last_seq,
            make_hardware=make_hardware,
            trust=trust,
            claim_signer=signer,
        )
        self.runner.attach_timesync(timesync_for(config, self.link, self.clock, trust))
        # With signed beats, the newest frame followed is kept for the next start, where
        # older ones are replays (edge.beatmark); the outbox's directory is the state's.
        self.beat_mark: BeatMark | None = None
        if trust is not None:
            self.beat_mark = BeatMark(config.outbox.directory, boot_id().hex())
            mark = self.beat_mark.load()
            if mark is not None:
                same_boot = self.beat_mark.same_boot(mark)
                self.runner.intake.resume(mark.stamped, mark.arrived, mark.deadline, same_boot)
            self.runner.intake.on_followed = self.beat_mark.note
            self.runner.on_side_work = self.beat_mark.flush
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._hang = threading.Event()

    # The runner owns both from here on: a reload may replace them at a beat boundary.
    @property
    def config(self) -> Config:
        return self.runner.config

    @property
    def hardware(self) -> Hardware:
        return self.runner.hardware

    # Signal handlers set flags and nudge the loop's wait (never blocking: see
    # LinkInbox.nudge); the loop also wakes at least every max_wait_s to see them.
    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stop.set()
        self.link.inbox.nudge(time.monotonic())

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._reload.set()
        self.link.inbox.nudge(time.monotonic())

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        if os.environ.get("BACKBEAT_DEBUG_HANG") == "1":
            # For watchdog tests only: SIGUSR2 hangs the loop on purpose.
            signal.signal(signal.SIGUSR2, lambda signum, frame: self._hang.set())

    def stop(self) -> None:
        self._stop.set()
        self.link.inbox.nudge(time.monotonic())

    def _reload_config(self) -> None:
        """Read and check the config again; hand it to the runner, or refuse it.

        A reload can only be refused: whatever goes wrong here (a bad or hostile file, a
        profile whose pins or devices would not build, a bug) is logged and counted in
        ``reload_errors``, and the agent runs on with its config, beat and watchdog.
        """
        self.notifier.reloading()
        try:
            new = outbox_config_for(load_config(self.config_path, read=read_regular))
            preflight(new, self.hardware.factory)
        except Exception as exc:  # a reload must never end the agent
            self.runner.counters.reload_errors += 1
            log.error(
                "reload refused, keeping the running config: %s",
                _oneline(exc),
                exc_info=not isinstance(exc, EdgeError),  # a bug: say where
            )
        else:
            # Applied at the next beat boundary: the new score and settings; the devices
            # built anew if the profile changed, else any isolated ones retried.
            self.runner.request_reload(new)
        finally:
            self.notifier.ready()

    def run(self, duration_s: float | None = None) -> int:
        lower_timer_slack()
        # Everything built so far lives as long as the process: move it out of the cyclic
        # collector's view, so a full collection in the beat loop walks only new objects.
        gc.collect()
        gc.freeze()
        # And from here on the loop collects between actions, not CPython wherever an
        # allocation crosses the threshold (edge.collector).
        gc_was_enabled = gc.isenabled()
        gc.disable()
        self.runner.collector = Collector()
        # Re-prime the CPU counters: the first sample must not measure our own start-up.
        self.probe.sample(time.monotonic(), full=False)
        self.link.start()
        self.notifier.ready()  # configured and running; the broker may come later
        end = None if duration_s is None else time.monotonic() + duration_s
        try:
            while not self._stop.is_set():
                if end is not None and time.monotonic() >= end:
                    break
                if self._reload.is_set():
                    self._reload.clear()
                    self._reload_config()
                if self._hang.is_set():
                    log.error("loop deliberately hung (BACKBEAT_DEBUG_HANG): watchdog pings stop")
                    while True:
                        time.sleep(3600)
                if self.gate is not None:  # wake for the next ping, whatever else sleeps
                    self.runner.wake_at = self.gate.next_deadline(time.monotonic())
                self.runner.run_once()
                if self.gate is not None:
                    now = time.monotonic()
                    self.gate.beat_alive(now)
                    if self.gate.due(now):
                        self.notifier.watchdog()
                        self.gate.pinged(now)
        finally:
            self.shutdown()
            log.info("%s", self.runner.collector.summary())
            self.runner.collector = None
            if gc_was_enabled:
                gc.enable()
        return 0

    def shutdown(self) -> None:
        self.notifier.stopping()
        # The runner drives the outputs safe and gives the final claim and ``offline``.
        farewell(self.runner, self.link, self.outbox, self.clock)
        if self.beat_mark is not None:
            self.beat_mark.close()
        self.hardware.close()
