"""JSON logs: one line per record with timestamp, service, level, message, trace_id, span_id."""

from __future__ import annotations

import logging
import sys
import threading
from types import TracebackType

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter


class _TraceContext(logging.Filter):
    """Stamps each record with the service name and the current span's ids."""

    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        if getattr(record, "trace_id", ""):
            # Named by the caller (`extra`): a line about one event of a consumed batch
            # belongs in that event's trace, not in the batch span's (its first event's).
            record.span_id = getattr(record, "span_id", "")
            return True
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        else:
            record.trace_id = getattr(record, "trace_id", "")
            record.span_id = getattr(record, "span_id", "")
        return True


def setup_logging(service: str, level: str = "INFO") -> None:
    """Route every logger (ours, aiohttp's, temporalio's, aiokafka's) and every
    `warnings.warn` to JSON on stderr.

    `level` is AGORA_LOG_LEVEL's value: one it does not know is refused before the
    handler is replaced, so the refusal goes out as JSON if logging was set up before.
    """
    # The five names only: logging also knows WARN, FATAL and NOTSET (which logs
    # everything), which the documentation does not offer.
    if level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError(
            f"AGORA_LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not {level!r}"
        )
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_TraceContext(service))
    handler.setFormatter(
        JsonFormatter(
            "{service}{levelname}{name}{message}{trace_id}{span_id}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp=True,  # ISO 8601 in UTC, sortable across processes
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    _route_uncaught()
    # Without this, a library's `warnings.warn` is bare text on stderr.
    logging.captureWarnings(True)
    # Chatty libraries: their INFO lines are noise at our INFO.
    for noisy in ("aiokafka", "kafka", "elastic_transport", "temporalio.activity"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def _route_uncaught() -> None:
    """What Python prints itself, as JSON lines too: an exception uncaught in the main
    thread or in another thread, and one raised where nothing can catch it (a `__del__`,
    a finalizer). They were bare tracebacks on stderr, with no service or level, which
    the log pipeline keeps unparsed and `make logs` skips."""
    log = logging.getLogger("agora.uncaught")

    def uncaught(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, error, tb)
            return
        log.critical("uncaught exception", exc_info=(kind, error, tb))

    def uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return  # as threading's own hook: a thread's sys.exit() is no error
        name = args.thread.name if args.thread is not None else "?"
        exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
        log.error("uncaught exception in thread %s", name, exc_info=exc_info)  # type: ignore[arg-type]

    def unraisable(hook: sys.UnraisableHookArgs) -> None:
        exc_info = (hook.exc_type, hook.exc_value, hook.exc_traceback)
        message = hook.err_msg or "Exception ignored in"
        log.warning("%s: %r", message, hook.object, exc_info=exc_info)  # type: ignore[arg-type]

    sys.excepthook = uncaught
    threading.excepthook = uncaught_in_thread
    sys.unraisablehook = unraisable
