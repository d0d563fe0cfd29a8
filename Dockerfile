# HTTP variant: the light worker. It sends each utterance to an OpenAI-compatible Whisper
# service at WHISPER_URL (e.g. `stt-streaming whisper-server` from Dockerfile.cpu), so it
# carries no torch, no CTranslate2 and no model.
#   docker build -t stt-streaming:http .
#   docker run --read-only --tmpfs /tmp -e NATS_URL=... -e WHISPER_URL=... stt-streaming:http
# Every pip step is in docker/install.sh, which CI runs too (tests/test_containers.py).

FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY docker/install.sh docker/
COPY pyproject.toml README.md constraints.txt ./
COPY stt_worker stt_worker/
# The venv lives at the same path in both stages: its scripts name their interpreter by
# absolute path.
RUN python -m venv /opt/venv \
    && bash docker/install.sh http /opt/venv

FROM python:3.11.14-slim-bookworm
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin stt
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY stt_streaming.py docker/healthcheck.py ./
# The commit `stt_build_info` names: --build-arg STT_BUILD_COMMIT=$(git rev-parse HEAD).
ARG STT_BUILD_COMMIT=unknown
# Nothing is written outside /tmp (HOME included), so the root filesystem can be read-only.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    STT_BUILD_COMMIT=${STT_BUILD_COMMIT} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
# /healthz, /readyz and /metrics (STT_HTTP_PORT).
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/app/healthcheck.py"]
CMD ["python", "stt_streaming.py"]
