"""The outbox: order, out-of-order acks, restarts, bounds, torn tails, kills, disk trouble."""

from __future__ import annotations

import errno
import gc
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, cast

import pytest

from edge.config import OutboxConfig, parse_outbox
from edge.errors import ConfigProblems, OutboxError
from edge.outbox import PUBLISH_WINDOW, RECORD_OVERHEAD, Outbox, Record

ROOT = Path(__file__).resolve().parent.parent
TOPIC = "backbeat/c1/status/relay:pi-07"


def payload(seq: int) -> bytes:
    """A payload whose content and length depend on seq, so a mix-up shows."""
    return f"claim-{seq}-".encode() + bytes([seq % 251]) * (seq % 37)


def fill(box: Outbox, count: int, start_time: float = 100.0) -> list[Record]:
    return [box.append(TOPIC, payload(box.last_seq + 1), start_time + i) for i in range(count)]


def seqs(records: list[Record]) -> list[int]:
    return [r.seq for r in records]


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("seg-*.log"))


@pytest.fixture
def config(tmp_path: Path) -> OutboxConfig:
    return OutboxConfig(directory=tmp_path / "outbox", segment_bytes=1024)


# --------------------------------------------------------------------------- queue


def test_records_come_out_in_order_with_their_content(config: OutboxConfig) -> None:
    box = Outbox(config)
    made = fill(box, 5)
    assert seqs(made) == [1, 2, 3, 4, 5]
    assert box.pending() == made
    assert box.pending(limit=2) == made[:2]
    assert made[2].payload == payload(3) and made[2].topic == TOPIC
    assert made[2].enqueued_at == 102.0
    assert box.backlog == 5 and box.last_seq == 5
    assert box.degraded is None


def test_unsent_skips_inflight_and_requeue_keeps_order(config: OutboxConfig) -> None:
    box = Outbox(config)
    fill(box, 6)
    for record in box.unsent(3):
        box.mark_sent(record.seq)
    assert seqs(box.unsent(10)) == [4, 5, 6]
    assert box.inflight == 3
    box.ack(2)
    box.requeue_inflight()  # the link lost the broker with 1 and 3 in flight
    assert seqs(box.unsent(10)) == [1, 3, 4, 5, 6]
    assert seqs(box.unsent(2)) == [1, 3]
    assert box.unsent(0) == []


def test_acks_out_of_order_advance_the_head_past_contiguous_acks(config: OutboxConfig) -> None:
    box = Outbox(config)
    fill(box, 5)
    box.ack(3)
    box.ack(2)
    assert seqs(box.pending()) == [1, 4, 5]
    box.ack(1)
    assert seqs(box.pending()) == [4, 5]
    box.ack(1)  # a duplicate PUBACK
    box.ack(99)  # never existed
    assert seqs(box.pending()) == [4, 5]


def test_memory_only_outbox_works_without_a_directory() -> None:
    box = Outbox(OutboxConfig(directory=None))
    fill(box, 3)
    box.ack(2)
    assert seqs(box.pending()) == [1, 3]
    assert box.degraded is None


def test_closed_outbox_refuses_appends(config: OutboxConfig) -> None:
    box = Outbox(config)
    box.close()
    box.close()
    with pytest.raises(OutboxError, match="closed"):
        box.append(TOPIC, b"x", 1.0)


def test_bad_topic_and_oversized_record_are_refused(config: OutboxConfig) -> None:
    box = Outbox(OutboxConfig(directory=config.directory, max_bytes=2048, segment_bytes=1024))
    with pytest.raises(ValueError, match="topic"):
        box.append("", b"x", 1.0)
    with pytest.raises(ValueError, match="cannot fit max_bytes"):
        box.append(TOPIC, b"x" * 4096, 1.0)
    assert box.backlog == 0 and box.last_seq == 0


# --------------------------------------------------------------------------- restarts


