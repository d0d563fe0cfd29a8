"""Settings: the one typed, frozen configuration object, read from the environment once.

No other module reads ``os.environ``. Names follow the seed module (``NATS_URL``,
``WHISPER_*``, ``STT_*``, ``OTEL_*``, ``HYPERDX_*``). Each field is declared with `setting`,
which keeps its environment variable(s), group and description as data:
``python -m stt_worker.tools.configuration_docs --write`` renders them as
docs/configuration.md, and tests/test_configuration_docs.py fails when that file is stale or a
field lacks a description or a group.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Literal

from pydantic import AliasChoices, Field, FilePath, SecretStr, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from stt_worker.core.audio import BYTES_PER_SAMPLE, SAMPLE_RATE_HZ
from stt_worker.core.turns import DEFAULT_BACKCHANNELS, DEFAULT_COMMANDS

_GROUP_KEY = "group"


def setting(
    default: Any,
    env: str | AliasChoices,
    *,
    group: str,
    description: str,
    **constraints: Any,
) -> Any:
    """A settings field read from `env`, with its group and description kept as data.

    A plain name becomes the field's alias, as ``Field(alias=...)`` would make it;
    `AliasChoices` (several names, the first set one wins) becomes its validation alias.
    `constraints` are pydantic's (``ge``, ``le``, ``gt``, ...).
    """
    names = {"alias": env} if isinstance(env, str) else {"validation_alias": env}
    return Field(
        default,
        description=description,
        json_schema_extra={_GROUP_KEY: str(group)},
        **names,
        **constraints,
    )


def group_of(field: FieldInfo) -> str | None:
    """The group `setting` gave a field; None for a field declared some other way."""
    extra = field.json_schema_extra
    group = extra.get(_GROUP_KEY) if isinstance(extra, dict) else None
    return group if isinstance(group, str) else None


class Group(StrEnum):
    """The worker's settings by concern, in the order the source and the docs list them."""

    TRANSPORT = "Transport"
    NATS_AUTH = "NATS authentication and TLS"
    ENGINE = "Engine and model"
    HTTP_ENGINE = "HTTP engine"
    WHISPER_SERVER = "Whisper server"
    AUDIO = "Audio and VAD"
    UTTERANCES = "Utterances and partials"
    END_OF_TURN = "End of turn"
    BARGE_IN = "Barge-in"
    LIMITS = "Limits and bounds"
    PARTITIONS = "Partitions"
    DURABILITY = "Durability"
    OPERATIONS = "Probes and logs"
    TRACING = "Tracing"


class _DocumentedNamesOnly(EnvSettingsSource):
    """The environment, read by each field's documented variable(s) only.

    `populate_by_name` lets code build settings by field name (`load_settings(durable=True)`),
    but pydantic-settings then also reads the bare field name from the environment: `PORT`,
    `TOKEN` or `DURABLE`, which platforms and shells set for their own reasons, would
    configure us. Names stay allowed as keyword arguments, not as variables.
    """

    def _extract_field_info(
        self, field: FieldInfo, field_name: str, model_config: Mapping[str, Any] | None = None
    ) -> list[tuple[str, str, bool]]:
        config = dict(self.config if model_config is None else model_config)
        config.update(populate_by_name=False, validate_by_name=False)
        return super()._extract_field_info(field, field_name, config)


