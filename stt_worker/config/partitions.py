"""Sharing the sessions among replicas by NATS subject-mapping partitions."""

from __future__ import annotations

from pydantic import BaseModel

from stt_worker.config.fields import Group, setting


class PartitionFields(BaseModel):
    """The fields of `Group.PARTITIONS`, one of the bases of `Settings`."""

    # NATS subject-mapping partitions, see k8s/README.md.
    partitions: int = setting(
        0,
        "STT_PARTITIONS",
        group=Group.PARTITIONS,
        description="Partition count of the server's `partition(N, 1)` subject mapping; "
        "0 = not partitioned, the worker subscribes to `STT_STREAM_SUBJECT`.",
        ge=0,
        le=1024,
    )
    replicas: int = setting(
        0,
        "STT_REPLICAS",
        group=Group.PARTITIONS,
        description="Workers sharing the partitions (0 = `STT_PARTITIONS`); worker *i* takes "
        "the partitions *p* with *p* mod `STT_REPLICAS` = *i*.",
        ge=0,
        le=1024,
    )
    replica_index: int = setting(
        -1,
        "STT_REPLICA_INDEX",
        group=Group.PARTITIONS,
        description="This worker's *i*; -1 = the StatefulSet ordinal at the end of "
        '`HOSTNAME` ("stt-2" -> 2).',
        ge=-1,
    )
    hostname: str = setting(
        "",
        "HOSTNAME",
        group=Group.PARTITIONS,
        description="The pod's host name, read for its StatefulSet ordinal when partitioned "
        "and `STT_REPLICA_INDEX` is -1.",
    )
    partition_subject: str = setting(
        "ai.voice.partitioned.{partition}.*",
        "STT_PARTITION_SUBJECT",
        group=Group.PARTITIONS,
        description="The mapping's destination subjects; `{partition}` is the partition number.",
    )
