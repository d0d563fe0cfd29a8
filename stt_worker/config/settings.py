"""`Settings`, the worker's settings: the fields of every group, and what spans groups."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from stt_worker.config.audio import AudioFields
from stt_worker.config.barge_in import BargeInFields
from stt_worker.config.durability import DurabilityFields
from stt_worker.config.end_of_turn import EndOfTurnFields
from stt_worker.config.engine import EngineFields
from stt_worker.config.environment import EnvSettings
from stt_worker.config.http_engine import HttpEngineFields
from stt_worker.config.limits import LimitFields
from stt_worker.config.nats_auth import NatsAuthFields
from stt_worker.config.operations import OperationFields
from stt_worker.config.partitions import PartitionFields
from stt_worker.config.tracing import TracingFields
from stt_worker.config.transport import TransportFields
from stt_worker.config.utterances import UtteranceFields
from stt_worker.config.whisper_server import WhisperServerFields


# pydantic lists the fields of the bases furthest right first, so the groups are named here
# last to first: `model_fields`, and with it docs/configuration.md, keeps `Group`'s order.
class Settings(
    TracingFields,
    OperationFields,
    DurabilityFields,
    PartitionFields,
    LimitFields,
    BargeInFields,
    EndOfTurnFields,
    UtteranceFields,
    AudioFields,
    WhisperServerFields,
    HttpEngineFields,
    EngineFields,
    NatsAuthFields,
    TransportFields,
    EnvSettings,
):
    """The worker's settings: one frozen object, read from the environment once at start.

    The CLI tools, `whisper-server` and the gateway read the same variables for what they
    share with the worker: the NATS connection, its credentials and subjects, the engine and
    its model.
    """

    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    def stream_subjects(self) -> list[str]:
        """What this worker subscribes to: the seed subject, or its share of the partitions."""
        if self.elastic:
            self._check_elastic()
            return [self.partition_subject.format(partition=p) for p in range(self.partitions)]
        if not self.partitions:
            return [self.stream_subject]
        index, replicas = self._share()
        return [
            self.partition_subject.format(partition=partition)
            for partition in range(index, self.partitions, replicas)
        ]

    def takes_session_connections(self) -> bool:
        """Whether sessions get their own subscriptions (`STT_SESSION_CONNECTIONS`)."""
        if self.session_connections == "auto":
            return not self.durable
        if self.session_connections and self.durable:
            raise ValueError("STT_SESSION_CONNECTIONS is for core NATS (STT_DURABLE=false)")
        return self.session_connections

    def _check_elastic(self) -> None:
        """Elastic mode moves partitions between durable consumers: it needs both."""
        if not (self.durable and self.partitions):
            raise ValueError("STT_ELASTIC needs STT_DURABLE=true and STT_PARTITIONS > 0")
        if self.lease_s > self.ack_wait_s:
            # A dead worker's audio must reach its successor no later than a redelivery would.
            raise ValueError("STT_LEASE_S must not exceed STT_ACK_WAIT_S")

    def jetstream_subjects(self) -> list[str]:
        """What the durable mode's stream captures: every audio subject the workers take."""
        if not self.partitions:
            return [self.stream_subject]
        return [self.partition_subject.format(partition="*")]

    def consumer_name(self) -> str:
        """This worker's durable consumer: one per partition share, named by its index."""
        if not self.partitions:
            return self.durable_consumer
        index, replicas = self._share()
        return f"{self.durable_consumer}-{index}-of-{replicas}"

    def _share(self) -> tuple[int, int]:
        """This worker's replica index and the replica count, when partitioned."""
        replicas = self.replicas or self.partitions
        index = self.replica_index if self.replica_index >= 0 else _ordinal(self.hostname)
        if index >= replicas:
            raise ValueError(
                f"replica index {index} is not below STT_REPLICAS={replicas}: set "
                "STT_REPLICA_INDEX, or scale the StatefulSet and STT_REPLICAS together"
            )
        return index, replicas


def _ordinal(hostname: str) -> int:
    """The StatefulSet ordinal: `stt-streaming-2` -> 2."""
    tail = hostname.rsplit("-", 1)[-1]
    if not tail.isdigit():
        raise ValueError(
            f"STT_PARTITIONS is set but HOSTNAME {hostname!r} has no StatefulSet ordinal: "
            "set STT_REPLICA_INDEX"
        )
    return int(tail)


def load_settings(**overrides: object) -> Settings:
    """Read the environment; keyword overrides (by field name) win, for the CLI and tests."""
    return Settings(**overrides)  # type: ignore[arg-type]