def test_restart_restores_unacked_records_in_order(config: OutboxConfig) -> None:
    box = Outbox(config)
    made = fill(box, 40)
    for seq in (5, 1, 2, 40, 17, 3):
        box.ack(seq)
    box.close()
    again = Outbox(config)
    expected = [r for r in made if r.seq not in {1, 2, 3, 5, 17, 40}]
    assert again.pending() == expected
    assert again.last_seq == 40
    assert again.torn == 0
    assert fill(again, 1)[0].seq == 41


def test_restart_without_close_loses_nothing(config: OutboxConfig) -> None:
    box = Outbox(config)
    made = fill(box, 10)
    box.ack(4)
    # No close: what a kill leaves (every append and ack was flushed to the kernel).
    again = Outbox(config)
    assert again.pending() == [r for r in made if r.seq != 4]


def test_seq_survives_a_restart_after_everything_was_acked(config: OutboxConfig) -> None:
    box = Outbox(config)
    for record in fill(box, 30):
        box.ack(record.seq)
    box.close()
    again = Outbox(config)
    assert again.backlog == 0
    assert again.last_seq == 30
    assert fill(again, 1)[0].seq == 31


def test_acked_segments_are_deleted(config: OutboxConfig) -> None:
    assert config.directory is not None
    box = Outbox(config)
    made = fill(box, 200)
    assert len(segments(config.directory)) > 5
    # Dead segments go only once the newest segment's BASE is fsynced (by the syncer).
    assert box.wait_synced(timeout=30)
    for record in made:
        box.ack(record.seq)
    # Only the segment being written is left.
    assert len(segments(config.directory)) == 1
    box.close()
    assert Outbox(config).backlog == 0


def test_a_stuck_record_does_not_let_the_disk_grow_without_bound(tmp_path: Path) -> None:
    config = OutboxConfig(directory=tmp_path / "o", max_bytes=8192, segment_bytes=1024)
    box = Outbox(config)
    stuck = fill(box, 1)[0]
    for _ in range(2000):
        record = fill(box, 1)[0]
        box.ack(record.seq)
    disk = sum(p.stat().st_size for p in segments(tmp_path / "o"))
    assert disk <= config.max_bytes + 3 * config.segment_bytes
    assert box.pending() == [stuck]
    box.close()
    assert Outbox(config).pending() == [stuck]


def test_leftover_compaction_file_and_duplicates_are_harmless(config: OutboxConfig) -> None:
    assert config.directory is not None
    box = Outbox(config)
    made = fill(box, 12)
    box.ack(2)
    box.close()
    # A crash after a compaction's rename but before it deleted the old segments leaves
    # the same DATA twice; one that crashed before the rename leaves a .tmp.
    newest = segments(config.directory)[-1]
    shutil.copy(segments(config.directory)[0], newest.with_name("seg-00000099.log"))
    (config.directory / "seg-00000100.tmp").write_bytes(b"half a compaction")
    again = Outbox(config)
    assert again.pending() == [r for r in made if r.seq != 2]
    assert not list(config.directory.glob("*.tmp"))


# --------------------------------------------------------------------------- bounds


def test_count_bound_drops_the_oldest_and_counts(tmp_path: Path) -> None:
    config = OutboxConfig(directory=tmp_path / "o", max_count=5)
    box = Outbox(config)
    fill(box, 8)
    assert seqs(box.pending()) == [4, 5, 6, 7, 8]
    assert box.dropped == 3
    box.close()
    again = Outbox(config)  # dropped records stay dropped after a restart
    assert seqs(again.pending()) == [4, 5, 6, 7, 8]


def test_byte_bound_drops_the_oldest(tmp_path: Path) -> None:
    cost = RECORD_OVERHEAD + len(TOPIC) + 100
    config = OutboxConfig(directory=tmp_path / "o", max_bytes=cost * 3, segment_bytes=256)
    box = Outbox(config)
    for i in range(5):
        box.append(TOPIC, bytes(100), float(i))
    assert seqs(box.pending()) == [3, 4, 5]
    assert box.pending_bytes == 3 * cost
    assert box.dropped == 2


