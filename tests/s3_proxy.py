"""A small HTTP reverse proxy in front of the S3 endpoint (moto) that behaves like other stores, or fails.

It stands for the S3-compatible stores tests cannot run (MinIO, Ceph RGW, R2) and for a store
in trouble. Every knob is an attribute that may be changed while it runs:

- ``require_content_md5``: refuse ``DeleteObjects`` without a ``Content-MD5`` header (400
  ``MissingContentMD5``, as MinIO and Ceph do), and check the header against the body (``BadDigest``).
- ``quiet_reply``: ``True`` answers every ``DeleteObjects`` quietly (no ``Deleted`` list), ``False``
  lists every key under ``Deleted`` even when ``Quiet`` was asked for; ``None`` passes the reply on.
- ``missing_as_errors``: report keys that did not exist as ``NoSuchKey`` errors instead of deleted.
- ``refuse_keys``: keys ``DeleteObjects`` does not delete, answered with a per-key ``AccessDenied``.
- ``mfa_delete``: ``GetBucketVersioning`` says MFA delete is enabled (moto does not model it).
- ``fail_share`` (0..1) with ``fail_with`` (``SlowDown`` → 503, ``InternalError`` → 500): answer that
  share of requests with the error instead of forwarding them.
- ``down``: close every connection without an answer (the store is unreachable); ``stop()`` and
  ``start()`` again on the same port stop and restart the endpoint itself.

``requests`` records (method, path, headers) of what reached the proxy; ``injected`` counts the
faults by kind. ``python -m tests.s3_proxy UPSTREAM [--port N]`` runs one in the foreground.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import random
import socket
import sys
import threading
import xml.etree.ElementTree as ET  # noqa: S405 - parses our own test traffic
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}
FAULTS = {
    "SlowDown": (503, "Please reduce your request rate."),
    "InternalError": (500, "We encountered an internal error."),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def error_xml(code: str, message: str, resource: str = "") -> bytes:
    """An S3 error document."""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
        f"<Resource>{resource}</Resource><RequestId>s3proxy</RequestId></Error>"
    ).encode()


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def requested_keys(body: bytes) -> list[str]:
    """The keys of a DeleteObjects request body."""
    root = ET.fromstring(body)  # noqa: S314 - our own test traffic
    return [
        child.text or "" for obj in root if _local(obj.tag) == "Object" for child in obj if _local(child.tag) == "Key"
    ]


def without_keys(body: bytes, keys: set[str]) -> bytes:
    """The DeleteObjects request body without the entries for ``keys``."""
    root = ET.fromstring(body)  # noqa: S314 - our own test traffic
    for obj in [obj for obj in root if _local(obj.tag) == "Object"]:
        if any(_local(child.tag) == "Key" and child.text in keys for child in obj):
            root.remove(obj)
    ET.register_namespace("", S3_NS)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


@dataclass(frozen=True)
class Seen:
    """One request that reached the proxy."""

    method: str
    path: str
    headers: dict[str, str]


class S3Proxy:
    """A threaded reverse proxy on 127.0.0.1 in front of ``upstream`` (``http://127.0.0.1:PORT``)."""

    def __init__(self, upstream: str, *, port: int | None = None, seed: int | None = None) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.port = port or free_port()
        self.require_content_md5 = False
        self.quiet_reply: bool | None = None
        self.missing_as_errors = False
        self.refuse_keys: set[str] = set()
        self.mfa_delete = False
        self.fail_share = 0.0
        self.fail_with = "SlowDown"
        self.down = False
        self.requests: list[Seen] = []
        self.injected: Counter[str] = Counter()
        self.random = random.Random(seed)  # noqa: S311 - fault sampling, not cryptography
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Proxy:
        """Listen on ``port`` (the same one across restarts) and serve in a background thread."""
        proxy = self

        class Handler(_Handler):
            owner = proxy

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"s3proxy-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening (connections are refused until ``start()``)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> S3Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)

    def count(self, kind: str) -> None:
        with self._lock:
            self.injected[kind] += 1

    def should_fail(self) -> bool:
        with self._lock:
            return self.fail_share > 0 and self.random.random() < self.fail_share

    def delete_calls(self) -> list[Seen]:
        """The DeleteObjects requests seen so far."""
        return [seen for seen in self.requests if seen.method == "POST" and _is_delete_query(seen.path)]


class _Handler(BaseHTTPRequestHandler):
    owner: S3Proxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        return  # quiet: tests read ``requests`` instead

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while (size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, status: int, body: bytes, headers: list[tuple[str, str]] | None = None) -> None:
        self.send_response(status)
        sent = set()
        for name, value in headers or [("Content-Type", "application/xml")]:
            if name.lower() in HOP_BY_HOP or name.lower() == "content-length":
                continue
            sent.add(name.lower())
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)) if self.command != "HEAD" else self._head_length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    _head_length = "0"

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.owner.upstream, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            send = body if body or self.command in ("PUT", "POST") else None
            conn.request(self.command, self.path, body=send, headers=headers)
            response = conn.getresponse()
            data = response.read()
            return response.status, response.getheaders(), data
        finally:
            conn.close()

    def _exists(self, bucket: str, key: str) -> bool:
        conn = http.client.HTTPConnection(*self.owner.upstream, timeout=30)
        try:
            conn.request("HEAD", f"/{bucket}/{quote(key)}")
            return conn.getresponse().status == 200
        finally:
            conn.close()

    def _handle(self) -> None:
        proxy = self.owner
        body = self._body()
        proxy.record(Seen(self.command, self.path, dict(self.headers.items())))
        if proxy.down:
            proxy.count("dropped")
            self.close_connection = True
            return
        url = urlsplit(self.path)
        is_delete = self.command == "POST" and _is_delete_query(self.path)
        if proxy.should_fail():
            proxy.count(proxy.fail_with)
            status, message = FAULTS[proxy.fail_with]
            self._reply(status, error_xml(proxy.fail_with, message, url.path))
            return
        if is_delete and proxy.require_content_md5:
            md5 = self.headers.get("Content-MD5")
            if not md5:
                proxy.count("missing_content_md5")
                message = "Missing required header for this request: Content-Md5."
                self._reply(400, error_xml("MissingContentMD5", message, url.path))
                return
            if md5 != base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode():
                proxy.count("bad_digest")
                self._reply(400, error_xml("BadDigest", "The Content-MD5 you specified did not match.", url.path))
                return
        missing: list[str] = []
        refused: list[str] = []
        if is_delete and proxy.missing_as_errors:
            bucket = unquote(url.path.strip("/").split("/", 1)[0])
            missing = [key for key in requested_keys(body) if not self._exists(bucket, key)]
        if is_delete and proxy.refuse_keys:
            refused = [key for key in requested_keys(body) if key in proxy.refuse_keys]
            body = without_keys(body, set(refused))
        if is_delete and not requested_keys(body):
            status, headers, data = 200, [("Content-Type", "application/xml")], b"<DeleteResult/>"
        else:
            status, headers, data = self._forward(body)
        self._head_length = next((v for k, v in headers if k.lower() == "content-length"), "0")
        if proxy.mfa_delete and self.command == "GET" and _has_query(self.path, "versioning") and status == 200:
            data = data.replace(b"</Status>", b"</Status><MfaDelete>Enabled</MfaDelete>", 1)
        if is_delete and status == 200 and (proxy.quiet_reply is not None or missing or refused):
            data = self._rewrite_delete_reply(requested_keys(body) + refused, data, missing, refused)
        self._reply(status, data, headers)

    def _rewrite_delete_reply(self, keys: list[str], data: bytes, missing: list[str], refused: list[str]) -> bytes:
        root = ET.fromstring(data)  # noqa: S314 - moto's reply
        fields = [(_local(item.tag), {_local(c.tag): c.text or "" for c in item}) for item in root]
        errors = {item.get("Key", ""): item for tag, item in fields if tag == "Error"}
        for key in refused:
            errors[key] = {"Code": "AccessDenied", "Message": "Access Denied"}
        listed = {item.get("Key", "") for tag, item in fields if tag == "Deleted"}
        out = [f'<?xml version="1.0" encoding="UTF-8"?>\n<DeleteResult xmlns="{S3_NS}">']
        for key in keys:
            if key in missing or key in errors:
                error = errors.get(key, {"Code": "NoSuchKey", "Message": "The specified key does not exist."})
                out.append(
                    f"<Error><Key>{_xml(key)}</Key><Code>{error.get('Code', '')}</Code>"
                    f"<Message>{_xml(error.get('Message', ''))}</Message></Error>"
                )
            elif self.owner.quiet_reply is False or (self.owner.quiet_reply is None and key in listed):
                out.append(f"<Deleted><Key>{_xml(key)}</Key></Deleted>")
        out.append("</DeleteResult>")
        return "".join(out).encode()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle  # noqa: N815 - http.server's names


def _has_query(path: str, name: str) -> bool:
    return name in parse_qs(urlsplit(path).query, keep_blank_values=True)


def _is_delete_query(path: str) -> bool:
    return _has_query(path, "delete")


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


if __name__ == "__main__":
    import time

    args = sys.argv[1:]
    port = int(args[args.index("--port") + 1]) if "--port" in args else None
    running = S3Proxy(args[0], port=port).start()
    print(f"s3 proxy on {running.url} → {args[0]}", flush=True)
    while True:
        time.sleep(3600)
