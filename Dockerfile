# The processor, for `docker compose --profile processor up`: slim, pinned, non-root, runtime deps only.
FROM python:3.11.16-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin processor
WORKDIR /app

# Both engines: KAFKA_CLIENT=confluent-kafka picks librdkafka (its wheel bundles it; no system packages).
# From the lock (requirements.lock, `make lock`): every package at its version, checked against its hashes.
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock

COPY kafka_consumer_processor.py .
COPY login_pipeline/ login_pipeline/
# The live insights validate what they read back against these.
COPY schemas/ schemas/

USER processor
# Exec form: the processor is PID 1 and receives SIGTERM itself, so `docker stop` drains cleanly.
ENTRYPOINT ["python", "kafka_consumer_processor.py"]