def test_dropping_an_inflight_record_forgets_it(tmp_path: Path) -> None:
    box = Outbox(OutboxConfig(directory=tmp_path / "o", max_count=2))
    fill(box, 2)
    box.mark_sent(1)
    fill(box, 1)
    assert box.inflight == 0
    box.ack(1)  # the broker acks it after all: ignored
    assert seqs(box.pending()) == [2, 3]


def test_smaller_bounds_at_restart_drop_the_oldest(tmp_path: Path) -> None:
    box = Outbox(OutboxConfig(directory=tmp_path / "o"))
    fill(box, 10)
    box.close()
    again = Outbox(OutboxConfig(directory=tmp_path / "o", max_count=4))
    assert seqs(again.pending()) == [7, 8, 9, 10]
    assert again.dropped == 6


# --------------------------------------------------------------------------- torn tails


@pytest.mark.slow
def test_torn_last_record_at_every_offset(tmp_path: Path) -> None:
    source = tmp_path / "src"
    config = OutboxConfig(directory=source)
    box = Outbox(config)
    made = fill(box, 5)
    box.ack(2)
    made += fill(box, 1)  # the last frame of the segment is DATA 6
    box.close()
    segment = segments(source)[-1]
    blob = segment.read_bytes()
    last_frame = len(blob) - (RECORD_OVERHEAD + len(TOPIC) + len(payload(6)))
    assert last_frame > 0
    for cut in range(last_frame, len(blob)):
        trial = tmp_path / f"cut{cut}"
        shutil.copytree(source, trial)
        (trial / segment.name).write_bytes(blob[:cut])
        again = Outbox(OutboxConfig(directory=trial))
        assert again.pending() == [r for r in made if r.seq not in (2, 6)], cut
        assert again.torn == (1 if cut > last_frame else 0), cut
        # Seq 6 was handed out (the high-water file remembers): it is never handed out again.
        assert fill(again, 1)[0].seq == 7
        again.close()
        # The torn segment was set aside whole, not cut: it is not found (nor counted) a
        # second time, and its bytes are all kept.
        assert Outbox(OutboxConfig(directory=trial)).torn == 0
        if cut > last_frame:
            assert (trial / segment.name).with_suffix(".corrupt").read_bytes() == blob[:cut]
        shutil.rmtree(trial)


def test_a_flipped_byte_is_detected_by_the_crc(tmp_path: Path) -> None:
    config = OutboxConfig(directory=tmp_path / "o")
    box = Outbox(config)
    made = fill(box, 4)
    box.close()
    segment = segments(tmp_path / "o")[-1]
    blob = bytearray(segment.read_bytes())
    blob[-3] ^= 0x40
    segment.write_bytes(bytes(blob))
    again = Outbox(config)
    assert again.pending() == made[:3]
    assert again.torn == 1


# --------------------------------------------------------------------------- kills


CHILD = textwrap.dedent("""
    import random, sys
    from pathlib import Path
    from edge.config import OutboxConfig
    from edge.outbox import Outbox

    def payload(seq):
        return f"claim-{seq}-".encode() + bytes([seq % 251]) * (seq % 37)

    directory, seed = Path(sys.argv[1]), int(sys.argv[2])
    rng = random.Random(seed)
    box = Outbox(OutboxConfig(directory, max_bytes=8192, segment_bytes=512,
                              fsync_every=int(sys.argv[3]), fsync_interval_s=0.0))
    out = sys.stdout
    out.write(f"open {box.last_seq}\\n"); out.flush()

    def ack(seq):
        out.write(f"k {seq}\\n"); out.flush()   # about to ack
        box.ack(seq)
        out.write(f"K {seq}\\n"); out.flush()   # acked

    while True:
        seq = box.last_seq + 1
        record = box.append("t/status", payload(seq), float(seq))
        out.write(f"A {record.seq}\\n"); out.flush()
        if box.dropped:
            out.write("DROPPED\\n"); out.flush()
        if seq % 3 == 0:
            ack(seq)
        if seq % 7 == 0:
            recent = box.pending()[-30:]
            if recent:
                ack(rng.choice(recent).seq)
        head = box.pending(1)
        while head and head[0].seq < seq - 120:
            ack(head[0].seq)
            head = box.pending(1)
""")


