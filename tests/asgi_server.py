"""Run an ASGI app on a real uvicorn server on 127.0.0.1, in the test's own event loop."""

from stt_worker.runtime.asgi import serving_in_loop as serving

__all__ = ["serving"]
