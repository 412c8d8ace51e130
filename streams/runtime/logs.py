"""Logs as JSON lines, for aggregators (``worker.log_format: json``).

The worker, the bridges and the controller log one line per record. With
``worker.log_format: json`` each line is an object that Loki, Elasticsearch,
Cloud Logging or Datadog parse without a pattern: ``ts`` (RFC 3339, UTC,
milliseconds), ``level``, ``logger``, ``message`` and, when the record carries
one, ``exception`` (the formatted traceback). Anything outside JSON is escaped by
orjson, and a lone surrogate (from a hostile input quoted in a message) becomes
``?``: never a broken line, never a logging error.

>>> import logging, orjson
>>> record = logging.LogRecord("sentinelle.worker", logging.WARNING, __file__, 1,
...                            "alert %s %s", ("trigger", "outage:m"), None)
>>> record.created = 1_795_000_000.25
>>> orjson.loads(JsonFormatter().format(record))  # doctest: +NORMALIZE_WHITESPACE
{'ts': '2026-11-18T11:06:40.250Z', 'level': 'WARNING', 'logger': 'sentinelle.worker',
 'message': 'alert trigger outage:m'}
>>> record.args = ("trigger", "m" + chr(0xDC80))
>>> JsonFormatter().format(record).endswith('"message":"alert trigger m?"}')
True
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Literal

import orjson

__all__ = ["JsonFormatter", "logging_config", "setup_logging"]

LogFormat = Literal["text", "json"]
TEXT = "%(asctime)s %(levelname)s %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.created * 1000) % 1000:03d}Z",
            "level": record.levelname, "logger": record.name,
            "message": _clean(record.getMessage())}
        if record.exc_info:
            out["exception"] = _clean(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exception"] = _clean(record.exc_text)
        return orjson.dumps(out, default=str).decode()


def _clean(text: str) -> str:
    """``text`` as valid UTF-8 (lone surrogates replaced by ``?``)."""
    return text.encode("utf-8", "replace").decode("utf-8")


def logging_config(level: str | int) -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` for JSON lines on stdout (Faust's worker
    takes it as ``logging_config``)."""
    return {"version": 1, "disable_existing_loggers": False,
            "formatters": {"json": {"()": JsonFormatter}},
            "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "json",
                                     "stream": "ext://sys.stdout"}},
            "root": {"level": logging.getLevelName(level) if isinstance(level, int)
                     else level.upper(), "handlers": ["default"]}}


def setup_logging(fmt: LogFormat, level: int = logging.INFO) -> None:
    """Configure the root logger of a command that is not the worker."""
    handler = logging.StreamHandler(sys.stderr if fmt == "text" else sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