class EnvSettings(BaseSettings):
    """Settings read from the environment by their documented variable names only."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _DocumentedNamesOnly(settings_cls), file_secret_settings)


class Settings(EnvSettings):
    """The worker's settings: one frozen object, read from the environment once at start.

    The CLI tools, `whisper-server` and the gateway read the same variables for what they
    share with the worker: the NATS connection, its credentials and subjects, the engine and
    its model.
    """

    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    nats_url: str = setting(
        "nats://nats.ai-ml.svc.cluster.local:4222",
        "NATS_URL",
        group=Group.TRANSPORT,
        description="NATS server (`tls://` for TLS with the system's CAs); credentials "
        "written into the URL are redacted in logs.",
    )
    stream_subject: str = setting(
        "ai.voice.stream.*",
        "STT_STREAM_SUBJECT",
        group=Group.TRANSPORT,
        description="Input subject: audio and control messages, one session per last token.",
    )
    transcription_subject_prefix: str = setting(
        "ai.voice.transcription",
        "STT_TRANSCRIPTION_SUBJECT_PREFIX",
        group=Group.TRANSPORT,
        description="Output subject prefix; results go to `{prefix}.{session_id}`.",
    )

    # nats-py takes each of these as it is; runtime/connection.py hands them over.
    nats_creds_file: FilePath | None = setting(
        None,
        AliasChoices("NATS_CREDS_FILE", "NATS_CREDS"),
        group=Group.NATS_AUTH,
        description="`.creds` file (JWT and NKey seed, e.g. from `nsc generate creds`) for "
        "decentralised auth; empty = unset.",
    )
    nats_nkey_seed_file: FilePath | None = setting(
        None,
        "NATS_NKEY_SEED_FILE",
        group=Group.NATS_AUTH,
        description="NKey seed file (`SU...`); empty = unset.",
    )
    nats_token: SecretStr | None = setting(
        None,
        "NATS_TOKEN",
        group=Group.NATS_AUTH,
        description="Token auth; never logged; empty = unset.",
    )
    nats_user: str | None = setting(
        None,
        "NATS_USER",
        group=Group.NATS_AUTH,
        description="User for user/password auth (with `NATS_PASSWORD`); empty = unset.",
    )
    nats_password: SecretStr | None = setting(
        None,
        "NATS_PASSWORD",
        group=Group.NATS_AUTH,
        description="Password for user/password auth; never logged; empty = unset.",
    )
    nats_tls_ca_file: FilePath | None = setting(
        None,
        "NATS_TLS_CA_FILE",
        group=Group.NATS_AUTH,
        description="CA that signed the server's certificate. Any `NATS_TLS_*` turns TLS on; "
        "the CA alone verifies the server. Empty = unset.",
    )
    nats_tls_cert_file: FilePath | None = setting(
        None,
        "NATS_TLS_CERT_FILE",
        group=Group.NATS_AUTH,
        description="Client certificate (with `NATS_TLS_KEY_FILE`), for servers that verify "
        "clients (`verify: true`); empty = unset.",
    )
    nats_tls_key_file: FilePath | None = setting(
        None,
        "NATS_TLS_KEY_FILE",
        group=Group.NATS_AUTH,
        description="Key of the client certificate; empty = unset.",
    )

    engine: str = setting(
        "faster-whisper",
        "STT_ENGINE",
        group=Group.ENGINE,
        description="`faster-whisper`, `http` or `openai-whisper`; the entry scripts choose "
        "their variant's engine when this is not set.",
    )
    # The seed defaults to `medium`, which needs a download; this worker never downloads.
    whisper_model_size: str = setting(
        "tiny.en",
        "WHISPER_MODEL_SIZE",
        group=Group.ENGINE,
        description="`tiny.en` (bundled), `base` (bundled, multilingual; reassembled once "
        "into the cache) or a local CTranslate2 model folder; the PyTorch engine also takes a "
        "`.pt` path or a name whose `.pt` is in the cache. The seed's `medium` needs a "
        "download, which this worker does not do: it fails at start saying how to provide "
        "the model.",
    )
    partial_model: str | None = setting(
        None,
        "STT_PARTIAL_MODEL",
        group=Group.ENGINE,
        description="A faster model for partials only (dual model), e.g. `tiny.en` while "
        "finals use `base`; unset: one model for both.",
    )
    whisper_device: str = setting(
        "auto",
        "WHISPER_DEVICE",
        group=Group.ENGINE,
        description="`auto` (CUDA when a GPU is visible, else CPU), `cuda` (the seed's "
        "default) or `cpu`.",
    )
    whisper_compute_type: str = setting(
        "auto",
        "WHISPER_COMPUTE_TYPE",
        group=Group.ENGINE,
        description="`auto` = int8 on CPU, float16 on CUDA; or any CTranslate2 compute type.",
    )
    whisper_cpu_threads: int = setting(
        0,
        "WHISPER_CPU_THREADS",
        group=Group.ENGINE,
        description="Threads per decode; 0 = cores / `STT_MAX_CONCURRENT_INFERENCES`.",
        ge=0,
    )
    max_concurrent_inferences: int = setting(
        2,
        "STT_MAX_CONCURRENT_INFERENCES",
        group=Group.ENGINE,
        description="Parallel decodes of the CTranslate2 engine (the HTTP engine uses "
        "`WHISPER_HTTP_MAX_CONCURRENCY`, the PyTorch engine 1).",
        ge=1,
    )
    batch_max: int = setting(
        1,
        "STT_BATCH_MAX",
        group=Group.ENGINE,
        description="Most jobs of different sessions decoded in one model call (finals "
        "first, then partials; barge-in probes and turn checks never), of one window size, "
        "on the local engines; 1 = every job alone (the default: on a CPU batches cost capacity, "
        "bench/results/capacity.md), raise it on a GPU.",
        ge=1,
        le=64,
    )
    batch_wait_ms: int = setting(
        0,
        "STT_BATCH_WAIT_MS",
        group=Group.ENGINE,
        description="How long a job that could batch waits for companions; 0 = only jobs "
        "already queued join it, so a lone session is never slowed.",
        ge=0,
        le=100,
    )
    whisper_language: str | None = setting(
        None,
        "WHISPER_LANGUAGE",
        group=Group.ENGINE,
        description="Force a language on multilingual models (a `start` may set one per "
        "session); unset or empty: detected.",
    )
    whisper_beam_size: int = setting(
        1,
        "WHISPER_BEAM_SIZE",
        group=Group.ENGINE,
        description="Beam width of the decoder.",
        ge=1,
        le=10,
    )
    whisper_model_cache_dir: str | None = setting(
        None,
        "WHISPER_MODEL_CACHE_DIR",
        group=Group.ENGINE,
        description="Model cache: where `base` is reassembled and models are converted for "
        "the PyTorch engine, which also looks there for `<name>.pt` (then in "
        "`~/.cache/whisper`); unset: `~/.cache/stt-streaming/models`.",
    )
    whisper_window_pad_s: float = setting(
        2.0,
        "WHISPER_WINDOW_PAD_S",
        group=Group.ENGINE,
        description="Encoder window = utterance + at least this much padding, in 2 s steps; "
        "`30` = Whisper's fixed 30 s window (the slowest, the reference for accuracy).",
        ge=0,
        le=30,
    )
    context_chars: int = setting(
        0,
        "STT_CONTEXT_CHARS",
        group=Group.ENGINE,
        description="Characters of the session's recent finals given to the model as a "
        "prompt for each utterance; 0 = none.",
        ge=0,
        le=1000,
    )

    whisper_url: str = setting(
        "http://whisper-predictor.ai-ml.svc.cluster.local",
        "WHISPER_URL",
        group=Group.HTTP_ENGINE,
        description="The OpenAI-compatible Whisper service; credentials in the URL are "
        "stripped from it, sent as basic auth and never logged.",
    )
    whisper_http_path: str = setting(
        "/v1/audio/transcriptions",
        "WHISPER_HTTP_PATH",
        group=Group.HTTP_ENGINE,
        description="Endpoint path on `WHISPER_URL`.",
    )
    whisper_http_model: str = setting(
        "whisper-1",
        "WHISPER_HTTP_MODEL",
        group=Group.HTTP_ENGINE,
        description="`model` form field sent with each request.",
    )
    whisper_api_key: SecretStr | None = setting(
        None,
        "WHISPER_API_KEY",
        group=Group.HTTP_ENGINE,
        description="Sent as `Authorization: Bearer`; never logged. `whisper-server` "
        "requires it of every request but `/health` when set (401 without it).",
    )
    whisper_http_response_format: str = setting(
        "verbose_json",
        "WHISPER_HTTP_RESPONSE_FORMAT",
        group=Group.HTTP_ENGINE,
        description="`verbose_json` (segments and no-speech probabilities, so silent "
        "segments are dropped), `json` or `text`.",
    )
    whisper_http_connect_timeout_s: float = setting(
        5.0,
        "WHISPER_HTTP_CONNECT_TIMEOUT_S",
        group=Group.HTTP_ENGINE,
        description="Connect timeout of a request, in seconds.",
        gt=0,
    )
    whisper_http_timeout_s: float = setting(
        30.0,
        "WHISPER_HTTP_TIMEOUT_S",
        group=Group.HTTP_ENGINE,
        description="Read timeout of a request, in seconds.",
        gt=0,
    )
    whisper_http_max_concurrency: int = setting(
        4,
        "WHISPER_HTTP_MAX_CONCURRENCY",
        group=Group.HTTP_ENGINE,
        description="Requests in flight at once.",
        ge=1,
    )
    whisper_http_retries: int = setting(
        3,
        "WHISPER_HTTP_RETRIES",
        group=Group.HTTP_ENGINE,
        description="Retries of a failure that may pass (connection errors, timeouts, "
        "HTTP 429/502/503/504).",
        ge=0,
        le=10,
    )
    whisper_http_backoff_s: float = setting(
        0.2,
        "WHISPER_HTTP_BACKOFF_S",
        group=Group.HTTP_ENGINE,
        description="Base of the full-jitter exponential backoff between retries, in seconds.",
        gt=0,
    )
    whisper_http_max_backoff_s: float = setting(
        5.0,
        "WHISPER_HTTP_MAX_BACKOFF_S",
        group=Group.HTTP_ENGINE,
        description="Cap of the backoff, and the longest `Retry-After` honoured (a longer "
        "one gives up at once).",
        gt=0,
    )

    whisper_server_host: str = setting(
        "127.0.0.1",
        "WHISPER_SERVER_HOST",
        group=Group.WHISPER_SERVER,
        description="Listen address of `stt-streaming whisper-server`: loopback unless "
        "opened on purpose (the container images and k8s manifests set `0.0.0.0`).",
    )
    whisper_server_port: int = setting(
        8000,
        "WHISPER_SERVER_PORT",
        group=Group.WHISPER_SERVER,
        description="Listen port of `stt-streaming whisper-server`.",
        ge=0,
        le=65535,
    )
    whisper_server_max_concurrency: int = setting(
        1,
        "WHISPER_SERVER_MAX_CONCURRENCY",
        group=Group.WHISPER_SERVER,
        description="Inferences at once.",
        ge=1,
    )
    whisper_server_max_queue: int = setting(
        32,
        "WHISPER_SERVER_MAX_QUEUE",
        group=Group.WHISPER_SERVER,
        description="Requests waiting for an inference; more are answered 503 with "
        "`Retry-After: 1`.",
        ge=0,
    )
    whisper_server_max_upload_bytes: int = setting(
        25 * 1024 * 1024,
        "WHISPER_SERVER_MAX_UPLOAD_BYTES",
        group=Group.WHISPER_SERVER,
        description="Largest request body; larger ones get 413.",
        ge=1024,
    )
    whisper_server_max_audio_s: float = setting(
        120.0,
        "WHISPER_SERVER_MAX_AUDIO_S",
        group=Group.WHISPER_SERVER,
        description="Longest decoded audio, in seconds; longer gets 413 (compressed bytes do "
        "not bound it: a few MB of Opus can hold hours). It bounds how long one request "
        "holds an inference slot and the memory it takes; the worker sends at most "
        "`STT_MAX_UTTERANCE_S`.",
        gt=0,
    )
    whisper_server_max_uploads: int = setting(
        64,
        "WHISPER_SERVER_MAX_UPLOADS",
        group=Group.WHISPER_SERVER,
        description="Request bodies being received at once; more get 503 with "
        "`Retry-After: 1`. Uploads hold no place in the queue.",
        ge=1,
    )
    whisper_server_body_timeout_s: float = setting(
        30.0,
        "WHISPER_SERVER_BODY_TIMEOUT_S",
        group=Group.WHISPER_SERVER,
        description="Time allowed to receive a whole request body, in seconds; slower "
        "uploads get 408 and the connection is closed.",
        gt=0,
    )

    enable_vad: bool = setting(
        True,
        "STT_ENABLE_VAD",
        group=Group.AUDIO,
        description="Voice activity detection. Off: the seed's plain behaviour, all audio is "
        "buffered and transcribed when the buffer fills, the chunks stop, or at `end`.",
    )
    vad_engine: Literal["silero", "webrtc"] = setting(
        "silero",
        "STT_VAD_ENGINE",
        group=Group.AUDIO,
        description="The speech detector that labels each 20 ms frame. `silero`: Silero VAD "
        "(ONNX, shipped in the pipecat-ai package), fewer noise and breath frames taken for "
        "speech and word ends found sooner, about 4 ms of CPU per second of audio per session. "
        "`webrtc`: webrtcvad, about 0.3 ms.",
    )
    vad_threshold: float = setting(
        0.4,
        "STT_VAD_THRESHOLD",
        group=Group.AUDIO,
        description="Silero's speech probability at which speech starts; it ends only below "
        "this minus 0.15, as in Silero's own streaming iterator.",
        gt=0.15,
        le=1.0,
    )
    vad_aggressiveness: int = setting(
        2,
        "STT_VAD_AGGRESSIVENESS",
        group=Group.AUDIO,
        description="webrtcvad's aggressiveness, 0 (least) to 3 (most); with "
        "`STT_VAD_ENGINE=webrtc`.",
        ge=0,
        le=3,
    )
    speech_start_ms: int = setting(
        60,
        "STT_SPEECH_START_MS",
        group=Group.AUDIO,
        description="Voiced audio within the last 100 ms that starts speech.",
        ge=20,
    )
    preroll_ms: int = setting(
        300,
        "STT_PREROLL_MS",
        group=Group.AUDIO,
        description="Audio kept from before speech onset, so the first phoneme is not cut.",
        ge=0,
        le=2000,
    )

    buffer_size_bytes: int = setting(
        512_000,
        "STT_BUFFER_SIZE_BYTES",
        group=Group.UTTERANCES,
        description="Longest utterance, in 16 kHz mono PCM16 bytes (the default is 16 s), "
        "cut where the speaker is quietest; `STT_MAX_UTTERANCE_S` caps it. With VAD off, "
        "audio is transcribed whenever this much is buffered.",
        gt=0,
    )
    max_utterance_s: float = setting(
        30.0,
        "STT_MAX_UTTERANCE_S",
        group=Group.UTTERANCES,
        description="Hard cap on an utterance, in seconds (Whisper's window is 30 s).",
        gt=1,
        le=30,
    )
    chunk_timeout_s: float = setting(
        2.0,
        "STT_CHUNK_TIMEOUT",
        group=Group.UTTERANCES,
        description="Seconds without a chunk after which open speech is finalised.",
        gt=0,
    )
    partial_first_ms: int = setting(
        200,
        "STT_PARTIAL_FIRST_MS",
        group=Group.UTTERANCES,
        description="Speech (voiced audio) heard before an utterance's first partial.",
        ge=20,
    )
    partial_interval_ms: int = setting(
        300,
        "STT_PARTIAL_INTERVAL_MS",
        group=Group.UTTERANCES,
        description="New audio between two partials of an utterance while the engine keeps "
        "up; a busy engine stretches it by the time partials wait in its queue.",
        ge=100,
    )

    endpoint_silence_ms: int = setting(
        500,
        "STT_ENDPOINT_SILENCE_MS",
        group=Group.END_OF_TURN,
        description="Trailing silence that ends an utterance; in `adaptive` mode, the wait "
        "when the end probability falls between the two thresholds.",
        ge=60,
    )
    endpoint_mode: Literal["fixed", "adaptive", "turn"] = setting(
        "fixed",
        "STT_ENDPOINT_MODE",
        group=Group.END_OF_TURN,
        description="`turn`: at `STT_TURN_CHECK_MS` of pause, transcribe and ask Smart Turn "
        "v3.2 (the audio end-of-turn model) whether the turn is complete; end there with "
        "that text, or wait up to `STT_TURN_MAX_MS` when it is not. "
        "`fixed`: the turn ends after `STT_ENDPOINT_SILENCE_MS` of silence. "
        "`adaptive`: transcribe at `STT_ENDPOINT_MIN_SILENCE_MS` and end there after a "
        "finished sentence, wait up to `STT_ENDPOINT_MAX_SILENCE_MS` after an unfinished "
        "phrase.",
    )
    endpoint_min_silence_ms: int = setting(
        300,
        "STT_ENDPOINT_MIN_SILENCE_MS",
        group=Group.END_OF_TURN,
        description="Adaptive mode: the pause that triggers a turn check.",
        ge=60,
    )
    endpoint_max_silence_ms: int = setting(
        1000,
        "STT_ENDPOINT_MAX_SILENCE_MS",
        group=Group.END_OF_TURN,
        description="Adaptive mode: the wait after an unfinished phrase.",
        ge=60,
    )
    endpoint_finished_prob: float = setting(
        0.75,
        "STT_ENDPOINT_FINISHED_PROB",
        group=Group.END_OF_TURN,
        description="Adaptive mode: at or above this decoder probability that the words end "
        "at the pause, the turn ends at the short pause.",
        ge=0,
        le=1,
    )
    endpoint_unfinished_prob: float = setting(
        0.5,
        "STT_ENDPOINT_UNFINISHED_PROB",
        group=Group.END_OF_TURN,
        description="Adaptive mode: below this probability (or after a continuation word, a "
        "comma or an ellipsis) the turn waits the long pause.",
        ge=0,
        le=1,
    )
    turn_check_ms: int = setting(
        80,
        "STT_TURN_CHECK_MS",
        group=Group.END_OF_TURN,
        description="Turn mode: the pause that triggers a turn check (its text and Smart "
        "Turn's verdict).",
        ge=20,
    )
    turn_recheck_ms: int = setting(
        200,
        "STT_TURN_RECHECK_MS",
        group=Group.END_OF_TURN,
        description="Turn mode: when the first check held the turn open, the pause that "
        "checks again (Smart Turn first, a decode only if it hears an end), with the "
        "stricter `STT_TURN_RECHECK_VETO_PROB`; 0 = no recheck.",
        ge=0,
    )
    turn_max_ms: int = setting(
        1000,
        "STT_TURN_MAX_MS",
        group=Group.END_OF_TURN,
        description="Turn mode: the longest pause while the turn holds (or a check is still "
        "decoding); after an undecided check `STT_ENDPOINT_SILENCE_MS` applies.",
        ge=60,
    )
    turn_over_prob: float = setting(
        0.9,
        "STT_TURN_OVER_PROB",
        group=Group.END_OF_TURN,
        description="Turn mode: at or above this Smart Turn probability the turn ends at the "
        "check (unless the words end mid-phrase or the decoder vetoes).",
        ge=0,
        le=1,
    )
    turn_hold_prob: float = setting(
        0.9,
        "STT_TURN_HOLD_PROB",
        group=Group.END_OF_TURN,
        description="Turn mode: below this Smart Turn probability the turn holds "
        "(`STT_TURN_MAX_MS`); in between, `STT_ENDPOINT_SILENCE_MS` decides.",
        ge=0,
        le=1,
    )
    turn_end_veto_prob: float = setting(
        0.5,
        "STT_TURN_END_VETO_PROB",
        group=Group.END_OF_TURN,
        description="Turn mode: below this decoder end probability the turn holds whatever "
        "Smart Turn says.",
        ge=0,
        le=1,
    )
    turn_recheck_veto_prob: float = setting(
        0.85,
        "STT_TURN_RECHECK_VETO_PROB",
        group=Group.END_OF_TURN,
        description="Turn mode: the decoder veto at a recheck; later in a pause Smart Turn "
        "hears most clause ends as the end of the turn, so the words must be surer.",
        ge=0,
        le=1,
    )

    enable_interrupt_detection: bool = setting(
        True,
        "STT_ENABLE_INTERRUPT_DETECTION",
        group=Group.BARGE_IN,
        description="Barge-in while `responding`; off: audio in `responding` is not transcribed.",
    )
    barge_in_mode: Literal["vad", "words"] = setting(
        "vad",
        "STT_BARGE_IN_MODE",
        group=Group.BARGE_IN,
        description="`vad`: interrupt on voice activity (`STT_INTERRUPT_MIN_SPEECH_MS`). "
        "`words`: only once a quick transcription (a probe) of that speech holds a command "
        "or a word that is not a backchannel, probed again every `STT_BARGE_IN_PROBE_MS` of "
        "more speech.",
    )
    interrupt_min_speech_ms: int = setting(
        250,
        "STT_INTERRUPT_MIN_SPEECH_MS",
        group=Group.BARGE_IN,
        description="Voiced audio in `responding` that counts as barge-in (`vad` mode) or "
        "starts the first probe (`words` mode).",
        ge=20,
    )
    barge_in_probe_ms: int = setting(
        150,
        "STT_BARGE_IN_PROBE_MS",
        group=Group.BARGE_IN,
        description="`words` mode: further voiced audio between two probes.",
        ge=20,
    )
    backchannels: str = setting(
        ",".join(DEFAULT_BACKCHANNELS),
        "STT_BACKCHANNELS",
        group=Group.BARGE_IN,
        description="`words` mode: comma-separated phrases that do not take the turn.",
    )
    barge_in_commands: str = setting(
        ",".join(DEFAULT_COMMANDS),
        "STT_BARGE_IN_COMMANDS",
        group=Group.BARGE_IN,
        description="`words` mode: comma-separated phrases that interrupt as soon as a probe "
        "hears them, even mid-word; empty: none.",
    )

    max_sessions: int = setting(
        1000,
        "STT_MAX_SESSIONS",
        group=Group.LIMITS,
        description="Concurrent sessions; more are refused (`too_many_sessions`).",
        ge=1,
    )
    max_session_s: float = setting(
        4 * 3600.0,
        "STT_MAX_SESSION_S",
        group=Group.LIMITS,
        description="Wall-clock life of a session, in seconds; past it the session is ended "
        "as by `end` (`session_closed` reason `max_duration`).",
        gt=0,
    )
    session_idle_timeout_s: float = setting(
        60.0,
        "STT_SESSION_IDLE_TIMEOUT_S",
        group=Group.LIMITS,
        description="A session with no message for this many seconds is evicted (its open "
        "speech finalised first).",
        gt=0,
    )
    # Session ids go into output subjects, and NATS closes a connection whose protocol line
    # passes 4 KiB.
    max_session_id_chars: int = setting(
        128,
        "STT_MAX_SESSION_ID_CHARS",
        group=Group.LIMITS,
        description="Longest session id accepted; longer ones get `invalid_session_id`.",
        ge=1,
        le=1024,
    )
    max_chunk_bytes: int = setting(
        256_000,
        "STT_MAX_CHUNK_BYTES",
        group=Group.LIMITS,
        description="Largest accepted audio chunk.",
        ge=320,
    )
    max_pending_finals: int = setting(
        256,
        "STT_MAX_PENDING_FINALS",
        group=Group.LIMITS,
        description="Finals queued for inference before new ones get `overloaded`.",
        ge=1,
    )
    error_replies_per_s: float = setting(
        1.0,
        "STT_ERROR_REPLIES_PER_S",
        group=Group.LIMITS,
        description="Error replies to rejected messages per session (or per subject, for "
        "messages that open none) and second, after a burst of `STT_ERROR_REPLY_BURST`; the "
        'rest are counted and summed in the next reply ("and N more").',
        gt=0,
    )
    error_reply_burst: int = setting(
        5,
        "STT_ERROR_REPLY_BURST",
        group=Group.LIMITS,
        description="Error replies a session (or subject) may get at once before "
        "`STT_ERROR_REPLIES_PER_S` applies.",
        ge=1,
    )
    error_replies_overall_per_s: float = setting(
        200.0,
        "STT_ERROR_REPLIES_OVERALL_PER_S",
        group=Group.LIMITS,
        description="Error replies to rejected messages per second for the whole worker "
        "(bursts of twice as many), so that a flood spread over many subjects is bounded too.",
        gt=0,
    )
    max_pending_finals_per_session: int = setting(
        8,
        "STT_MAX_PENDING_FINALS_PER_SESSION",
        group=Group.LIMITS,
        description="Finals one session may have queued for inference; past it that session's "
        "new ones get `overloaded` while other sessions' keep their place.",
        ge=1,
    )
    max_audio_speed: float = setting(
        2.0,
        "STT_MAX_AUDIO_SPEED",
        group=Group.LIMITS,
        description="Fastest a session may send audio (and, apart, `playback`), in times real "
        "time, once its burst is spent; faster audio gets `rate_limited`. 0 turns the limit off.",
        ge=0,
    )
    audio_burst_s: float = setting(
        10.0,
        "STT_AUDIO_BURST_S",
        group=Group.LIMITS,
        description="Seconds of audio a session may send at once beyond its pace (after a "
        "network stall, or a short file sent whole) before `STT_MAX_AUDIO_SPEED` applies.",
        gt=0,
    )
    max_control_per_s: float = setting(
        20.0,
        "STT_MAX_CONTROL_PER_S",
        group=Group.LIMITS,
        description="`start` and `state_change` messages a session may send per second (as "
        "many at once); more get `rate_limited`. 0 turns the limit off.",
        ge=0,
    )
    session_inbox_messages: int = setting(
        1024,
        "STT_SESSION_INBOX_MESSAGES",
        group=Group.LIMITS,
        description="Messages of one session admitted but not yet processed; past it (or "
        "`STT_SESSION_INBOX_BYTES`) that session's messages get `rate_limited`.",
        ge=16,
    )
    session_inbox_bytes: int = setting(
        8_000_000,
        "STT_SESSION_INBOX_BYTES",
        group=Group.LIMITS,
        description="Bytes of one session's messages admitted but not yet processed (keep it "
        "above `STT_MAX_CHUNK_BYTES`).",
        ge=256_000,
    )
    pending_msgs_limit: int = setting(
        65_536,
        "STT_PENDING_MSGS_LIMIT",
        group=Group.LIMITS,
        description="The NATS client's per-subscription buffer, in messages.",
        ge=64,
    )
    drain_timeout_s: float = setting(
        25.0,
        "STT_DRAIN_TIMEOUT_S",
        group=Group.LIMITS,
        description="On SIGTERM, seconds allowed to publish the last finals and "
        "`session_closed` before the worker exits.",
        gt=0,
    )

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

    http_host: str = setting(
        "0.0.0.0",
        "STT_HTTP_HOST",
        group=Group.OPERATIONS,
        description="Listen address of `/healthz`, `/readyz` and `/metrics`.",
    )
    http_port: int = setting(
        8080,
        "STT_HTTP_PORT",
        group=Group.OPERATIONS,
        description="Listen port of `/healthz`, `/readyz` and `/metrics`; 0 = a free port "
        "the OS picks (tests), -1 = no HTTP endpoint at all.",
        ge=-1,
        le=65535,
    )
    log_level: str = setting(
        "INFO",
        AliasChoices("STT_LOG_LEVEL", "LOG_LEVEL"),
        group=Group.OPERATIONS,
        description="Log level.",
    )
    log_format: Literal["auto", "json", "text"] = setting(
        "auto",
        "STT_LOG_FORMAT",
        group=Group.OPERATIONS,
        description="`json` (one object per line), `text`, or `auto`: text on a terminal, "
        "JSON otherwise.",
    )
    build_commit: str = setting(
        "unknown",
        "STT_BUILD_COMMIT",
        group=Group.OPERATIONS,
        description="Source commit of the running build, the `commit` label of "
        "`stt_build_info` and `stt_whisper_server_build_info` (the images set it from "
        "`--build-arg STT_BUILD_COMMIT=$(git rev-parse HEAD)`).",
    )

    # The seed's names; the OTLP exporters also read the standard OTEL_* variables themselves.
    otel_enabled: bool = setting(
        True,
        "OTEL_ENABLED",
        group=Group.TRACING,
        description="Export traces over OTLP. The standard `OTEL_EXPORTER_OTLP_*` variables "
        "(endpoint, headers, timeout, certificates, compression), `OTEL_RESOURCE_ATTRIBUTES` "
        "and `OTEL_BSP_*` apply.",
    )
    otel_service_name: str = setting(
        "stt-streaming",
        "OTEL_SERVICE_NAME",
        group=Group.TRACING,
        description="`service.name` of the exported spans.",
    )
    otel_exporter_otlp_protocol: str = setting(
        "http/protobuf",
        AliasChoices("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"),
        group=Group.TRACING,
        description="`http/protobuf` (the OTel default for new SDKs) or `grpc`.",
    )
    otel_exporter_otlp_endpoint: str | None = setting(
        None,
        AliasChoices("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        group=Group.TRACING,
        description="Where the OTLP exporter sends traces; unset: the exporter's default for "
        "the protocol. With `HYPERDX_ENABLED`, the OTLP exporter runs only when this is set.",
    )
    hyperdx_enabled: bool = setting(
        False,
        "HYPERDX_ENABLED",
        group=Group.TRACING,
        description="Also send traces to HyperDX (needs `HYPERDX_API_KEY`).",
    )
    hyperdx_api_key: SecretStr | None = setting(
        None,
        "HYPERDX_API_KEY",
        group=Group.TRACING,
        description="HyperDX key, sent as `authorization`; never logged.",
    )
    hyperdx_otlp_endpoint: str = setting(
        "https://in-otel.hyperdx.io",
        "HYPERDX_OTLP_ENDPOINT",
        group=Group.TRACING,
        description="HyperDX's OTLP/HTTP endpoint.",
    )

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


def _phrases(listing: str) -> list[str]:
    """A comma-separated setting as its non-empty phrases."""
    return [phrase.strip() for phrase in listing.split(",") if phrase.strip()]
