"""The link's hand-over: frames are shed on a full inbox, acknowledgements never are.

Unit tests of :class:`edge.inbox.LinkInbox`, then the real link against a real
Mosquitto: while a flood fills the inbox (nobody reads it), every PUBACK of the link's
own QoS 1 publishes is still handed over, and the drops are counted.
"""

from __future__ import annotations

import queue
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.broker import Mosquitto
from edge.config import BrokerConfig
from edge.inbox import Inbound, LinkInbox
from edge.mqtt_link import MqttLink


def _frame(i: int) -> Inbound:
    return Inbound("message", float(i), topic="t", payload=b"%d" % i)


def test_frames_are_bounded_and_controls_are_never_refused() -> None:
    inbox = LinkInbox(frame_limit=3)
    assert [inbox.offer(_frame(i)) for i in range(5)] == [True, True, True, False, False]
    for mid in range(100):  # far more than the frame bound: every ack is kept
        inbox.put_control(Inbound("ack", 0.0, mid=mid))
    inbox.put_control(Inbound("connected", 0.0))
    assert inbox.qsize() == 104 and inbox.frames_waiting == 3
    # controls first, in their order, then the frames in theirs
    got = [inbox.get_nowait() for _ in range(104)]
    assert [g.mid for g in got[:100]] == list(range(100)) and got[100].kind == "connected"
    assert [g.payload for g in got[101:]] == [b"0", b"1", b"2"]
    with pytest.raises(queue.Empty):
        inbox.get_nowait()
    assert inbox.offer(_frame(9))  # room again


def test_a_waiting_reader_wakes_for_a_control_item() -> None:
    inbox = LinkInbox(frame_limit=1)
    got: list[Inbound] = []
    reader = threading.Thread(target=lambda: got.append(inbox.get(timeout=5.0)))
    reader.start()
    time.sleep(0.05)
    inbox.put_control(Inbound("ack", 1.0, mid=7))
    reader.join(5.0)
    assert [g.mid for g in got] == [7]


def test_the_frame_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="frame_limit must be at least 1"):
        LinkInbox(0)


@pytest.mark.slow
@pytest.mark.broker
def test_acks_reach_the_loop_while_a_flood_fills_the_inbox(mosquitto: Mosquitto) -> None:
    link = MqttLink(
        BrokerConfig(url=mosquitto.url, host="127.0.0.1", port=mosquitto.port, inbox_size=50),
        "test-lanes",
        subscriptions=("flood/#",),
    )
    link.start()
    flooder = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-flooder")
    try:
        assert link.wait_connected(10.0)
        assert link.inbox.get(timeout=5.0).kind == "connected"
        flooder.connect("127.0.0.1", mosquitto.port)
        flooder.loop_start()
        for _ in range(3000):  # nobody reads the inbox: it fills up and frames are shed
            flooder.publish("flood/x", b"x" * 20, qos=0)
        deadline = time.monotonic() + 10.0
        while link.dropped_inbound < 1000 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert link.dropped_inbound >= 1000
        mids = {link.publish("claims/x", b"claim %d" % i, qos=1) for i in range(40)}
        for _ in range(3000):  # more flood while the acks come back
            flooder.publish("flood/x", b"y" * 20, qos=0)
        acked: set[int] = set()
        frames = 0
        deadline = time.monotonic() + 10.0
        while not mids <= acked and time.monotonic() < deadline:
            time.sleep(0.2)  # the loop is slow: the inbox stays full of frames
            while True:
                try:
                    item = link.inbox.get_nowait()
                except queue.Empty:
                    break
                if item.kind == "ack":
                    acked.add(item.mid)
                elif item.kind == "message":
                    frames += 1
        assert mids <= acked, f"acks lost: {sorted(mids - acked)}"
        assert frames <= 50 * 60  # frames stayed bounded: at most a full lane per read
        assert link.inbox.frames_waiting <= 50
    finally:
        flooder.loop_stop()
        flooder.disconnect()
        link.stop(timeout=1.0)


class _Ok:
    is_failure = False


def test_connected_only_after_the_loop_that_handled_the_connack() -> None:
    # paho calls on_connect before it re-sends what the dropped connection left in
    # flight; a claim published in between would overtake them (seq 49 after 64).
    link = MqttLink(BrokerConfig(inbox_size=5), "test-order", availability_topic="a/b")
    link._on_connect(link._client, None, {}, _Ok(), None)
    assert not link.connected and link.inbox.qsize() == 0
    link._announce_connected()  # what _run does once that loop() call has returned
    assert link.connected and link.inbox.get_nowait().kind == "connected"
