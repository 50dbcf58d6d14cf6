"""grpclib servers and channels, always over mutual TLS with the platform CA.

Servicers get two things from `start_server` without asking: the calling
service's name (its certificate's CN, `peer_cn()`) and the mapping of domain
errors (`agora.errors.DomainError`) to gRPC statuses. betterproto2 servicer
methods receive only the request message, not the grpclib stream, so each
servicer's `__mapping__` is wrapped: before a call, the wrapper puts the peer
certificate's CN into a context variable (the handler runs in the same task,
so it sees it) and turns domain errors into the error's status. A request that
is not a valid protobuf message of the method's type is refused with
INVALID_ARGUMENT (`RequestCodec`), not the UNKNOWN of a handler crash.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import random
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from ssl import SSLContext
from typing import Any

import asyncpg
from grpclib import GRPCError
from grpclib._typing import IServable
from grpclib.client import Channel
from grpclib.const import Handler, Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.events import SendRequest, listen
from grpclib.exceptions import StreamTerminatedError
from grpclib.health.service import Health
from grpclib.reflection.service import ServerReflection
from grpclib.server import Server, Stream
from opentelemetry import metrics, trace
from opentelemetry.propagate import extract, inject
from opentelemetry.trace import SpanKind, StatusCode
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agora import pki
from agora.config import Settings
from agora.db import STATEMENT_TIMEOUTS
from agora.errors import DomainError
from agora.pki import client_context, server_context

# Who calls each service's API: any other certificate of the platform CA is refused
# PERMISSION_DENIED before the handler runs (the same lists as the charts'
# `grpcCallers`, whose NetworkPolicy enforces them in a cluster; tests/deploy checks
# they agree). Any service's key could call identity's SignIn, past the gateway's
# rate limits, or sign any session out. gRPC health answers every platform peer.
CALLERS: dict[str, frozenset[str]] = {
    "identity": frozenset({"gateway"}),
    "catalog": frozenset({"gateway", "orders", "search"}),
    "search": frozenset({"gateway"}),
    "inventory": frozenset({"gateway", "search"}),
    "orders": frozenset({"gateway"}),
    "payments": frozenset({"gateway"}),
    "audit": frozenset({"gateway"}),
}


async def start_server(settings: Settings, service: str, handlers: Sequence[IServable]) -> Server:
    """Serve `handlers` (plus gRPC health) on the service's port; refuses peers without a
    cert, and (PERMISSION_DENIED) peers not among the service's CALLERS."""
    callers = CALLERS[service]
    all_handlers: list[IServable] = [
        *(_WithCallContext(h, callers=callers) for h in handlers),
        Health(),
    ]
    server = Server(ServerReflection.extend(all_handlers), codec=RequestCodec())
    await server.start(
        settings.listen_host,
        settings.grpc_port(service),
        ssl=server_context(settings.pki_dir, service),
    )
    return server


class RequestCodec(ProtoCodec):
    """grpclib's protobuf codec, with an undecodable request refused as the caller's error.

    On a server the codec decodes only requests: a frame that does not parse (a varint
    cut short or too long) is bad input, so INVALID_ARGUMENT, where grpclib would let
    the parser's exception crash the handler (UNKNOWN, a server fault on the 5xx panels).
    """

    def decode(self, data: bytes, message_type: Any) -> Any:
        try:
            return super().decode(data, message_type)
        except Exception as exc:
            name = getattr(message_type, "__name__", "the request")
            raise GRPCError(
                Status.INVALID_ARGUMENT, f"the request is not a valid {name} message: {exc}"
            ) from None


log = logging.getLogger("agora.grpc")
_tracer = trace.get_tracer("agora.grpc")
_meter = metrics.get_meter("agora.grpc")
# RED for every gRPC method a service serves: rate and errors from the count by
# code, duration from the histogram. Labels are bounded: method and status code.
_server_duration = _meter.create_histogram(
    "rpc.server.duration", unit="s", description="gRPC server call duration, by method and code"
)
# Statuses that mean the server failed, not the caller (OpenTelemetry's rpc conventions).
_SERVER_FAULTS = frozenset(
    {
        Status.UNKNOWN,
        Status.DEADLINE_EXCEEDED,
        Status.UNIMPLEMENTED,
        Status.INTERNAL,
        Status.UNAVAILABLE,
        Status.DATA_LOSS,
    }
)
# A store the handler needs could not be reached (PostgreSQL restarting or refusing
# connections, Redis down): UNAVAILABLE, which callers retry (the gateway's 503),
# not UNKNOWN, a crash of the handler (the gateway's 502).
# Connection errors only: another OSError in a handler (a file not found) is a bug,
# answered UNKNOWN with its traceback.
DEPENDENCY_DOWN: tuple[type[BaseException], ...] = (
    ConnectionError,  # refused, reset, aborted, broken pipe
    asyncpg.PostgresConnectionError,  # a connection lost mid-query among them
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    RedisConnectionError,
    RedisTimeoutError,
)
_peer_cn: contextvars.ContextVar[str] = contextvars.ContextVar("identity_peer_cn", default="")


