# Sentinelle worker / simulator image, used by docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streams ./streams
COPY detectors ./detectors
COPY alerting ./alerting
COPY sentinelle ./sentinelle
RUN pip install --no-cache-dir .
ENTRYPOINT ["sentinelle"]
CMD ["worker"]
