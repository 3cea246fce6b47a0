"""Outbox damage and the durable seq: a bad record costs only itself, seq never goes back."""

from __future__ import annotations

import logging
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.agent import default_outbox_directory
from edge.config import OutboxConfig, parse_outbox
from edge.errors import ConfigProblems
from edge.outbox import Outbox, Record
from edge.outbox_format import (
    BASE,
    DATA,
    MAGIC,
    data_frame,
    mark_frame,
    scan,
    v1_body,
    v1_frame,
)
from edge.outbox_seq import FILE_NAME, SEQ_BLOCK

TOPIC = "backbeat/c1/status/relay:pi-07"


def payload(seq: int) -> bytes:
    return f"claim-{seq}-".encode() + bytes([seq % 251]) * (seq % 37)


def fill(box: Outbox, count: int) -> list[Record]:
    return [box.append(TOPIC, payload(box.last_seq + 1), 100.0 + i) for i in range(count)]


def one_segment_of_41(directory: Path) -> tuple[Path, bytes, list[int], list[Record]]:
    """A closed outbox whose only segment holds BASE and records 1-41; the frame offsets."""
    box = Outbox(OutboxConfig(directory, segment_bytes=1 << 20))
    made = fill(box, 41)
    box.close()
    (segment,) = sorted(directory.glob("seg-*.log"))
    blob = segment.read_bytes()
    offsets = [0]  # offsets[n] is where record n starts (offsets[0]: the BASE)
    at = len(mark_frame(BASE, 0))
    for record in made:
        offsets.append(at)
        at += len(data_frame(record))
    assert at == len(blob)
    return segment, blob, offsets, made


def reopen(directory: Path) -> Outbox:
    return Outbox(OutboxConfig(directory, segment_bytes=1 << 20))


def damage_and_reopen(tmp_path: Path, change: object) -> tuple[Outbox, list[Record], Path]:
    directory = tmp_path / "o"
    segment, blob, offsets, made = one_segment_of_41(directory)
    bad = change(bytearray(blob), offsets)  # type: ignore[operator]
    segment.write_bytes(bytes(bad))
    return reopen(directory), made, segment


def test_a_flipped_byte_in_record_21_of_41_costs_record_21_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def flip(blob: bytearray, offsets: list[int]) -> bytearray:
        middle = (offsets[21] + offsets[22]) // 2
        blob[middle] ^= 0x5A
        return blob

    with caplog.at_level(logging.WARNING, "edge"):
        again, made, segment = damage_and_reopen(tmp_path, flip)
    assert again.pending() == [r for r in made if r.seq != 21]  # every intact one, in order
    assert (again.corrupt, again.torn, again.lost) == (1, 0, 1)
    assert "seq 21" in caplog.text and "set aside" in caplog.text
    # Moved aside whole, never truncated; the good records were rewritten to a new segment.
    aside = segment.with_suffix(".corrupt")
    assert aside.exists() and not segment.exists()
    assert fill(again, 1)[0].seq == 42  # never back, never 1
    again.close()
    third = reopen(tmp_path / "o")
    assert third.corrupt == 0 and [r.seq for r in third.pending()][-2:] == [41, 42]
    assert third.last_seq == 42


def test_a_bad_length_field_costs_that_record_only(tmp_path: Path) -> None:
    def bad_length(blob: bytearray, offsets: list[int]) -> bytearray:
        struct.pack_into(">I", blob, offsets[21] + 4, 7)  # shorter than the real body
        return blob

    again, made, _ = damage_and_reopen(tmp_path, bad_length)
    assert again.pending() == [r for r in made if r.seq != 21]
    assert (again.corrupt, again.lost) == (1, 1)
    assert fill(again, 1)[0].seq == 42


def test_a_huge_length_field_does_not_swallow_the_rest(tmp_path: Path) -> None:
    def huge(blob: bytearray, offsets: list[int]) -> bytearray:
        struct.pack_into(">I", blob, offsets[5] + 4, len(blob) - offsets[5] - 12)
        return blob

    again, made, _ = damage_and_reopen(tmp_path, huge)
    assert again.pending() == [r for r in made if r.seq != 5]
    assert again.lost == 1


def test_a_bad_base_loses_no_record_and_seq_goes_on(tmp_path: Path) -> None:
    def bad_base(blob: bytearray, offsets: list[int]) -> bytearray:
        blob[10] ^= 0xFF
        return blob

    again, made, _ = damage_and_reopen(tmp_path, bad_base)
    assert again.pending() == made
    assert again.corrupt == 1 and again.lost == 0
    assert fill(again, 1)[0].seq == 42


