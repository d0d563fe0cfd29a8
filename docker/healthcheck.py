"""Container HEALTHCHECK: exit 0 when the service's health endpoint answers 2xx, else 1.

Slim images have no curl. The worker serves /healthz on STT_HTTP_PORT (8080); a container
whose command is `stt-streaming whisper-server` sets
HEALTHCHECK_URL=http://127.0.0.1:8000/health instead.
"""

import os
import sys
import urllib.error
import urllib.request

port = os.environ.get("STT_HTTP_PORT", "8080")
url = os.environ.get("HEALTHCHECK_URL", f"http://127.0.0.1:{port}/healthz")
try:
    with urllib.request.urlopen(url, timeout=3):  # raises HTTPError on 4xx/5xx
        pass
except (urllib.error.URLError, OSError) as exc:
    sys.stderr.write(f"{url}: {exc}\n")
    sys.exit(1)
