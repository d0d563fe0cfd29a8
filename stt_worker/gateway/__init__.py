"""The browser gateway: a WebSocket bridge from clients to worker sessions on NATS, and a page.

control.py  text and binary frames -> controls (ours, Parakeet-TDT's, the ONNX server's)
dialect.py  worker results -> the JSON each kind of client reads
outbox.py   a connection's bounded queue of outgoing frames (drops partials first)
access.py   Origin and token checks
bridge.py   one connection <-> its worker sessions (the I/O), built of:
  worker_sessions.py  the NATS side: subscribe, publish `start`/`chunk`/`end`
  segments.py         which worker sessions are open or finishing, in the order spoken
  sender.py           frames to the client, through the outbox, and the close
  refusals.py         error frames for unused frames, rationed
stats.py    counters over all connections (/health); close_codes.py: WebSocket close codes
app.py      Starlette routes: the page, /health, the WebSocket
settings.py STT_GATEWAY_* settings
command.py  `stt-streaming gateway`
static/     the page: HTML, JS (AudioWorklet), CSS
"""