def test_a_truncated_tail_is_torn(tmp_path: Path) -> None:
    def truncate(blob: bytearray, offsets: list[int]) -> bytearray:
        return blob[: offsets[41] + 9]

    again, made, segment = damage_and_reopen(tmp_path, truncate)
    assert again.pending() == made[:40]
    assert (again.torn, again.corrupt, again.lost) == (1, 0, 1)  # record 41 went with it
    assert fill(again, 1)[0].seq == 42  # 41 was handed out: the high-water file says so
    assert segment.with_suffix(".corrupt").exists()


def test_claims_in_a_zeroed_tail_are_counted_lost_and_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Zeros from record 24 on: a torn tail with nothing after it to show what it held.
    # The clean close's high-water mark does: 41 was the last seq handed out.
    def zero_from_24(blob: bytearray, offsets: list[int]) -> bytearray:
        return blob[: offsets[24]] + bytearray(len(blob) - offsets[24])

    with caplog.at_level(logging.WARNING, logger="edge.outbox_segments"):
        again, made, _ = damage_and_reopen(tmp_path, zero_from_24)
    assert again.pending() == made[:23]
    assert (again.torn, again.lost) == (1, 18)
    assert "claims lost to a torn tail: seq 24-41" in caplog.text
    assert fill(again, 1)[0].seq == 42


def test_garbage_in_the_middle_and_a_garbage_segment(tmp_path: Path) -> None:
    def garbage(blob: bytearray, offsets: list[int]) -> bytearray:
        return blob[: offsets[10]] + bytearray(b"\x00\xff" * 50 + MAGIC * 3) + blob[offsets[10] :]

    again, made, _ = damage_and_reopen(tmp_path, garbage)
    assert again.pending() == made and again.corrupt == 1 and again.lost == 0
    again.close()
    directory = tmp_path / "o"
    (directory / "seg-00000099.log").write_bytes(b"\x07" * 3000)
    third = reopen(directory)
    assert third.pending() == made and third.torn == 1
    assert fill(third, 1)[0].seq == 42
    assert (directory / "seg-00000099.corrupt").read_bytes() == b"\x07" * 3000


def test_an_empty_segment_and_an_all_zero_tail(tmp_path: Path) -> None:
    directory = tmp_path / "o"
    _, _, _, made = one_segment_of_41(directory)
    (directory / "seg-00000050.log").write_bytes(b"")
    again = reopen(directory)
    assert again.pending() == made and again.torn == again.corrupt == 0
    assert fill(again, 1)[0].seq == 42
    again.close()
    newest = sorted(directory.glob("seg-*.log"))[-1]
    newest.write_bytes(newest.read_bytes() + bytes(4096))  # a power cut's zero-filled tail
    third = reopen(directory)
    assert third.torn == 1 and third.pending() == [*made, *third.pending()[41:]]
    assert third.last_seq >= 42


def test_seq_survives_losing_every_segment(tmp_path: Path) -> None:
    directory = tmp_path / "o"
    box = Outbox(OutboxConfig(directory))
    fill(box, 30)
    # Killed (no close): the reservation is what the high-water file holds.
    for segment in directory.glob("seg-*.log"):
        segment.unlink()
    again = Outbox(OutboxConfig(directory))
    assert again.last_seq >= 30  # the reservation: a gap, never a repeat
    assert again.last_seq <= 30 + 2 * SEQ_BLOCK


def test_a_kill_on_the_same_boot_leaves_no_gap(tmp_path: Path) -> None:
    directory = tmp_path / "o"
    box = Outbox(OutboxConfig(directory))
    fill(box, 300)  # several blocks reserved on the way
    again = Outbox(OutboxConfig(directory))  # no close: a kill
    assert again.last_seq == 300


def test_a_memory_run_after_a_disk_run_never_goes_back(tmp_path: Path) -> None:
    directory = tmp_path / "o"
    box = Outbox(OutboxConfig(directory))
    for record in fill(box, 20):
        box.ack(record.seq)
    box.close()
    memory = Outbox(OutboxConfig(directory, memory=True))
    assert memory.where().startswith("claims kept in memory only (memory = true)")
    assert fill(memory, 5)[0].seq == 21
    assert not (directory / "seg-00000003.log").exists()  # nothing written but seq.hw
    first = memory.incarnation
    # Killed while in memory: the next run must not reuse 21-25.
    disk = Outbox(OutboxConfig(directory))
    assert disk.last_seq >= 25 and disk.incarnation != first
    assert len(first) == 16 and int(first, 16) >= 0