def _child_round(
    directory: Path, seed: int, fsync_every: int, delay: float
) -> list[tuple[str, int]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(directory), str(seed), str(fsync_every)],
        stdout=subprocess.PIPE,
        env=env,
    )
    assert child.stdout is not None
    try:
        first = child.stdout.readline()
        assert first.startswith(b"open "), first
        time.sleep(delay)
    finally:
        child.send_signal(signal.SIGKILL)
        # Read through the same buffered reader: readline() may have read ahead, and
        # communicate() would read the raw pipe past those buffered lines.
        out = first + child.stdout.read()
        child.stdout.close()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    events = []
    for line in out.split(b"\n")[1:-1]:  # the last piece may be cut mid-line
        kind, _, value = line.decode().partition(" ")
        assert kind != "DROPPED"
        events.append((kind, int(value)))
    return events


@pytest.mark.slow
@pytest.mark.parametrize("fsync_every", [0, 1])
def test_sigkill_at_random_moments_loses_nothing(tmp_path: Path, fsync_every: int) -> None:
    directory = tmp_path / "o"
    rng = random.Random(7 + fsync_every)
    appended: set[int] = set()
    acked: set[int] = set()
    total_torn = 0
    for round_no in range(6):
        events = _child_round(directory, round_no, fsync_every, rng.uniform(0.02, 0.35))
        maybe_acked = set()
        for kind, seq in events:
            if kind == "A":
                assert seq not in appended, f"seq {seq} handed out twice"
                appended.add(seq)
            elif kind == "k":
                maybe_acked.add(seq)
            elif kind == "K":
                acked.add(seq)
                maybe_acked.discard(seq)
        assert len(maybe_acked) <= 1  # at most the ack under way at the kill
        box = Outbox(OutboxConfig(directory, max_bytes=8192, segment_bytes=512))
        total_torn += box.torn
        recovered = box.pending()
        got = seqs(recovered)
        assert got == sorted(got), "order lost"
        for record in recovered:
            assert record.payload == payload(record.seq), record.seq
            assert record.enqueued_at == float(record.seq)
            assert record.seq not in acked, f"acked record {record.seq} came back"
            # Either reported, or the one append under way at the kill.
            assert record.seq in appended or record.seq == max(appended) + 1
        lost = appended - acked - set(got) - maybe_acked
        assert not lost, f"un-acked records lost: {sorted(lost)[:10]}"
        assert box.last_seq >= max(appended)
        # The record under way at the kill counts as appended if it survived.
        appended.update(got)
        acked.update(maybe_acked - set(got))
        box.close()
    assert len(appended) > 100  # the child really did work
    assert total_torn <= 6


# --------------------------------------------------------------------------- disk trouble


