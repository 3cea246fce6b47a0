"""Fleet rollout: the health gate against a real broker, and the staged playbook run locally.

The devices are three temporary roots on this machine (ansible_connection=local), each with
the old version installed by scripts/install from a local wheelhouse (into the first; the
others are copies of it). A fake agent (a paho test peer) speaks for them on a real
Mosquitto: retained ``online`` and CBOR StatusClaims that report the version installed in
each root and, for the device made broken, a sync state that is not ``locked``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.broker import Mosquitto
from edge.messages import StatusClaim, encode

ROOT = Path(__file__).resolve().parent.parent
HEALTH = ROOT / "scripts" / "fleet" / "health_check.py"
PLAYBOOK = ROOT / "scripts" / "fleet" / "rollout.yml"
INSTALL = ROOT / "scripts" / "install"
CLUSTER = "bench"
OLD, NEW = "9.0.0", "9.1.0"


class FakeAgents:
    """Speaks for a few agents on the broker, as a running backbeat-edge would."""

    def __init__(self, broker: Mosquitto) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="fake-agents", protocol=mqtt.MQTTv5
        )
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.agents: dict[str, dict[str, object]] = {}
        self.beat = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(
        self,
        agent_id: str,
        *,
        sync: str = "locked",
        version: str | Path = NEW,
        availability: str | None = "online",
        payload: bytes | None = None,
    ) -> None:
        """``version`` is a string, or the VERSION file of a root to read it from."""
        self.agents[agent_id] = {"sync": sync, "version": version, "payload": payload}
        if availability is not None:
            topic = f"backbeat/{CLUSTER}/agents/{agent_id}/availability"
            self.client.publish(topic, availability, qos=1, retain=True).wait_for_publish(5)

    def set(self, agent_id: str, **changes: object) -> None:
        self.agents[agent_id].update(changes)

    def publish_beat(self) -> None:
        self.beat += 1
        for agent_id, spec in list(self.agents.items()):
            payload = spec["payload"]
            if payload is None:
                version = spec["version"]
                if isinstance(version, Path):
                    version = version.read_text().strip() if version.exists() else "none"
                claim = StatusClaim(
                    agent_id=agent_id,
                    beat_index=self.beat,
                    state="executing",
                    hlc="0001:0002:0003",
                    metadata={
                        "sync": {"state": spec["sync"], "error_bound_ms": 0.8},
                        "agent_version": version,
                    },
                )
                payload = encode(claim)
            assert isinstance(payload, bytes)
            self.client.publish(f"backbeat/{CLUSTER}/status/{agent_id}", payload, qos=0)

    def start(self, period_s: float = 0.05) -> None:
        def loop() -> None:
            while not self._stop.wait(period_s):
                self.publish_beat()

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def agents(mosquitto: Mosquitto) -> Iterator[FakeAgents]:
    fake = FakeAgents(mosquitto)
    yield fake
    fake.close()


def health(broker: Mosquitto, agent_id: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(HEALTH),
            "--broker",
            broker.url,
            "--cluster",
            CLUSTER,
            "--agent-id",
            agent_id,
            "--claims",
            "2",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


# --------------------------------------------------------------------------- the health gate


def test_health_gate_passes_an_online_locked_agent(
    mosquitto: Mosquitto, agents: FakeAgents
) -> None:
    agents.add("bench:pi-01")
    agents.start()
    got = health(mosquitto, "bench:pi-01", "--timeout", "30", "--expect-version", NEW)
    assert got.returncode == 0, got.stdout + got.stderr
    assert got.stdout.startswith("healthy: bench:pi-01 online")


def test_health_gate_reads_json_claims_too(mosquitto: Mosquitto, agents: FakeAgents) -> None:
    claim = StatusClaim(
        agent_id="bench:pi-01",
        beat_index=7,
        state="idle",
        hlc="0001:0002:0003",
        metadata={"sync": "locked"},
    )
    agents.add("bench:pi-01", payload=encode(claim, "json"))
    agents.start()
    got = health(mosquitto, "bench:pi-01", "--timeout", "30")
    assert got.returncode == 0, got.stdout + got.stderr


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"sync": "free_running"}, "none locked (last sync state 'free_running')"),
        ({"availability": "offline"}, "is 'offline', not 'online'"),
        ({"availability": None}, "never announced availability"),
        ({"version": OLD}, f"runs version {OLD}, expected {NEW}"),
        ({"payload": b"\xa1\x61x\x01"}, "sent no valid status claims"),
    ],
)
def test_health_gate_fails_with_a_clear_reason(
    mosquitto: Mosquitto, agents: FakeAgents, spec: dict[str, object], reason: str
) -> None:
    agents.add("bench:pi-01", **spec)  # type: ignore[arg-type]
    agents.start()
    got = health(
        mosquitto, "bench:pi-01", "--beats", "2", "--tempo-bpm", "120", "--expect-version", NEW
    )
    assert got.returncode == 1, got.stdout + got.stderr
    assert got.stdout.startswith("unhealthy: bench:pi-01 ")
    assert reason in got.stdout


def test_health_gate_ignores_other_agents(mosquitto: Mosquitto, agents: FakeAgents) -> None:
    agents.add("bench:pi-02")  # healthy, but not the one asked about
    agents.start()
    got = health(mosquitto, "bench:pi-01", "--timeout", "1")
    assert got.returncode == 1
    assert "never announced availability" in got.stdout


def test_health_gate_reports_an_unreachable_broker(mosquitto: Mosquitto) -> None:
    url = mosquitto.url
    mosquitto.stop()
    got = subprocess.run(
        [
            sys.executable,
            str(HEALTH),
            "--broker",
            url,
            "--cluster",
            CLUSTER,
            "--agent-id",
            "bench:pi-01",
            "--timeout",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert got.returncode == 3
    assert got.stdout.startswith("unreachable: cannot connect to")


def test_health_gate_rejects_a_bad_broker_url() -> None:
    got = subprocess.run(
        [
            sys.executable,
            str(HEALTH),
            "--broker",
            "http://x",
            "--cluster",
            CLUSTER,
            "--agent-id",
            "a",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert got.returncode == 2
    assert "--broker must be mqtt://" in got.stderr


# --------------------------------------------------------------------------- the playbook


def ansible_playbook() -> Path:
    """ansible-playbook in the project venv, installed by scripts/fleet-setup if missing."""
    tool = Path(sys.executable).parent / "ansible-playbook"
    if not tool.exists():
        try:
            proc = subprocess.run(
                [str(ROOT / "scripts" / "fleet-setup")], capture_output=True, text=True, timeout=300
            )
        except subprocess.TimeoutExpired:
            pytest.skip("ansible-core could not be installed (scripts/fleet-setup timed out)")
        if proc.returncode != 0 or not tool.exists():
            pytest.skip(f"ansible-core could not be installed: {proc.stderr.strip()[-300:]}")
    return tool


def build_wheels(tmp: Path) -> Path:
    """A wheelhouse holding backbeat-edge built from this checkout as OLD and as NEW."""
    house = tmp / "wheelhouse"
    house.mkdir()
    procs = []
    for version in (OLD, NEW):
        src = tmp / f"src-{version}"
        shutil.copytree(ROOT / "edge", src / "edge", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "README.md", src / "README.md")
        shutil.copy(ROOT / "pyproject.toml", src / "pyproject.toml")
        init = src / "edge" / "__init__.py"  # where pyproject reads the version from
        text = init.read_text()
        assert '\n__version__ = "' in text
        lines = [
            f'__version__ = "{version}"' if line.startswith("__version__ = ") else line
            for line in text.splitlines()
        ]
        init.write_text("\n".join(lines) + "\n")
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "wheel",
                    "-q",
                    "--no-deps",
                    "-w",
                    str(house),
                    str(src),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
    return house


def seed_device(root: Path) -> None:
    etc = root / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\n")


def installed_version(root: Path) -> str:
    """What the device's venv really holds, not only what VERSION says."""
    python = root / "opt" / "backbeat-edge" / "venv" / "bin" / "python"
    out = subprocess.run(
        [
            str(python),
            "-I",
            "-c",
            "import importlib.metadata as m;print(m.version('backbeat-edge'))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    assert (root / "opt" / "backbeat-edge" / "VERSION").read_text().strip() == out
    return out


@pytest.mark.slow
@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None,
    reason="the installer needs root and shadow's useradd --prefix",
)
def test_rollout_stops_at_a_failing_wave_and_rolls_it_back(
    tmp_path: Path, mosquitto: Mosquitto, agents: FakeAgents
) -> None:
    tool = ansible_playbook()
    house = build_wheels(tmp_path)
    devices = {name: tmp_path / name for name in ("dev1", "dev2", "dev3")}
    env = {**os.environ, "BACKBEAT_PIP_ARGS": "--no-deps"}
    # One device is installed by scripts/install; the others start as copies of it (a venv
    # run as venv/bin/python, which is all the installer and the checks below use, works
    # from its copy): the rollout is what is tested, and three venvs at once cost the most.
    first, *others = devices.values()
    seed_device(first)
    proc = subprocess.run(
        [
            str(INSTALL),
            "--prefix",
            str(first),
            "--version",
            OLD,
            "--wheelhouse",
            str(house),
            "--no-systemctl",
            "--no-start",
            "--profile",
            str(ROOT / "systemd" / "agent.example.toml"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout
    for root in others:
        shutil.copytree(first, root, symlinks=True)
    for root in devices.values():
        assert installed_version(root) == OLD

    # The agents report what is installed; dev2 (the 30% wave) never locks to the beat.
    for name, root in devices.items():
        agents.add(
            f"{CLUSTER}:{name}",
            version=root / "opt/backbeat-edge/VERSION",
            sync="free_running" if name == "dev2" else "locked",
        )
    agents.start()

    inventory = tmp_path / "inventory.ini"
    inventory.write_text(
        "[devices]\n"
        + "".join(
            f"{name} backbeat_root={root} backbeat_agent_id={CLUSTER}:{name}\n"
            for name, root in devices.items()
        )
        + "\n[devices:vars]\n"
        "ansible_connection=local\n"
        f"ansible_python_interpreter={sys.executable}\n"
        f"backbeat_health_python={sys.executable}\n"
        f"backbeat_cluster={CLUSTER}\n"
        f"backbeat_broker_url={mosquitto.url}\n"
        f"backbeat_wheelhouse={house}\n"
        "backbeat_pip_args=--no-deps\n"
        "backbeat_systemctl=false\n"
        "backbeat_become=false\n"
        "backbeat_health_beats=6\n"
        "backbeat_health_tempo_bpm=120\n"
        "backbeat_health_claims=2\n"
    )
    (tmp_path / "ansible.cfg").write_text("[defaults]\n")
    ansible_env = {
        **os.environ,
        "LC_ALL": "C.UTF-8",
        "LANG": "C.UTF-8",
        "ANSIBLE_CONFIG": str(tmp_path / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"),
        "ANSIBLE_REMOTE_TEMP": str(tmp_path / "ansible-remote"),
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_PIPELINING": "1",
        "TMPDIR": str(tmp_path),
    }

    run = subprocess.run(
        [str(tool), "-i", str(inventory), str(PLAYBOOK), "-e", f"backbeat_version={NEW}"],
        capture_output=True,
        text=True,
        env=ansible_env,
        timeout=600,
        cwd=tmp_path,
    )
    log = run.stdout + run.stderr
    assert run.returncode != 0, log
    # Canary upgraded and healthy; dev2 failed its gate and was rolled back; dev3 never touched.
    assert installed_version(devices["dev1"]) == NEW, log
    assert installed_version(devices["dev2"]) == OLD, log
    assert installed_version(devices["dev3"]) == OLD, log
    assert not (devices["dev3"] / "var/cache/backbeat-edge/rollout").exists(), log
    assert f"dev2 failed after installing {NEW}" in log
    assert "none locked (last sync state 'free_running')" in log
    assert f"rolled back to {OLD}" in log
    assert "dev3" not in log.split("PLAY RECAP")[1]  # the rollout stopped before the last wave