def peer_cn() -> str:
    """The common name of the calling service's certificate ("" outside a call)."""
    return _peer_cn.get()


def common_name(cert: dict[str, Any] | None) -> str:
    """CN of a certificate as returned by ssl.SSLSocket.getpeercert()."""
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


StreamFunc = Callable[[Stream[Any, Any]], Coroutine[Any, Any, None]]


# Calls being served by this process (every servicer's methods run through `_wrap`).
_in_flight = 0


async def drain(server: Server, *, quiet_s: float = 0.2, timeout_s: float = 5.0) -> None:
    """Stop a server without cutting off the calls it is serving.

    grpclib's `Server.close()` cancels every running handler (and sends no GOAWAY).
    So first stop accepting connections, then wait until no call has been in flight
    for `quiet_s` (callers on an open connection, e.g. the gateway's pooled one, may
    still send some: they are served), at most `timeout_s`, and only then close.
    A caller's next call finds the connection closed and reconnects elsewhere.
    Without grpclib support for GOAWAY, a call sent in the closing instant can still
    fail (UNAVAILABLE)."""
    listening = server._server  # grpclib keeps the asyncio.Server private
    if listening is not None:
        listening.close()  # no new connections; open ones go on
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    quiet_since = loop.time()
    while loop.time() < deadline:
        if _in_flight:
            quiet_since = loop.time()
        elif loop.time() - quiet_since >= quiet_s:
            break
        await asyncio.sleep(0.02)
    server.close()


# The longest error message a server sends. It travels percent-encoded in the
# grpc-message trailer (up to 12 bytes a character), and a caller's HTTP/2 client
# drops the whole connection, every call on it, on a header block over 64 KiB.
MAX_MESSAGE_CHARS = 1024


def bounded_message(message: str | None) -> str | None:
    """`message`, cut to MAX_MESSAGE_CHARS characters (ending in "…" when cut)."""
    if message is None or len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[: MAX_MESSAGE_CHARS - 1] + "…"


