"""Upstream BACKBEAT runs on NATS: the agent must work through NATS's MQTT gateway.

A real nats-server (Debian's package) with JetStream and MQTT enabled on loopback; a NATS
client (nats-py) publishes JSON BeatFrames on ``backbeat.<cluster>.beat`` as an upstream
Pulse would; the agent, speaking MQTT 3.1.1 to the gateway, must follow them, and its
claims must arrive on ``backbeat.<cluster>.status.<agent>``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge.broker import free_port, wait_for_port
from edge.harness import read_trace, start_agent, write_agent_config
from edge.messages import decode_status_claim
from edge.testing.profiles import LED_TOGGLE

pytestmark = [pytest.mark.broker, pytest.mark.slow]

PROFILE = LED_TOGGLE


async def _drive(nats_port: int, beats: int, bpm: float) -> list[bytes]:
    import nats

    nc = await nats.connect(f"nats://127.0.0.1:{nats_port}")
    claims: list[bytes] = []

    async def on_claim(msg: object) -> None:
        claims.append(msg.data)  # type: ignore[attr-defined]

    await nc.subscribe("backbeat.bench.status.>", cb=on_claim)
    beat_s = 60.0 / bpm
    start = time.time() + 0.2
    for k in range(beats):
        at = start + k * beat_s
        await asyncio.sleep(max(0.0, at - time.time()))
        deadline = datetime.fromtimestamp(at + beat_s / 3, UTC).isoformat().replace("+00:00", "Z")
        frame = {
            "type": "backbeat.beatframe.v1",
            "cluster_id": "bench",
            "beat_index": k,
            "downbeat": k % 4 == 0,
            "phase": "plan",
            "hlc": f"{int(at) & 0xFFFF:04x}:0000:0001",
            "deadline_at": deadline,
            "tempo_bpm": bpm,
            "window_id": f"{k // 4:032x}",
        }
        await nc.publish("backbeat.bench.beat", json.dumps(frame).encode())
    await asyncio.sleep(1.0)
    await nc.drain()
    return claims


def test_agent_follows_a_nats_pulse_through_the_mqtt_gateway(
    tmp_path: Path, nats_server: str
) -> None:
    binary = nats_server
    nats_port, mqtt_port = free_port(), free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(
        f"listen: 127.0.0.1:{nats_port}\nserver_name: backbeat_test\n"
        f'jetstream {{ store_dir: "{tmp_path / "js"}" }}\n'
        f"mqtt {{ listen: 127.0.0.1:{mqtt_port} }}\n",
        encoding="utf-8",
    )
    server = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        assert wait_for_port(nats_port, 10) and wait_for_port(mqtt_port, 10)
        # NATS's MQTT gateway speaks MQTT 3.1.1.
        config = write_agent_config(
            tmp_path, f"mqtt://127.0.0.1:{mqtt_port}", PROFILE, broker_extra='protocol = "3.1.1"\n'
        )
        agent = start_agent(config, tmp_path / "agent.jsonl", tmp_path / "agent.log")
        try:
            time.sleep(2.0)  # connected and subscribed before the first beat
            raw_claims = asyncio.run(_drive(nats_port, beats=24, bpm=240))
        finally:
            assert agent.stop() == 0, agent.log()
    finally:
        server.terminate()
        server.wait(timeout=10)
    claims = [decode_status_claim(c) for c in raw_claims]
    assert claims, f"no claims arrived over NATS\n{agent.log()}"
    assert all(c.agent_id == "bench:pi-01" for c in claims)
    beats = sorted({c.beat_index for c in claims})
    assert beats[-1] >= 15, beats
    states = {dict(c.metadata or {}).get("sync", {}).get("state") for c in claims}
    assert "locked" in states, states
    fired = [r for r in read_trace(tmp_path / "agent.jsonl") if r["fired_mono"]]
    assert len(fired) >= 10