def test_the_high_water_file_is_kept_in_a_directory_made_read_only(tmp_path: Path) -> None:
    directory = tmp_path / "o"
    box = Outbox(OutboxConfig(directory))
    fill(box, 10)
    box.close()
    if not read_only_dir(directory):
        pytest.skip("cannot make a directory read-only here")
    try:
        frozen = Outbox(OutboxConfig(directory))
        assert frozen.degraded is not None  # no new segment can be made
        assert frozen.seq_problem is None  # but seq.hw is written in place
        made = fill(frozen, 100)
        assert made[0].seq == 11
    finally:
        writable_dir(directory)
    again = Outbox(OutboxConfig(directory))  # killed while in memory
    assert again.last_seq >= 110


def read_only_dir(directory: Path) -> bool:
    done = subprocess.run(["chattr", "+i", str(directory)], capture_output=True)
    if done.returncode == 0:
        return True
    directory.chmod(0o555)
    probe = directory / "probe"
    try:
        probe.touch()
    except OSError:
        return True
    probe.unlink()
    directory.chmod(0o755)
    return False


def writable_dir(directory: Path) -> None:
    subprocess.run(["chattr", "-i", str(directory)], capture_output=True)
    directory.chmod(0o755)


@pytest.fixture
def ro_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_read_only_filesystem_says_the_seq_cannot_be_kept(
    ro_tmpfs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = ro_tmpfs / "o"
    box = Outbox(OutboxConfig(directory))
    fill(box, 7)
    box.close()
    if subprocess.run(["mount", "-o", "remount,ro", str(ro_tmpfs)]).returncode != 0:
        pytest.skip("cannot remount read-only")
    with caplog.at_level(logging.WARNING, "edge"):
        frozen = Outbox(OutboxConfig(directory))
        assert fill(frozen, 1)[0].seq == 8  # never back
        assert frozen.seq_problem is not None
        frozen.close()
    assert "may repeat" in caplog.text and "incarnation" in caplog.text
    assert "lost at exit" in caplog.text  # the claim in memory is counted, not dropped


def test_the_high_water_file_survives_a_torn_slot(tmp_path: Path) -> None:
    directory = tmp_path / "o"
    box = Outbox(OutboxConfig(directory))
    fill(box, 10)
    box.close()
    path = directory / FILE_NAME
    blob = bytearray(path.read_bytes())
    # Spoil whichever slot is newest; the other one still bounds the seq from below.
    for offset in (0, 4096):
        trial = bytearray(blob)
        trial[offset + 20] ^= 0xFF
        path.write_bytes(bytes(trial))
        for segment in directory.glob("seg-*.log"):
            segment.unlink()
        again = Outbox(OutboxConfig(directory))
        assert again.last_seq >= 10 or again.last_seq == 0  # a slot from before any seq
        again.close()
        path.write_bytes(bytes(blob))


def test_format_1_segments_are_still_read(tmp_path: Path) -> None:
    directory = tmp_path / "o"
    directory.mkdir()
    records = [Record(s, TOPIC, payload(s), float(s)) for s in (1, 2, 3)]
    blob = v1_frame(v1_body(BASE, 0)) + b"".join(v1_frame(v1_body(DATA, r.seq, r)) for r in records)
    assert scan(blob).version == 1
    (directory / "seg-00000001.log").write_bytes(blob + b"\x00\x00")
    box = Outbox(OutboxConfig(directory))
    assert box.pending() == records and box.torn == 1
    assert fill(box, 1)[0].seq == 4


def test_memory_only_backlog_at_exit_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    box = Outbox(OutboxConfig(directory=None))
    fill(box, 3)
    with caplog.at_level(logging.WARNING, "edge"):
        box.close()
    assert "3 claims not delivered" in caplog.text and "lost at exit" in caplog.text


# --------------------------------------------------------------------------- placing


def test_default_directory_systemd_then_xdg_then_home(tmp_path: Path) -> None:
    assert default_outbox_directory("a:b", {"STATE_DIRECTORY": "/var/lib/x:/y"}) == Path(
        "/var/lib/x/outbox"
    )
    xdg = default_outbox_directory("bench:pi-01", {"XDG_STATE_HOME": str(tmp_path)})
    assert xdg == tmp_path / "backbeat-edge" / "bench%3Api-01" / "outbox"
    home = default_outbox_directory("x", {"XDG_STATE_HOME": "relative/ignored"})
    assert home == Path.home() / ".local/state/backbeat-edge/x/outbox"


def test_parse_outbox_memory_flag() -> None:
    problems = ConfigProblems()
    assert parse_outbox({"memory": True}, problems).memory is True
    parse_outbox({"memory": "yes"}, problems)
    assert any(item.startswith("outbox.memory") for item in problems.items)
