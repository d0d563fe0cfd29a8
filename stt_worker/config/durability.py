"""Durable mode (audio kept in JetStream until transcribed) and elastic ownership."""

from __future__ import annotations

from pydantic import BaseModel

from stt_worker.config.fields import Group, setting


class DurabilityFields(BaseModel):
    """The fields of `Group.DURABILITY`, one of the bases of `Settings`."""

    # Audio is kept in a JetStream stream until its transcript is out.
    durable: bool = setting(
        False,
        "STT_DURABLE",
        group=Group.DURABILITY,
        description="Durable mode: audio comes through a JetStream stream and is "
        "acknowledged once its transcript is published; needs JetStream on the server.",
    )
    jetstream_stream: str = setting(
        "STT_AUDIO",
        "STT_JETSTREAM_STREAM",
        group=Group.DURABILITY,
        description="The stream; created when missing (work-queue retention, file storage) "
        "over `STT_STREAM_SUBJECT`, or `STT_PARTITION_SUBJECT` with any partition when "
        "partitioned.",
    )
    durable_consumer: str = setting(
        "stt-streaming",
        "STT_DURABLE_CONSUMER",
        group=Group.DURABILITY,
        description="The durable consumer's name; partitioned, one per worker: "
        "`{name}-{index}-of-{replicas}`.",
    )
    ack_wait_s: float = setting(
        30.0,
        "STT_ACK_WAIT_S",
        group=Group.DURABILITY,
        description="Redelivery timeout of an unacknowledged message, in seconds; the "
        "worker marks the ones it still holds in progress before it runs out.",
        ge=2,
    )
    max_ack_pending: int = setting(
        100_000,
        "STT_MAX_ACK_PENDING",
        group=Group.DURABILITY,
        description="Messages delivered and not yet acknowledged before the server pauses "
        "delivery (an open utterance holds up to 1,500); the client's buffer is at least "
        "this large, so it never drops one.",
        ge=1_000,
    )
    jetstream_max_age_s: float = setting(
        3600.0,
        "STT_JETSTREAM_MAX_AGE_S",
        group=Group.DURABILITY,
        description="Audio nobody acknowledged leaves the stream after this many seconds "
        "(a replica gone for good); applies to a stream the worker creates.",
        gt=0,
    )
    stream_max_msgs_per_subject: int = setting(
        3000,
        "STT_STREAM_MAX_MSGS_PER_SUBJECT",
        group=Group.DURABILITY,
        description="Messages one session's subject may keep in the stream; the server "
        "refuses the rest (discard new per subject), so a flooding publisher loses its own "
        "excess before it reaches a worker. An honest session keeps its open utterance (30 s "
        "at most, 3,000 chunks of 10 ms) and its `start`; 0 = no limit. Applies to a stream "
        "the worker creates.",
        ge=0,
    )

    # Elastic ownership of the partitions, through JetStream KV (docs/scaling.md).
    elastic: bool = setting(
        False,
        "STT_ELASTIC",
        group=Group.DURABILITY,
        description="Elastic mode (with `STT_DURABLE` and `STT_PARTITIONS`): the workers share "
        "the partitions through leases in a JetStream KV bucket, one durable consumer per "
        "partition, whatever their number; `STT_REPLICAS` and the ordinal are not read.",
    )
    ownership_bucket: str = setting(
        "STT_OWNERSHIP",
        "STT_OWNERSHIP_BUCKET",
        group=Group.DURABILITY,
        description="Elastic mode's KV bucket of partition leases and worker heartbeats; "
        "created when missing.",
    )
    session_bucket: str = setting(
        "STT_SESSIONS",
        "STT_SESSION_BUCKET",
        group=Group.DURABILITY,
        description="Elastic mode's KV bucket of live sessions' numbering (next `utterance_id` "
        "and `sequence`, last final published), so a session that moves goes on; created "
        "when missing.",
    )
    lease_s: float = setting(
        6.0,
        "STT_LEASE_S",
        group=Group.DURABILITY,
        description="Elastic mode: a worker's leases and heartbeat expire this many seconds "
        "after its last renewal (renewed every third of it), so a dead worker's partitions "
        "are taken over within it; at most `STT_ACK_WAIT_S`.",
        ge=1.5,
    )
    worker_id: str = setting(
        "",
        "STT_WORKER_ID",
        group=Group.DURABILITY,
        description="Elastic mode: this worker's id in the leases; empty = `HOSTNAME` and a "
        "random suffix (a restarted pod is a new member).",
    )
