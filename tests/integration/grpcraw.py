"""A raw HTTP/2 client for sending a gRPC service bytes no well-behaved client would.

grpclib and every other gRPC library frame messages correctly, so tests that
send a malformed protobuf, a length prefix longer than its data or an invalid
compressed flag speak HTTP/2 themselves (the h2 library) over the service's
real mTLS port, with a platform certificate, and read back what the server says.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events


def grpc_frame(message: bytes, *, compressed: int = 0, declared_length: int | None = None) -> bytes:
    """The 5-byte gRPC prefix (compressed flag, big-endian length) and the message."""
    length = len(message) if declared_length is None else declared_length
    return struct.pack(">BI", compressed, length) + message


@dataclass
class Answer:
    """What the server did with the stream: headers, trailers, a reset of the stream
    (RST_STREAM) or of the whole connection (GOAWAY)."""

    headers: dict[str, str] = field(default_factory=dict)
    trailers: dict[str, str] = field(default_factory=dict)
    data: bytes = b""
    reset_code: int | None = None
    goaway_code: int | None = None
    ended: bool = False

    @property
    def refused_by_http2(self) -> tuple[str, int] | None:
        """("RST_STREAM" or "GOAWAY", its error code) when HTTP/2 ended the stream."""
        if self.reset_code is not None:
            return ("RST_STREAM", self.reset_code)
        if self.goaway_code is not None:
            return ("GOAWAY", self.goaway_code)
        return None

    @property
    def grpc_status(self) -> int | None:
        """grpc-status from the trailers, or from a trailers-only answer's headers."""
        raw = self.trailers.get("grpc-status", self.headers.get("grpc-status"))
        return int(raw) if raw is not None else None

    @property
    def grpc_message(self) -> str:
        return self.trailers.get("grpc-message", self.headers.get("grpc-message", ""))


def call_raw(
    host: str,
    port: int,
    context: ssl.SSLContext,
    path: str,
    body: bytes,
    *,
    timeout: float = 10.0,
    extra_headers: tuple[tuple[str, str], ...] = (),
) -> Answer:
    """One HTTP/2 stream to `path` carrying `body` as its DATA, then END_STREAM."""
    raw = socket.create_connection((host, port), timeout=timeout)
    sock = context.wrap_socket(raw, server_hostname=host)
    try:
        assert sock.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        stream_id = 1  # the first client stream
        conn.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":path", path),
                (":authority", f"{host}:{port}"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                *extra_headers,
            ],
        )
        conn.send_data(stream_id, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        answer = Answer()
        deadline = time.monotonic() + timeout
        while not (answer.ended or answer.refused_by_http2):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path}: no answer in {timeout}s")
            chunk = sock.recv(65536)
            if not chunk:
                break
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived):
                    answer.headers = {_s(k): _s(v) for k, v in event.headers}
                elif isinstance(event, h2.events.TrailersReceived):
                    answer.trailers = {_s(k): _s(v) for k, v in event.headers}
                elif isinstance(event, h2.events.DataReceived):
                    answer.data += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    answer.ended = True
                elif isinstance(event, h2.events.StreamReset):
                    answer.reset_code = event.error_code
                elif isinstance(event, h2.events.ConnectionTerminated):
                    answer.goaway_code = event.error_code
            pending = conn.data_to_send()
            if pending:
                sock.sendall(pending)
        return answer
    finally:
        sock.close()


def _s(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
