"""Settings: the one typed, frozen configuration object, read from the environment once.

No other module reads ``os.environ``. Names follow the seed module (``NATS_URL``,
``WHISPER_*``, ``STT_*``, ``OTEL_*``, ``HYPERDX_*``); every variable is listed with its
default in the README.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, FilePath, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from stt_worker.core.audio import BYTES_PER_SAMPLE, SAMPLE_RATE_HZ
from stt_worker.core.turns import DEFAULT_BACKCHANNELS, DEFAULT_COMMANDS


class Settings(BaseSettings):
    """Everything the worker can be told, with the seed's names and defaults."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    # --- transport (seed) ---
    nats_url: str = Field("nats://nats.ai-ml.svc.cluster.local:4222", alias="NATS_URL")
    stream_subject: str = Field("ai.voice.stream.*", alias="STT_STREAM_SUBJECT")
    transcription_subject_prefix: str = Field(
        "ai.voice.transcription", alias="STT_TRANSCRIPTION_SUBJECT_PREFIX"
    )

    # --- NATS authentication and TLS (new); nats-py takes each as is, see nats_auth.py ---
    # A decentralised-auth .creds file (JWT + NKey seed), e.g. from `nsc generate creds`.
    nats_creds_file: FilePath | None = Field(
        None, validation_alias=AliasChoices("NATS_CREDS_FILE", "NATS_CREDS")
    )
    nats_nkey_seed_file: FilePath | None = Field(None, alias="NATS_NKEY_SEED_FILE")
    nats_token: SecretStr | None = Field(None, alias="NATS_TOKEN")
    nats_user: str | None = Field(None, alias="NATS_USER")
    nats_password: SecretStr | None = Field(None, alias="NATS_PASSWORD")
    # Any of these turns TLS on; the CA alone verifies the server, cert + key add client auth.
    nats_tls_ca_file: FilePath | None = Field(None, alias="NATS_TLS_CA_FILE")
    nats_tls_cert_file: FilePath | None = Field(None, alias="NATS_TLS_CERT_FILE")
    nats_tls_key_file: FilePath | None = Field(None, alias="NATS_TLS_KEY_FILE")

    # --- engine (seed) ---
    # faster-whisper | openai-whisper | http; the entry scripts pick their variant's engine.
    engine: str = Field("faster-whisper", alias="STT_ENGINE")
    whisper_url: str = Field(
        "http://whisper-predictor.ai-ml.svc.cluster.local", alias="WHISPER_URL"
    )
    # The seed defaults to `medium`, which needs a download; we default to the bundled model.
    whisper_model_size: str = Field("tiny.en", alias="WHISPER_MODEL_SIZE")
    # Dual model: a faster model for partials only (e.g. tiny.en while finals use base).
    partial_model: str | None = Field(None, alias="STT_PARTIAL_MODEL")
    # `auto` = CUDA when a GPU is visible, else CPU. The seed's `cuda` still works.
    whisper_device: str = Field("auto", alias="WHISPER_DEVICE")
    whisper_compute_type: str = Field("auto", alias="WHISPER_COMPUTE_TYPE")
    # Threads per decode; 0 = cores / STT_MAX_CONCURRENT_INFERENCES.
    whisper_cpu_threads: int = Field(0, alias="WHISPER_CPU_THREADS", ge=0)
    whisper_language: str | None = Field(None, alias="WHISPER_LANGUAGE")
    whisper_beam_size: int = Field(1, alias="WHISPER_BEAM_SIZE", ge=1, le=10)
    whisper_model_cache_dir: str | None = Field(None, alias="WHISPER_MODEL_CACHE_DIR")
    # Encoder window = utterance + at least this much padding, in 2 s steps; 30 = Whisper's
    # fixed 30 s window (the slowest, the reference for accuracy).
    whisper_window_pad_s: float = Field(2.0, alias="WHISPER_WINDOW_PAD_S", ge=0, le=30)

    # --- HTTP engine (new): an OpenAI-compatible /v1/audio/transcriptions service ---
    whisper_http_path: str = Field("/v1/audio/transcriptions", alias="WHISPER_HTTP_PATH")
    whisper_http_model: str = Field("whisper-1", alias="WHISPER_HTTP_MODEL")
    whisper_api_key: SecretStr | None = Field(None, alias="WHISPER_API_KEY")
    whisper_http_response_format: str = Field("verbose_json", alias="WHISPER_HTTP_RESPONSE_FORMAT")
    whisper_http_connect_timeout_s: float = Field(5.0, alias="WHISPER_HTTP_CONNECT_TIMEOUT_S", gt=0)
    whisper_http_timeout_s: float = Field(30.0, alias="WHISPER_HTTP_TIMEOUT_S", gt=0)
    whisper_http_max_concurrency: int = Field(4, alias="WHISPER_HTTP_MAX_CONCURRENCY", ge=1)
    whisper_http_retries: int = Field(3, alias="WHISPER_HTTP_RETRIES", ge=0, le=10)
    whisper_http_backoff_s: float = Field(0.2, alias="WHISPER_HTTP_BACKOFF_S", gt=0)
    whisper_http_max_backoff_s: float = Field(5.0, alias="WHISPER_HTTP_MAX_BACKOFF_S", gt=0)

    # --- our Whisper server (new): `stt-streaming whisper-server` ---
    whisper_server_host: str = Field("0.0.0.0", alias="WHISPER_SERVER_HOST")
    whisper_server_port: int = Field(8000, alias="WHISPER_SERVER_PORT", ge=0, le=65535)
    whisper_server_max_concurrency: int = Field(1, alias="WHISPER_SERVER_MAX_CONCURRENCY", ge=1)
    whisper_server_max_queue: int = Field(32, alias="WHISPER_SERVER_MAX_QUEUE", ge=0)
    whisper_server_max_upload_bytes: int = Field(
        25 * 1024 * 1024, alias="WHISPER_SERVER_MAX_UPLOAD_BYTES", ge=1024
    )
    whisper_server_max_audio_s: float = Field(1800.0, alias="WHISPER_SERVER_MAX_AUDIO_S", gt=0)

    # --- buffering and VAD (seed) ---
    buffer_size_bytes: int = Field(512_000, alias="STT_BUFFER_SIZE_BYTES", gt=0)
    chunk_timeout_s: float = Field(2.0, alias="STT_CHUNK_TIMEOUT", gt=0)
    enable_vad: bool = Field(True, alias="STT_ENABLE_VAD")
    vad_aggressiveness: int = Field(2, alias="STT_VAD_AGGRESSIVENESS", ge=0, le=3)
    enable_interrupt_detection: bool = Field(True, alias="STT_ENABLE_INTERRUPT_DETECTION")

    # --- turn taking (new) ---
    endpoint_silence_ms: int = Field(500, alias="STT_ENDPOINT_SILENCE_MS", ge=60)
    # End of turn: `fixed` = STT_ENDPOINT_SILENCE_MS of silence; `adaptive` = transcribe at
    # STT_ENDPOINT_MIN_SILENCE_MS and end there after a finished sentence, wait up to
    # STT_ENDPOINT_MAX_SILENCE_MS after a phrase that is not finished.
    endpoint_mode: Literal["fixed", "adaptive"] = Field("fixed", alias="STT_ENDPOINT_MODE")
    endpoint_min_silence_ms: int = Field(300, alias="STT_ENDPOINT_MIN_SILENCE_MS", ge=60)
    endpoint_max_silence_ms: int = Field(1000, alias="STT_ENDPOINT_MAX_SILENCE_MS", ge=60)
    # Adaptive: the decoder's probability that the words end at the pause; at least
    # FINISHED ends the turn at the short silence, below UNFINISHED waits the long one.
    endpoint_finished_prob: float = Field(0.75, alias="STT_ENDPOINT_FINISHED_PROB", ge=0, le=1)
    endpoint_unfinished_prob: float = Field(0.5, alias="STT_ENDPOINT_UNFINISHED_PROB", ge=0, le=1)
    partial_interval_ms: int = Field(1000, alias="STT_PARTIAL_INTERVAL_MS", ge=100)
    speech_start_ms: int = Field(60, alias="STT_SPEECH_START_MS", ge=20)
    preroll_ms: int = Field(300, alias="STT_PREROLL_MS", ge=0, le=2000)
    interrupt_min_speech_ms: int = Field(250, alias="STT_INTERRUPT_MIN_SPEECH_MS", ge=20)
    # Barge-in while `responding`: `vad` = on voice activity (STT_INTERRUPT_MIN_SPEECH_MS);
    # `words` = only once a quick transcription of that speech holds a word that is not a
    # backchannel (STT_BACKCHANNELS), re-checked every STT_BARGE_IN_PROBE_MS of more speech.
    barge_in_mode: Literal["vad", "words"] = Field("vad", alias="STT_BARGE_IN_MODE")
    backchannels: str = Field(",".join(DEFAULT_BACKCHANNELS), alias="STT_BACKCHANNELS")
    barge_in_probe_ms: int = Field(150, alias="STT_BARGE_IN_PROBE_MS", ge=20)
    # Word mode: phrases that interrupt as soon as a probe hears them, even mid-word.
    barge_in_commands: str = Field(",".join(DEFAULT_COMMANDS), alias="STT_BARGE_IN_COMMANDS")
    # Condition each utterance on the session's recent finals (Whisper prompt), in characters.
    context_chars: int = Field(0, alias="STT_CONTEXT_CHARS", ge=0, le=1000)

    # --- bounds (new) ---
    max_sessions: int = Field(1000, alias="STT_MAX_SESSIONS", ge=1)
    max_chunk_bytes: int = Field(256_000, alias="STT_MAX_CHUNK_BYTES", ge=320)
    max_utterance_s: float = Field(30.0, alias="STT_MAX_UTTERANCE_S", gt=1, le=30)
    session_idle_timeout_s: float = Field(60.0, alias="STT_SESSION_IDLE_TIMEOUT_S", gt=0)
    # Wall-clock life of one session; past it the session is ended as by `end`.
    max_session_s: float = Field(4 * 3600.0, alias="STT_MAX_SESSION_S", gt=0)
    # Session ids longer than this are refused: they go into output subjects, and NATS
    # closes a connection whose protocol line passes 4 KiB.
    max_session_id_chars: int = Field(128, alias="STT_MAX_SESSION_ID_CHARS", ge=1, le=1024)
    max_pending_finals: int = Field(256, alias="STT_MAX_PENDING_FINALS", ge=1)
    # Parallel decodes of the local CTranslate2 engine (each with cores/N threads).
    max_concurrent_inferences: int = Field(2, alias="STT_MAX_CONCURRENT_INFERENCES", ge=1)
    drain_timeout_s: float = Field(25.0, alias="STT_DRAIN_TIMEOUT_S", gt=0)
    pending_msgs_limit: int = Field(65_536, alias="STT_PENDING_MSGS_LIMIT", ge=64)

    # --- horizontal scaling (new): NATS subject-mapping partitions, see k8s/README.md ---
    # The partition count of the server's `partition(N, 1)` mapping; 0 = not partitioned,
    # the worker subscribes to STT_STREAM_SUBJECT as the seed does.
    partitions: int = Field(0, alias="STT_PARTITIONS", ge=0, le=1024)
    # Workers sharing the partitions (0 = STT_PARTITIONS); worker i takes p % replicas == i.
    replicas: int = Field(0, alias="STT_REPLICAS", ge=0, le=1024)
    # This worker's index; -1 = the StatefulSet ordinal at the end of HOSTNAME ("stt-2" -> 2).
    replica_index: int = Field(-1, alias="STT_REPLICA_INDEX", ge=-1)
    hostname: str = Field("", alias="HOSTNAME")
    partition_subject: str = Field(
        "ai.voice.partitioned.{partition}.*", alias="STT_PARTITION_SUBJECT"
    )

    # --- durable mode (new): audio kept in a JetStream stream until its transcript is out ---
    durable: bool = Field(False, alias="STT_DURABLE")
    jetstream_stream: str = Field("STT_AUDIO", alias="STT_JETSTREAM_STREAM")
    # The durable consumer's name; partitioned, one per replica: "{name}-{index}-of-{replicas}".
    durable_consumer: str = Field("stt-streaming", alias="STT_DURABLE_CONSUMER")
    # Redelivery timeout of a held message; held ones are marked in progress before it expires.
    ack_wait_s: float = Field(30.0, alias="STT_ACK_WAIT_S", ge=2)
    # Messages delivered and not yet acknowledged before the server pauses delivery.
    max_ack_pending: int = Field(100_000, alias="STT_MAX_ACK_PENDING", ge=1_000)
    # Audio nobody consumed is dropped from the stream after this long (a replica gone for good).
    jetstream_max_age_s: float = Field(3600.0, alias="STT_JETSTREAM_MAX_AGE_S", gt=0)

    # --- operations (new): /healthz /readyz /metrics, logs ---
    http_host: str = Field("0.0.0.0", alias="STT_HTTP_HOST")
    # 0 = a free port the OS picks (tests); -1 = no HTTP endpoint at all.
    http_port: int = Field(8080, alias="STT_HTTP_PORT", ge=-1, le=65535)
    log_level: str = Field("INFO", validation_alias=AliasChoices("STT_LOG_LEVEL", "LOG_LEVEL"))
    # auto = human-readable text on a terminal, one JSON object per line otherwise.
    log_format: Literal["auto", "json", "text"] = Field("auto", alias="STT_LOG_FORMAT")

    # --- tracing (seed names; the OTLP exporters also read the standard OTEL_* variables) ---
    otel_enabled: bool = Field(True, alias="OTEL_ENABLED")
    otel_service_name: str = Field("stt-streaming", alias="OTEL_SERVICE_NAME")
    # grpc or http/protobuf (the OTel default for new SDKs is http/protobuf).
    otel_exporter_otlp_protocol: str = Field(
        "http/protobuf",
        validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"
        ),
    )
    otel_exporter_otlp_endpoint: str | None = Field(
        None,
        validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"
        ),
    )
    hyperdx_enabled: bool = Field(False, alias="HYPERDX_ENABLED")
    hyperdx_api_key: SecretStr | None = Field(None, alias="HYPERDX_API_KEY")
    hyperdx_otlp_endpoint: str = Field("https://in-otel.hyperdx.io", alias="HYPERDX_OTLP_ENDPOINT")

    @field_validator("whisper_language")
    @classmethod
    def _empty_language_is_auto(cls, value: str | None) -> str | None:
        return value or None

    @field_validator(
        "nats_creds_file",
        "nats_nkey_seed_file",
        "nats_token",
        "nats_user",
        "nats_password",
        "nats_tls_ca_file",
        "nats_tls_cert_file",
        "nats_tls_key_file",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # A ConfigMap or Secret key left empty means "not used", not "a file named ''".
        return None if value == "" else value

    @property
    def backchannel_phrases(self) -> list[str]:
        return _phrases(self.backchannels)

    @property
    def command_phrases(self) -> list[str]:
        return _phrases(self.barge_in_commands)

    @property
    def max_utterance_samples(self) -> int:
        """Longest utterance kept before it is cut and finalised.

        `STT_BUFFER_SIZE_BYTES` counts 16 kHz mono PCM16 bytes (32,000 per second), so the
        seed's 512,000 is 16 s; Whisper's 30 s window is the hard ceiling.
        """
        by_buffer = self.buffer_size_bytes // BYTES_PER_SAMPLE
        by_window = int(self.max_utterance_s * SAMPLE_RATE_HZ)
        return max(SAMPLE_RATE_HZ, min(by_buffer, by_window))

    def stream_subjects(self) -> list[str]:
        """What this worker subscribes to: the seed subject, or its share of the partitions."""
        if not self.partitions:
            return [self.stream_subject]
        index, replicas = self._share()
        return [
            self.partition_subject.format(partition=partition)
            for partition in range(index, self.partitions, replicas)
        ]

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


def _phrases(listing: str) -> list[str]:
    """A comma-separated setting as its non-empty phrases."""
    return [phrase.strip() for phrase in listing.split(",") if phrase.strip()]
