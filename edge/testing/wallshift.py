"""Run a ``backbeat-edge`` command with this process's wall clock moved (tests, benches).

``python -m edge.testing.wallshift run --config ...`` is ``backbeat-edge run`` with
``time.time()`` and ``time.time_ns()`` moved by ``$BACKBEAT_EDGE_TEST_WALL_OFFSET_S``
seconds and the monotonic clock untouched: an agent whose wall clock is hours off, as on
a device without NTP. (libfaketime does this for C programs, but Debian's 0.9.10 with
``DONT_FAKE_MONOTONIC=1`` makes Python's ``time.sleep`` fail with EINVAL, and without it
faked monotonic waits hang.) Every wall reading of the agent goes through the ``time``
module (``edge.clock.SystemClock.wall``, the link's arrival stamps), so this moves them all.
"""

from __future__ import annotations

import os
import sys
import time

ENV = "BACKBEAT_EDGE_TEST_WALL_OFFSET_S"


def main() -> int:
    offset = float(os.environ.get(ENV, "0"))
    offset_ns = round(offset * 1e9)
    real_time, real_time_ns = time.time, time.time_ns
    time.time = lambda: real_time() + offset
    time.time_ns = lambda: real_time_ns() + offset_ns
    from edge.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