class FailingDisk:
    """An opener whose files fail like a full or read-only disk while ``error`` is set."""

    def __init__(self) -> None:
        self.error: int | None = None
        self.fail_open = False

    def _raise(self, path: Path) -> None:
        assert self.error is not None
        raise OSError(self.error, os.strerror(self.error), str(path))

    def __call__(self, path: Path, mode: str) -> BinaryIO:
        if self.error is not None and self.fail_open and "r" not in mode:
            self._raise(path)
        handle = open(path, mode)  # noqa: SIM115 - handed to the outbox, which closes it
        disk = self

        class Guarded:
            def write(self, data: bytes) -> int:
                if disk.error is not None:
                    # A full disk takes part of the write before it gives up.
                    handle.write(data[: len(data) // 2])
                    handle.flush()
                    disk._raise(path)
                return handle.write(data)

            def __getattr__(self, name: str) -> object:
                return getattr(handle, name)

            def __enter__(self) -> Guarded:
                return self

            def __exit__(self, *exc: object) -> None:
                handle.close()

        return Guarded()  # type: ignore[return-value]


def test_disk_full_degrades_to_memory_and_recovers(config: OutboxConfig) -> None:
    disk = FailingDisk()
    box = Outbox(config, opener=disk)
    before = fill(box, 3, start_time=1000.0)
    disk.error = errno.ENOSPC
    during = fill(box, 4, start_time=1010.0)
    assert box.degraded is not None and "No space left" in box.degraded
    assert seqs(box.pending()) == [1, 2, 3, 4, 5, 6, 7]
    box.ack(2)
    box.ack(5)
    disk.error = None
    # Not yet: the retry waits retry_interval_s (30 s) after the failure at 1010.
    waiting = fill(box, 1, start_time=1020.0)
    assert box.degraded is not None
    last = fill(box, 1, start_time=1050.0)
    assert box.degraded is None
    expected = [r for r in (*before, *during) if r.seq not in (2, 5)] + [*waiting, *last]
    assert box.pending() == expected
    box.close()
    # What the disk holds now is exactly the queue, torn half-write or not.
    again = Outbox(config)
    assert again.pending() == expected
    assert again.last_seq == 9


def test_read_only_disk_at_open_runs_in_memory(config: OutboxConfig) -> None:
    disk = FailingDisk()
    disk.error, disk.fail_open = errno.EROFS, True
    box = Outbox(config, opener=disk)
    assert box.degraded is not None and "Read-only" in box.degraded
    made = fill(box, 3)
    box.ack(1)
    assert box.pending() == made[1:]
    disk.error = None
    assert box.retry_disk(now=200.0)
    assert box.degraded is None
    box.close()
    assert Outbox(config).pending() == made[1:]


def test_close_saves_a_memory_backlog_if_the_disk_came_back(config: OutboxConfig) -> None:
    disk = FailingDisk()
    box = Outbox(config, opener=disk)
    disk.error = errno.ENOSPC
    made = fill(box, 5, start_time=1000.0)
    assert box.degraded is not None
    disk.error = None
    box.close()  # long before the next retry would have been due
    assert Outbox(config).pending() == made


def test_fsync_failure_degrades_too(config: OutboxConfig) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    box = Outbox(config, fsync=broken_fsync)
    assert box.degraded is not None and "Input/output" in box.degraded
    fill(box, 2)
    assert box.backlog == 2


def test_fsync_policy_counts(tmp_path: Path) -> None:
    calls: list[int] = []
    config = OutboxConfig(
        directory=tmp_path / "o", fsync_every=4, fsync_interval_s=10.0, segment_bytes=1 << 20
    )
    box = Outbox(config, fsync=calls.append)
    start = len(calls)  # the new segment's BASE frame

    def append(outbox: Outbox, now: float) -> None:
        outbox.append(TOPIC, b"x", now)
        # The fsync runs on the syncer; waiting after each append also keeps two due
        # fsyncs from coalescing into one.
        assert outbox.wait_synced(timeout=30)

    for i in range(8):
        append(box, 100.0 + i * 0.1)
    assert len(calls) - start == 2  # every 4 appends
    append(box, 200.0)  # 1 append since, but 10 s have passed
    assert len(calls) - start == 3
    every = Outbox(OutboxConfig(directory=tmp_path / "p", fsync_every=1), fsync=calls.append)
    start = len(calls)
    for i in range(5):
        append(every, 100.0 + i)
    assert len(calls) - start == 5
    box.close()
    every.close()


def test_unreadable_directory_is_not_clobbered(config: OutboxConfig) -> None:
    assert config.directory is not None
    box = Outbox(config)
    made = fill(box, 3)
    box.close()

    def unreadable(path: Path, mode: str) -> BinaryIO:
        if "r" in mode:
            raise OSError(errno.EIO, "Input/output error", str(path))
        return cast(BinaryIO, open(path, mode))  # the outbox closes it

    blind = Outbox(config, opener=unreadable)
    assert blind.degraded is not None and "cannot read" in blind.degraded
    fill(blind, 2)
    assert not blind.retry_disk(now=500.0)
    assert "could not be read" in (blind.degraded or "")
    blind.close()
    assert Outbox(config).pending() == made


# --------------------------------------------------------------------------- the syncer


class GatedFsync:
    """An fsync seam that notes the calling thread, can be held shut and can fail.

    ``gate`` is open at first; a test closes it to hold the syncer inside an fsync.
    ``error`` fails every call, ``background_error`` only calls off the test's thread.
    """

    def __init__(self) -> None:
        self.main = threading.get_ident()
        self.threads: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.error: int | None = None
        self.background_error: int | None = None

    def __call__(self, fd: int) -> None:
        self.threads.append(threading.get_ident())
        self.entered.set()
        if not self.gate.wait(timeout=60):
            raise AssertionError("the test never opened the fsync gate")
        os.fstat(fd)  # raises if the outbox closed the descriptor under the syncer
        error = self.error
        if error is None and threading.get_ident() != self.main:
            error = self.background_error
        if error is not None:
            raise OSError(error, os.strerror(error))

    def off_thread(self, start: int = 0) -> list[int]:
        return [t for t in self.threads[start:] if t != self.main]


@pytest.fixture
def seam() -> Iterator[GatedFsync]:
    gated = GatedFsync()
    yield gated
    gated.gate.set()  # never leave a syncer stuck in a failed test


def syncer_threads(directory: Path) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"outbox-fsync {directory}"]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_append_never_fsyncs_on_the_callers_thread(tmp_path: Path, seam: GatedFsync) -> None:
    directory = tmp_path / "o"
    box = Outbox(OutboxConfig(directory, fsync_every=1, segment_bytes=512), fsync=seam)
    assert seam.threads == [seam.main]  # opening fsyncs the first BASE itself
    assert not syncer_threads(directory)  # started on first need only
    made = fill(box, 60)
    box.ack(made[0].seq)
    assert box.wait_synced(timeout=30)
    assert len(segments(directory)) > 3  # rotations happened, closing segments under it
    calls = seam.threads[1:]
    assert calls and seam.off_thread(1) == calls
    assert len(set(calls)) == 1  # one syncer thread
    assert box.degraded is None and box.fsync_failures == 0  # no closed fd was synced
    box.close()


def test_a_slow_fsync_does_not_hold_up_append(tmp_path: Path, seam: GatedFsync) -> None:
    directory = tmp_path / "o"
    box = Outbox(OutboxConfig(directory, fsync_every=1, segment_bytes=1 << 20), fsync=seam)
    assert box.wait_synced(timeout=30)  # the new segment's own first sync is done
    before = len(seam.threads)
    seam.entered.clear()
    seam.gate.clear()
    made = fill(box, 1)
    assert seam.entered.wait(timeout=30)  # the syncer is now stuck in that fsync
    fds = open_fds()
    made += fill(box, 20)  # each one due an fsync
    # Every append returned, written and flushed, while the first fsync still hangs.
    assert not seam.gate.is_set() and len(seam.threads) == before + 1
    blob = segments(directory)[-1].read_bytes()
    assert all(payload(r.seq) in blob for r in made)
    # Coalesced: one follow-up waits behind the running fsync, holding one dup.
    assert open_fds() <= fds + 1
    seam.gate.set()
    assert box.wait_synced(timeout=30)
    assert len(seam.threads) == before + 2  # the stuck one and the single follow-up
    assert box.pending() == made and box.degraded is None
    box.close()
    assert Outbox(OutboxConfig(directory)).pending() == made


def test_background_fsync_failure_degrades_on_the_next_append(
    config: OutboxConfig, seam: GatedFsync
) -> None:
    config = OutboxConfig(config.directory, fsync_every=1, segment_bytes=1 << 20)
    box = Outbox(config, fsync=seam)
    seam.error = errno.EIO
    made = fill(box, 1, start_time=1000.0)
    assert box.wait_synced(timeout=30)
    assert box.degraded is None  # the loop thread has not looked yet
    made += fill(box, 1, start_time=1001.0)
    assert box.degraded is not None
    assert "background fsync" in box.degraded and "Input/output error" in box.degraded
    assert box.fsync_failures == 1
    made += fill(box, 2, start_time=1002.0)  # in memory now
    assert box.pending() == made
    seam.error = None
    made += fill(box, 1, start_time=1031.0)  # retry_interval_s later: rewritten to disk
    assert box.degraded is None
    box.close()
    assert Outbox(config).pending() == made


def test_close_joins_the_syncer_then_fsyncs_on_the_callers_thread(
    tmp_path: Path, seam: GatedFsync
) -> None:
    directory = tmp_path / "o"
    box = Outbox(OutboxConfig(directory, fsync_every=3), fsync=seam)
    made = fill(box, 10)
    assert syncer_threads(directory)
    before = len(seam.threads)
    box.close()
    assert not syncer_threads(directory)
    assert seam.threads[-1] == seam.main  # the final fsync, after the syncer was joined
    assert len(seam.threads) > before
    assert seam.off_thread() and seam.main not in seam.threads[1:before]
    assert Outbox(OutboxConfig(directory)).pending() == made


def test_a_background_failure_found_at_close_rewrites_the_queue(
    tmp_path: Path, seam: GatedFsync
) -> None:
    directory = tmp_path / "o"
    box = Outbox(OutboxConfig(directory, fsync_every=1), fsync=seam)
    seam.background_error = errno.ENOSPC
    made = fill(box, 5)
    box.ack(3)
    box.close()  # finds the failure, compacts (fsync on this thread works), fsyncs
    assert box.fsync_failures >= 1
    assert box.degraded is None
    assert Outbox(OutboxConfig(directory)).pending() == [r for r in made if r.seq != 3]


def test_dead_segments_stay_until_the_new_base_is_synced(tmp_path: Path, seam: GatedFsync) -> None:
    directory = tmp_path / "o"
    config = OutboxConfig(directory, fsync_every=0, fsync_interval_s=0.0, segment_bytes=256)
    box = Outbox(config, fsync=seam)
    seam.gate.clear()
    made = fill(box, 12)
    on_disk = segments(directory)
    assert len(on_disk) > 3
    for record in made[:-1]:
        box.ack(record.seq)
    # Dead segments in front, but the newest BASE is not known to be durable yet.
    assert segments(directory) == on_disk
    seam.gate.set()
    assert box.wait_synced(timeout=30)
    box.ack(made[-1].seq)
    assert len(segments(directory)) == 1
    box.close()
    again = Outbox(config)
    assert again.backlog == 0 and again.last_seq == 12


def test_an_outbox_dropped_without_close_lets_its_syncer_go(tmp_path: Path) -> None:
    directory = tmp_path / "o"
    box = Outbox(OutboxConfig(directory, fsync_every=1))
    fill(box, 2)
    (thread,) = syncer_threads(directory)
    del box
    gc.collect()
    thread.join(timeout=30)
    assert not thread.is_alive()


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_real_full_and_read_only_filesystem(tiny_tmpfs: Path) -> None:
    config = OutboxConfig(directory=tiny_tmpfs / "o", max_bytes=1 << 20, segment_bytes=8192)
    box = Outbox(config)
    records = []
    for i in range(400):  # ~120 KiB of claims into a 64 KiB filesystem
        records.append(box.append(TOPIC, bytes(300), 1000.0 + i * 0.01))
    assert box.degraded is not None and "No space left" in box.degraded
    assert box.pending() == records
    for record in records[:350]:
        box.ack(record.seq)
    # Acks free no disk while in memory; make room by hand, as an operator would. A
    # deleted segment's space comes back once the syncer has closed its descriptor.
    for path in segments(tiny_tmpfs / "o"):
        path.unlink()
    assert box.wait_synced(timeout=30)
    assert box.retry_disk(now=2000.0), box.degraded
    assert box.degraded is None
    box.close()
    assert Outbox(config).pending() == records[350:]
    ro = subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], capture_output=True)
    if ro.returncode != 0:
        pytest.skip("cannot remount read-only")
    frozen = Outbox(config)
    assert frozen.pending() == records[350:]  # reading still works
    assert frozen.degraded is not None and "Read-only" in frozen.degraded
    frozen.append(TOPIC, b"x", 3000.0)
    assert frozen.backlog == 51


