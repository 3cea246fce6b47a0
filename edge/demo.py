"""``backbeat-edge demo``: the embedded default, end to end on one machine.

Starts a private Mosquitto on a free loopback port, a bench pulse in its own process, and
the agent in this process on gpiozero's mock pins with the bench profile from ``hw/``, and
shows the live view until Ctrl-C or ``duration_s``; then stops everything cleanly. It says
where its broker is and how to watch it with ``monitor``. A pulse that exits on its own
stops the demo: its error is shown and the demo exits 1. It runs
signed: a throwaway key pair in its temporary directory, the pulse signing with the
private key, the agent holding the public one (``[security] beat_keys``). With ``nats``
the broker is a private three-node NATS cluster (:mod:`edge.nats_cluster`) instead: the
pulse on node 1, the agent listing all three (MQTT 3.1.1, NATS's gateway's version).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from edge.broker import start_mosquitto
from edge.errors import EdgeError
from edge.nats_cluster import start_nats_cluster

HW_DIR = Path(__file__).resolve().parent.parent / "hw"


def demo_config(
    broker_url: str,
    profile: Path,
    workdir: Path,
    beat_key: Path | None = None,
    protocol: str = "5",
) -> Path:
    """Write the demo's agent config (a bench agent following cluster ``demo``; with
    ``beat_key``, only frames signed by that key's private half). ``broker_url`` may list
    several brokers, comma-separated."""
    security = "" if beat_key is None else f"[security]\nbeat_keys = [{str(beat_key)!r}]\n"
    path = workdir / "agent.toml"
    path.write_text(
        "[agent]\n"
        'id = "demo:bench-01"\n'
        'cluster = "demo"\n'
        f"profile = {str(profile)!r}\n"
        "[broker]\n"
        f'url = "{broker_url}"\n'
        + ("" if protocol == "5" else f'protocol = "{protocol}"\n')
        + "[outbox]\n"
        # The demo's directory goes at its exit: claims kept there would be a promise
        # broken, so it keeps them in memory and says so.
        f"directory = {str(workdir / 'outbox')!r}\nmemory = true\n" + security,
        encoding="utf-8",
    )
    return path


def monitor_command(broker_url: str, cluster: str = "demo") -> str:
    """The command line that watches this demo from another terminal."""
    installed = Path(sys.executable).parent / "backbeat-edge"
    program = str(installed) if installed.exists() else f"{sys.executable} -m edge.cli"
    return f"{program} monitor --broker {broker_url} --cluster {cluster}"


def _watch(
    pulse: subprocess.Popen[bytes], stop: threading.Event, on_exit: Callable[[], None]
) -> None:
    """Wait for the pulse; if it exits before ``stop`` is set, call ``on_exit``."""
    while not stop.is_set():
        try:
            pulse.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            continue
        if not stop.is_set():
            on_exit()
        return


def run_demo(
    bpm: float = 60.0,
    duration_s: float | None = None,
    profile: str | None = None,
    trace_path: str | None = None,
    plain: bool = False,
    nats: bool = False,
) -> int:
    from edge.agent import Agent
    from edge.pulse import open_trace
    from edge.signing import keygen
    from edge.view import TerminalView

    # Absolute: the agent's config is written elsewhere, and counts relative paths from it.
    profile_path = Path(profile).resolve() if profile else HW_DIR / "bench.toml"
    if not profile_path.is_file():
        hint = "" if profile else " (run the demo from a checkout)"
        raise EdgeError(f"profile {str(profile_path)!r} not found{hint}")
    os.environ.setdefault("GPIOZERO_PIN_FACTORY", "mock")
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="backbeat-demo-"))
        protocol = "3.1.1" if nats else "5"
        if nats:
            cluster = stack.enter_context(start_nats_cluster())
            broker_url, pulse_url = ",".join(cluster.urls), cluster.urls[0]
            where = f"a 3-node NATS cluster, MQTT on {broker_url} (this demo's own)"
        else:
            broker_url = pulse_url = stack.enter_context(start_mosquitto()).url
            where = f"broker {broker_url} (this demo's own)"
        workdir = Path(tmp)
        private_key, public_key, _ = keygen(workdir / "demo-pulse")
        config = demo_config(broker_url, profile_path, workdir, public_key, protocol)
        watch = monitor_command(broker_url) + ("" if protocol == "5" else " --protocol 3.1.1")
        banner = f"{where}, cluster demo; watch it from another terminal with:\n  {watch}"
        print(banner, flush=True)
        pulse_log = workdir / "pulse.log"
        with pulse_log.open("wb") as pulse_err:  # read back if the pulse fails
            pulse = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "edge.cli",
                    "pulse",
                    "--broker",
                    pulse_url,
                    "--protocol",
                    protocol,
                    "--cluster",
                    "demo",
                    "--bpm",
                    str(bpm),
                    "--bar",
                    "4",
                    "--signing-key",
                    str(private_key),
                ],
                stdout=subprocess.DEVNULL,
                stderr=pulse_err,
                # A Ctrl-C in the terminal is the demo's to handle (it stops the pulse
                # itself); in the terminal's process group the pulse would die of it first
                # and look like a failure.
                start_new_session=True,
            )
        trace = open_trace(trace_path)
        done = threading.Event()
        pulse_failed = threading.Event()
        try:
            agent = Agent(config, trace=trace, on_view=TerminalView(plain=plain, banner=banner))
            agent.install_signals()

            def pulse_exited() -> None:
                pulse_failed.set()
                agent.stop()

            watcher = threading.Thread(
                target=_watch, args=(pulse, done, pulse_exited), name="demo-pulse", daemon=True
            )
            watcher.start()
            code = agent.run(duration_s=duration_s)
        finally:
            done.set()
            pulse.terminate()
            try:
                pulse.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pulse.kill()
                pulse.wait()
            if trace is not None:
                trace.close()
        counters = agent.runner.counters
        print(
            f"\ndemo stopped: {counters.fired} actions fired, {counters.missed} missed, "
            f"{counters.shed.total()} shed, {counters.dropped.total()} dropped, "
            f"{counters.claims} claims"
        )
        if pulse_failed.is_set():
            error = pulse_log.read_text(encoding="utf-8", errors="replace").strip()
            print(
                f"backbeat-edge demo: the pulse exited with code {pulse.returncode}:\n"
                f"{error or '(it said nothing)'}",
                file=sys.stderr,
            )
            return 1
        return code
