"""Structured logging: key=value on a terminal, JSON lines in a cluster."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog


def configure_logging(fmt: Literal["console", "json"] = "console", level: int = logging.INFO) -> None:
    """Route structlog and stdlib logging (grpc, aiohttp) through one renderer on stderr."""
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        # Plain tracebacks: the default (rich, when installed) prints every frame's local variables, which can
        # hold request bodies and bearer tokens.
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    # JSON lines carry the formatted traceback as a string ("exception"); without this the JSON renderer prints
    # `<traceback object at ...>`. The console renderer formats exc_info itself.
    tracebacks: list[structlog.types.Processor] = [structlog.processors.format_exc_info] if fmt == "json" else []
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tracebacks, renderer],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server.filters):
        server.addFilter(MalformedRequestFilter())


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a request it cannot parse (a request line or header over 8190 bytes, a broken header) at error
    level with a full traceback: anyone who reaches the port could fill the log with them, unauthenticated. They
    become one warning line; errors inside handlers keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            # First line only, bounded: some messages quote the offending bytes.
            why = (str(exc.message).splitlines() or [""])[0][:200]
            record.msg, record.args = "malformed HTTP request refused: %s %s", (exc.code, why)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True
