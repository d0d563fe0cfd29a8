"""stt_worker: a streaming speech-to-text worker for voice assistants on NATS."""

__version__ = "0.1.0"