# --------------------------------------------------------------------------- config


def test_parse_outbox_defaults_and_values(tmp_path: Path) -> None:
    problems = ConfigProblems()
    assert parse_outbox({}, problems) == OutboxConfig(directory=None)
    got = parse_outbox(
        {
            "directory": str(tmp_path),
            "max_bytes": 65536,
            "max_count": 50,
            "fsync_every": 1,
            "fsync_interval_s": 0,
            "segment_bytes": 4096,
            "retry_interval_s": 5,
        },
        problems,
    )
    assert got == OutboxConfig(
        directory=tmp_path,
        max_bytes=65536,
        max_count=50,
        fsync_every=1,
        fsync_interval_s=0.0,
        segment_bytes=4096,
        retry_interval_s=5.0,
    )
    assert not problems


def test_parse_outbox_reports_every_problem() -> None:
    problems = ConfigProblems()
    got = parse_outbox(
        {
            "directory": 3,
            "max_bytes": "big",
            "max_count": 0,
            "fsync_every": -1,
            "fsync_interval_s": float("inf"),
            "retry_interval_s": True,
            "segment_bytes": 10,
            "dir": "x",
        },
        problems,
        "agent.outbox",
    )
    assert got == OutboxConfig(directory=None)
    wheres = {item.split(":")[0] for item in problems.items}
    assert wheres == {
        f"agent.outbox.{k}"
        for k in (
            "directory",
            "max_bytes",
            "max_count",
            "fsync_every",
            "fsync_interval_s",
            "retry_interval_s",
            "segment_bytes",
            "dir",
        )
    }


