"""Prometheus metrics of one worker: what it receives, publishes, computes and waits for.

Names carry their unit (`_seconds`, `_bytes`, `_total`); labels take fixed values only
(`engine`, `kind`, `code`, `reason`), never a session id, so the series count is bounded.
Each `Metrics` has its own registry, so several workers in one process (tests) stay apart.
Beside the worker's own series it holds the standard process collectors and
`stt_build_info` (`build.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from stt_worker.runtime.telemetry.build import UNKNOWN_COMMIT, register_process_metrics

# Inference and latency: tens of ms (short utterances on a GPU) to a 30 s window on a CPU.
_SECONDS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
_RATIO = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0)
_WAIT = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The `operation` label of `stt_ack_failures_total`.
ACK_OPERATIONS = ("ack", "in_progress")


class Metrics:
    """The worker's instruments; `watch` adds values read at scrape time (queue depths)."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, commit: str = UNKNOWN_COMMIT
    ) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        register_process_metrics(r, build_info="stt_build_info", commit=commit)
        self.sessions_opened = Counter("stt_sessions_opened", "Sessions opened", registry=r)
        self.sessions_closed = Counter(
            "stt_sessions_closed", "Sessions closed, by reason", ["reason"], registry=r
        )
        self.audio_seconds = Counter(
            "stt_audio_received_seconds", "Audio received, in seconds of 16 kHz audio", registry=r
        )
        self.chunks = Counter("stt_chunks_received", "Audio chunk messages received", registry=r)
        self.chunk_bytes = Counter(
            "stt_chunks_received_bytes", "PCM bytes received in chunks", registry=r
        )
        self.utterances = Counter(
            "stt_utterances", "Utterances finalised, by why they ended", ["reason"], registry=r
        )
        self.transcripts = Counter(
            "stt_transcripts_published", "Transcripts published", ["kind"], registry=r
        )
        self.interrupts = Counter("stt_interrupts_published", "Barge-in interrupts", registry=r)
        self.errors = Counter(
            "stt_errors_published", "Error messages published, by code", ["code"], registry=r
        )
        self.inference_seconds = Histogram(
            "stt_inference_duration_seconds",
            "Engine time per transcription",
            ["engine", "kind"],
            buckets=_SECONDS,
            registry=r,
        )
        self.real_time_factor = Histogram(
            "stt_inference_real_time_factor",
            "Engine time / audio duration per transcription",
            ["engine", "kind"],
            buckets=_RATIO,
            registry=r,
        )
        self.queue_wait = Histogram(
            "stt_inference_queue_wait_seconds",
            "Time a transcription waited for an engine slot",
            ["kind"],
            buckets=_WAIT,
            registry=r,
        )
        self._count_finals(r)
        self._count_transport(r)
        self._count_refusals(r)
        self._refusals()

    def _count_transport(self, r: CollectorRegistry) -> None:
        """NATS reconnections and failed JetStream acknowledgements."""
        self.nats_reconnects = Counter("stt_nats_reconnects", "NATS reconnections", registry=r)
        self.ack_failures = Counter(
            "stt_ack_failures", "JetStream acknowledgements that failed", ["operation"], registry=r
        )
        for operation in ACK_OPERATIONS:
            self.ack_failures.labels(operation)  # both series exist from the start, at 0

    def _refusals(self) -> None:
        """Messages refused, and the error replies the reply limit held back."""
        self.rejections = Counter(
            "stt_messages_rejected",
            "Client messages refused, by error code, whether or not an error reply went out",
            ["code"],
            registry=self.registry,
        )
        self.replies_held_back = Counter(
            "stt_error_replies_held_back",
            "Error replies withheld by the per-session and overall reply limits, by code",
            ["code"],
            registry=self.registry,
        )

    def _count_finals(self, r: CollectorRegistry) -> None:
        """How soon finals come after the end of speech."""
        self.final_latency = Histogram(
            "stt_final_latency_seconds",
            "End of speech (last voiced audio) to the final published: trailing silence "
            "waited + queue + inference",
            buckets=_SECONDS,
            registry=r,
        )
        self.speculative_finals = Counter(
            "stt_speculative_finals",
            "Finals whose text a speculation early in the pause had decoded already "
            "(STT_ENDPOINT_SPECULATE_MS): published with no decode after the endpoint",
            registry=r,
        )
        self.withdrawn_finals = Counter(
            "stt_final_decodes_withdrawn",
            "Final decodes taken out of the queue unrun: the pause's speculation, still "
            "decoding when the pause ended the utterance, answered for them (under load)",
            registry=r,
        )
        self.turn_events = Counter(
            "stt_turn_events",
            "Turn events published (sessions with turn_events), by type: eager_end_of_turn, "
            "turn_resumed",
            ["type"],
            registry=r,
        )

    def _count_refusals(self, r: CollectorRegistry) -> None:
        """Admission (`core/admission`): what sessions sent too fast, dropped unused."""
        self.rate_limited = Counter(
            "stt_rate_limited",
            "Messages refused because their session sent too fast, by kind (audio, playback, "
            "control, inbox, flood)",
            ["kind"],
            registry=r,
        )
        self.rate_limited_audio = Counter(
            "stt_rate_limited_audio_seconds",
            "Audio refused because its session sent too fast, in seconds of publisher audio",
            registry=r,
        )

    def watch(
        self,
        name: str,
        help_text: str,
        read: Callable[[], float | Mapping[str, float]],
        *,
        label: str | None = None,
        counter: bool = False,
    ) -> None:
        """Expose `read()` at scrape time: a value some other object owns, or with `label`
        one value per label value (`{"final": 2, "partial": 5}`)."""
        self.registry.register(_Reading(name, help_text, read, label, counter))


class _Reading(Collector):
    def __init__(
        self,
        name: str,
        help_text: str,
        read: Callable[[], float | Mapping[str, float]],
        label: str | None,
        counter: bool,
    ) -> None:
        self._name, self._help, self._read = name, help_text, read
        self._label, self._counter = label, counter

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        family_type = CounterMetricFamily if self._counter else GaugeMetricFamily
        value = self._read()
        if self._label is None:
            assert not isinstance(value, Mapping)
            yield family_type(self._name, self._help, value=value)
            return
        assert isinstance(value, Mapping)
        family = family_type(self._name, self._help, labels=[self._label])
        for label_value, reading in value.items():
            family.add_metric([label_value], reading)
        yield family

    def describe(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        return self.collect()
