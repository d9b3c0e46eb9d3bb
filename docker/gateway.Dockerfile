# The HTTP gateway and the webhook deliverer: no torch, no CUDA (a few hundred MB).
# Build from the repo root:  docker build -f docker/gateway.Dockerfile -t turbovid-gateway .
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

COPY pyproject.toml README.md ./
# The gateway speaks to the workers only through contract/; cli/ is the `turbovid` entry point, which
# imports each subcommand's package lazily (gateway/webhooks/keys need only contract/ and service/).
COPY contract ./contract
COPY service ./service
COPY cli ./cli
# Only the [service] extra: fastapi, uvicorn, boto3, pillow, prometheus-client, orjson, hiredis (+ redis, rq,
# pydantic).
RUN pip install ".[service]" \
 && python -c "import sys, service.app, service.webhooks, service.auth; \
assert not {'torch', 'models', 'kernels', 'worker'} & set(sys.modules), 'the gateway image must not need them'"

RUN useradd --system --uid 10001 turbovid
USER 10001
ENV TURBOVID_GATEWAY__HOST=0.0.0.0 TURBOVID_GATEWAY__PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
# `turbovid gateway` serves with uvicorn under service/server.py's connection limits (header deadline ->
# 408, header size -> 431, parser errors as JSON, requests per keep-alive connection) and the app's body
# limits (streamed 413, body deadline 408, JSON depth 400): no front proxy is needed for them. One process
# per container by default (scale with replicas); `gateway --workers N` runs N on one port.
# `turbovid webhooks` runs the webhook deliverer from the same image.
ENTRYPOINT ["turbovid"]
CMD ["gateway"]
