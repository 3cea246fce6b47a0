"""This project's MQTT topics (``spec/backbeat-contract.md``), built from the topic prefix
and the cluster id."""

from __future__ import annotations


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
