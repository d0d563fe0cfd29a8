"""Our OpenAI-compatible Whisper service (`stt-streaming whisper-server`): one model over HTTP.

Deployed as `whisper-predictor` on a CPU or GPU node; the worker's `http` engine (and any
OpenAI client) talks to it. The modules:

    app.py         create_app: the endpoints, one engine, decode and transcribe in a slot
    observability.py  ServerMetrics (/metrics) and Observed: a span and metrics per request
    access.py      ApiKeyGate: `Authorization: Bearer` when WHISPER_API_KEY is set
    admission.py   Admission: the upload and queue stages and their bounds (503)
    form.py        the multipart body within its size and time bounds (413, 408); fields
    prompt.py      the prompt cut to the last 224 tokens, as Whisper reads it
    audio.py       decode_upload: an uploaded file to 16 kHz mono, bounded in duration
    responses.py   RequestError, OpenAI's error shape, verbose_json
    subtitles.py   the srt and vtt response formats
    process.py     app_for (from Settings) and run_server (uvicorn, SIGTERM drain)

Needs the `local` extra (PyAV, faster-whisper's language table).
"""

from stt_worker.whisper_server.app import (
    HEALTH_PATH,
    INFERENCE_TIME_HEADER,
    TRANSCRIPTIONS_PATH,
    create_app,
)
from stt_worker.whisper_server.audio import decode_upload
from stt_worker.whisper_server.process import app_for, run_server
from stt_worker.whisper_server.responses import RequestError, verbose_json

__all__ = [
    "HEALTH_PATH",
    "INFERENCE_TIME_HEADER",
    "TRANSCRIPTIONS_PATH",
    "RequestError",
    "app_for",
    "create_app",
    "decode_upload",
    "run_server",
    "verbose_json",
]
