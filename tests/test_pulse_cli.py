"""The pulse and timekeeper commands' edges: what their command lines refuse before they
connect, the files they read and write, the tempo topic, and their broker client ids."""

from __future__ import annotations

import pytest

from edge.cli import main

#: No broker listens here: a command that got as far as connecting would say so instead.
NOWHERE = "mqtt://127.0.0.1:9"


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["pulse", "--cluster", "bench", "--bpm", "60", "--start-beat", "-1"], "--start-beat"),
        (
            ["pulse", "--cluster", "bench", "--bpm", "60", "--start-beat", "9" * 20],
            "--start-beat",
        ),
        (["pulse", "--cluster", "bench", "--bpm", "60", "--start-beat", "x"], "--start-beat"),
        (["pulse", "--cluster", "bad/+", "--bpm", "60"], "--cluster"),
        (["pulse", "--cluster", "bench", "--bpm", "60", "--prefix", "a/#"], "--prefix"),
        (["monitor", "--cluster", "bench", "--prefix", "a/#"], "--prefix"),
        (["monitor", "--cluster", "b/#"], "--cluster"),
        (["timekeeper", "--cluster", "bench", "--prefix", "a/+"], "--prefix"),
        (["timekeeper", "--cluster", "b/+"], "--cluster"),
    ],
)
def test_a_bad_cluster_prefix_or_start_beat_is_a_usage_error(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--broker", NOWHERE, "--connect-timeout", "0.1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"backbeat-edge {argv[0]}: error: argument {option}:" in err, err
    assert "usage:" in err and "Traceback" not in err and "broker" not in err.splitlines()[-1]


def test_the_tools_take_the_agents_rule_for_clusters_and_prefixes() -> None:
    from edge.cli import build_parser

    args = build_parser().parse_args(
        ["pulse", "--cluster", "bench-2_a", "--bpm", "60", "--prefix", "site/backbeat/"]
    )
    assert (args.cluster, args.prefix) == ("bench-2_a", "site/backbeat")  # as agent.topic_prefix
    assert build_parser().parse_args(["pulse", "--cluster", "b", "--bpm", "1"]).start_beat == 0
