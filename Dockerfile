# Sentinelle worker / simulator image, used by docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml setup.py README.md ./
COPY streams ./streams
COPY detectors ./detectors
COPY alerting ./alerting
COPY sentinelle ./sentinelle
# gcc builds the sequential tests' compiled loop (detectors/_cusum.c), then goes
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install --no-cache-dir . \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y \
    && rm -rf /var/lib/apt/lists/*
ENTRYPOINT ["sentinelle"]
CMD ["worker"]