def test_parse_outbox_keeps_segments_within_max_bytes() -> None:
    problems = ConfigProblems()
    got = parse_outbox({"max_bytes": 2048}, problems)
    assert got.segment_bytes == 2048 and not problems
    parse_outbox({"max_bytes": 2048, "segment_bytes": 4096}, problems)
    assert any("segment_bytes" in p for p in problems.items)


# --------------------------------------------------------------------------- publish window


def test_the_publish_window_keeps_at_most_its_size_in_flight(config: OutboxConfig) -> None:
    box = Outbox(config)
    fill(box, PUBLISH_WINDOW + 5)
    first = box.to_publish()
    assert seqs(first) == list(range(1, PUBLISH_WINDOW + 1))
    for mid, record in enumerate(first, start=100):
        box.published(record.seq, mid)
    assert box.to_publish() == [] and box.inflight == PUBLISH_WINDOW
    assert box.acked(101) and box.acked(100)  # acks in any order, by the link's mid
    assert not box.acked(101) and not box.acked(999)  # twice, or not ours: no
    assert seqs(box.to_publish()) == [PUBLISH_WINDOW + 1, PUBLISH_WINDOW + 2]
    assert seqs(box.pending())[:2] == [3, 4] and box.backlog == PUBLISH_WINDOW + 3


def test_a_dropped_record_holds_its_window_slot_until_the_link_acks_it(tmp_path: Path) -> None:
    box = Outbox(OutboxConfig(directory=None, max_count=PUBLISH_WINDOW))
    fill(box, PUBLISH_WINDOW)
    for mid, record in enumerate(box.to_publish(), start=1):
        box.published(record.seq, mid)
    fill(box, 1)  # the bound drops record 1, which the link still holds as mid 1
    assert box.dropped == 1 and seqs(box.unsent(10)) == [PUBLISH_WINDOW + 1]
    assert box.to_publish() == []  # the window counts what the link holds
    assert box.acked(1)  # ours, though the record is gone
    assert seqs(box.to_publish()) == [PUBLISH_WINDOW + 1]