def _wrap(func: StreamFunc, method: str, callers: frozenset[str] | None = None) -> StreamFunc:
    @functools.wraps(func)
    async def handle(stream: Stream[Any, Any]) -> None:
        global _in_flight
        _in_flight += 1
        try:
            await _handle(stream)
        finally:
            _in_flight -= 1

    async def _handle(stream: Stream[Any, Any]) -> None:
        token = _peer_cn.set(common_name(stream.peer.cert()))
        parent = extract(dict(stream.metadata or {}))
        started = time.perf_counter()
        code = Status.OK
        with _tracer.start_as_current_span(
            method.lstrip("/"),
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.method": method, "peer.service": peer_cn()},
            # The status is set below: a caller's error (NOT_FOUND, INVALID_ARGUMENT) is
            # not the server failing, and the SDK's default marks every raise an ERROR.
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                if callers is not None and peer_cn() not in callers:
                    raise GRPCError(
                        Status.PERMISSION_DENIED,
                        f"{peer_cn() or 'a peer without a name'} may not call {method}",
                    )
                await func(stream)
            except DomainError as exc:
                code = exc.grpc_status
                if exc.grpc_status in _SERVER_FAULTS:
                    span.set_status(StatusCode.ERROR, exc.detail or exc.grpc_status.name)
                raise GRPCError(exc.grpc_status, bounded_message(exc.detail)) from None
            except GRPCError as exc:
                code = exc.status
                if exc.status in _SERVER_FAULTS:
                    span.set_status(StatusCode.ERROR, exc.message or exc.status.name)
                bounded = bounded_message(exc.message)
                if bounded != exc.message:
                    raise GRPCError(exc.status, bounded, exc.details) from None
                raise
            except asyncio.CancelledError:
                # grpclib cancels the handler when the caller's deadline passes or the
                # caller resets the stream: the caller gave up, the server did not fail.
                code = Status.CANCELLED
                raise
            except STATEMENT_TIMEOUTS as exc:
                # A query ran past its timeout: the caller may try again (a gateway
                # answers 504 upstream-timeout), it is no crash of the handler.
                code = Status.DEADLINE_EXCEEDED
                span.record_exception(exc)
                span.set_status(StatusCode.ERROR, type(exc).__name__)
                log.warning("gRPC handler timed out", extra={"method": method})
                raise GRPCError(code, "the request took too long") from None
            except DEPENDENCY_DOWN as exc:
                code = Status.UNAVAILABLE
                span.record_exception(exc)
                span.set_status(StatusCode.ERROR, type(exc).__name__)
                log.warning(
                    "gRPC handler's store is unavailable: %s: %s",
                    type(exc).__name__,
                    exc,
                    extra={"method": method},
                )
                raise GRPCError(code, "a store the service needs is unavailable; retry") from None
            except BaseException as exc:
                code = Status.UNKNOWN
                span.record_exception(exc)
                span.set_status(StatusCode.ERROR, type(exc).__name__)
                if not _handler_crash(exc):
                    raise
                # Left to grpclib, the traceback is logged ("Application error") after
                # this span has closed, so without a trace id. Logged here it has one;
                # the caller gets the status grpclib would send, and grpclib does not
                # log a GRPCError again.
                log.exception("gRPC handler failed", extra={"method": method})
                raise GRPCError(Status.UNKNOWN, "Internal Server Error") from None
            finally:
                _peer_cn.reset(token)
                span.set_attribute("rpc.grpc.status_code", code.value)
                _server_duration.record(
                    time.perf_counter() - started, {"rpc_method": method, "rpc_code": code.name}
                )

    return handle


def _handler_crash(exc: BaseException) -> bool:
    """Whether the handler itself failed: not the interpreter stopping (a BaseException)
    nor the caller's stream ending under it, which grpclib logs as a cancellation."""
    return isinstance(exc, Exception) and not isinstance(exc, StreamTerminatedError)


def with_call_context(
    mapping: Mapping[str, Handler], callers: frozenset[str] | None = None
) -> dict[str, Handler]:
    """The servicer's mapping with every method wrapped as described in the module
    docstring; `callers`: the only peers (certificate CNs) it answers, None: any."""
    return {
        name: handler._replace(func=_wrap(handler.func, name, callers))
        for name, handler in mapping.items()
    }


async def _propagate(event: SendRequest) -> None:
    """Every outgoing call carries the caller's trace context (W3C traceparent) in metadata."""
    carrier: dict[str, str] = {}
    inject(carrier)
    for key, value in carrier.items():
        event.metadata[key] = value


class _WithCallContext:
    """A servicer whose every method runs inside `with_call_context`."""

    def __init__(self, servicer: IServable, *, callers: frozenset[str] | None = None):
        self._servicer = servicer
        self._callers = callers

    def __mapping__(self) -> dict[str, Handler]:
        return with_call_context(self._servicer.__mapping__(), self._callers)


# A client opens a new connection to a service this often (with jitter). kube-proxy
# picks a backend pod per connection, never per call: with one connection for the
# life of the process, a service's pods the autoscaler added got none of its calls.
MAX_CONNECTION_AGE_S = 60.0
# A connection replaced by a new one still finishes the calls under way on it: it is
# closed this much later, longer than any call's deadline.
CONNECTION_DRAIN_S = 60.0


class _RenewingChannel(Channel):
    """A channel that connects again every MAX_CONNECTION_AGE_S, each new connection
    with the TLS context built from the certificate files as they are now
    (`pki.current`): the renewed certificate, and only the CAs of the bundle as it is
    (a CA dropped from it stays trusted by the context loaded first).

    grpclib reads the context from `_ssl` when it connects, keeps its one connection
    in `_protocol`, and has no public way to change either (nor GOAWAY, with which a
    server could make its clients move)."""

    def __init__(self, host: str, port: int, *, ssl: SSLContext | None) -> None:
        super().__init__(host, port, ssl=ssl)
        self._live_ssl = ssl
        self._renew_at = 0.0
        self._draining: dict[Any, asyncio.TimerHandle] = {}  # old connection: its close

    async def _create_connection(self) -> Any:
        if self._live_ssl is not None:
            self._ssl = pki.current(self._live_ssl)
        return await super()._create_connection()

    async def __connect__(self) -> Any:
        loop = asyncio.get_running_loop()
        old = self._protocol
        if old is not None and self._connected and loop.time() >= self._renew_at:
            self._protocol = None
            try:
                protocol = await super().__connect__()
            except Exception:
                # No new connection (the service has no ready pod, say): the old one
                # still works, so the call goes on it; the next call tries again.
                if self._protocol is None:
                    self._protocol = old
                    return old
                raise
            self._draining[old] = loop.call_later(CONNECTION_DRAIN_S, self._closed, old)
        else:
            protocol = await super().__connect__()
        if protocol is not old:
            self._renew_at = loop.time() + MAX_CONNECTION_AGE_S * random.uniform(0.8, 1.2)
        return protocol

    def _closed(self, old: Any) -> None:
        self._draining.pop(old, None)
        old.processor.close()

    def close(self) -> None:
        for old, handle in list(self._draining.items()):
            handle.cancel()
            self._closed(old)
        super().close()


class Channels:
    """One pooled HTTP/2 channel per target service, shared by the whole process."""

    def __init__(self, settings: Settings, caller: str):
        self._settings = settings
        self._caller = caller
        self._channels: dict[str, Channel] = {}

    def get(self, target: str) -> Channel:
        channel = self._channels.get(target)
        if channel is None:
            channel = _RenewingChannel(
                self._settings.grpc_host(target),
                self._settings.grpc_port(target),
                ssl=client_context(self._settings.pki_dir, self._caller),
            )
            listen(channel, SendRequest, _propagate)
            self._channels[target] = channel
        return channel

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
