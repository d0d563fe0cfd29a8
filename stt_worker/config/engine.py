"""Which speech engine runs, on which model and device, and how many decodes at once."""

from __future__ import annotations

from pydantic import BaseModel, field_validator

from stt_worker.config.fields import Group, setting


class EngineFields(BaseModel):
    """The fields of `Group.ENGINE`, one of the bases of `Settings`."""

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
        description="Threads per decode; 0 = the CPUs the process may use (its affinity set, "
        "capped by its cgroup CPU limit) / `STT_MAX_CONCURRENT_INFERENCES`.",
        ge=0,
    )
    whisper_partial_nice: int = setting(
        0,
        "WHISPER_PARTIAL_NICE",
        group=Group.ENGINE,
        description="Above 0 (CPU engine, 2+ slots): partials get a slot of their own on a "
        "second copy of the model whose threads run this much nicer (lower CPU priority), so "
        "they yield to finals, this worker's and other workers' on shared cores. Beside "
        "`STT_PARTIAL_CPU_WAIT` it adds little (bench/results/shared_cores.md); costs "
        "150-290 MB (tiny.en, base); 0 = one copy, one priority.",
        ge=0,
        le=19,
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
    whisper_doubt_retry: bool = setting(
        True,
        "WHISPER_DOUBT_RETRY",
        group=Group.ENGINE,
        description="A final (or a whisper-server transcription) whose short window Whisper "
        "doubts so much that the hallucination "
        "rules blank it (no_speech_prob under 0.8) is decoded again in the 30 s window, which "
        'keeps short phrases (JFK\'s "ask not"); costs a 30 s decode on those finals.',
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

    @field_validator("whisper_language")
    @classmethod
    def _empty_language_is_auto(cls, value: str | None) -> str | None:
        return value or None
