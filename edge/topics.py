"""This project's MQTT topics (``spec/backbeat-contract.md``), built from the topic prefix
and the cluster id, and the one rule for each of the two (the config's and the tools')."""

from __future__ import annotations

import re

#: A cluster id (the contract's ``cluster_id``): a single topic level, no wildcards.
CLUSTER_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
#: A topic prefix: any topic without wildcards (``+``, ``#``) or white space.
TOPIC_PREFIX = re.compile(r"[^#+\s]+")


def cluster_problem(value: object) -> str | None:
    """What is wrong with ``value`` as a cluster id (None: nothing)."""
    if isinstance(value, str) and CLUSTER_ID.fullmatch(value):
        return None
    return f"must match [a-zA-Z0-9_-]{{1,64}}, got {value!r}"


def prefix_problem(value: object) -> str | None:
    """What is wrong with ``value`` as a topic prefix (None: nothing); a trailing ``/``
    is dropped by whoever uses it."""
    if isinstance(value, str) and TOPIC_PREFIX.fullmatch(value):
        return None
    return f"must be a topic without wildcards, got {value!r}"


class Topics:
    """This project's MQTT binding (``spec/backbeat-contract.md``)."""

    def __init__(self, prefix: str, cluster: str) -> None:
        self.prefix = prefix
        self.cluster = cluster

    @property
    def beat(self) -> str:
        return f"{self.prefix}/{self.cluster}/beat"

    @property
    def bar(self) -> str:
        return f"{self.prefix}/{self.cluster}/bar"

    def status(self, agent_id: str) -> str:
        return f"{self.prefix}/{self.cluster}/status/{agent_id}"

    @property
    def all_status(self) -> str:
        return f"{self.prefix}/{self.cluster}/status/+"

    def availability(self, agent_id: str) -> str:
        return f"{self.prefix}/{self.cluster}/agents/{agent_id}/availability"

    @property
    def all_availability(self) -> str:
        return f"{self.prefix}/{self.cluster}/agents/+/availability"

    @property
    def pulse_control(self) -> str:
        return f"{self.prefix}/{self.cluster}/pulse/tempo"

    def time_request(self, agent_id: str) -> str:
        return f"{self.prefix}/{self.cluster}/time/req/{agent_id}"

    def time_response(self, agent_id: str) -> str:
        return f"{self.prefix}/{self.cluster}/time/resp/{agent_id}"

    @property
    def all_time_requests(self) -> str:
        return f"{self.prefix}/{self.cluster}/time/req/+"
