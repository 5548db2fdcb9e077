"""`tnbc fetch` against a local HTTP server on 127.0.0.1 serving a synthetic zip."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import make_zip
from tnbc_pipeline.data.fetch import Source, fetch
from tnbc_pipeline.data.raw import Release
from tnbc_pipeline.errors import TnbcError


class _Server(http.server.ThreadingHTTPServer):
    payload = b""
    honour_ranges = True
    cut_after: int | None = None  # close the connection after this many body bytes (a dropped download)
    ranges_seen: list[str]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        data, start = self.server.payload, 0
        wanted = self.headers.get("Range")
        if wanted:
            self.server.ranges_seen.append(wanted)
        if wanted and self.server.honour_ranges:
            start = int(wanted.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.server.cut_after is not None:
            body = body[: self.server.cut_after]
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(release_root: Path, tmp_path: Path) -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.payload = make_zip(release_root, tmp_path / "served.zip").read_bytes()
    srv.ranges_seen = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()


def _source(srv: _Server) -> Source:
    url = f"http://127.0.0.1:{srv.server_address[1]}/TNBC_NucleiSegmentation.zip"
    return Source(url=url, size=len(srv.payload), md5=hashlib.md5(srv.payload).hexdigest(),
                  sha256=hashlib.sha256(srv.payload).hexdigest())


def test_download_verifies_and_is_a_readable_release(server: _Server, tmp_path: Path) -> None:
    path = fetch(tmp_path / "raw", _source(server), progress=False)
    assert path.read_bytes() == server.payload and len(Release(path).cases) == 50
    assert fetch(tmp_path / "raw", _source(server), progress=False) == path  # present: verified, not refetched
    assert not list((tmp_path / "raw").glob("*.part"))


def test_a_dropped_download_resumes_with_a_range_request(server: _Server, tmp_path: Path) -> None:
    server.cut_after = len(server.payload) // 3
    with pytest.raises(TnbcError, match="incomplete download .* rerun to resume"):
        fetch(tmp_path, _source(server), progress=False)
    part = tmp_path / "TNBC_NucleiSegmentation.zip.part"
    assert part.stat().st_size == len(server.payload) // 3
    server.cut_after = None
    path = fetch(tmp_path, _source(server), progress=False)
    assert server.ranges_seen == [f"bytes={len(server.payload) // 3}-"]
    assert path.read_bytes() == server.payload


def test_a_server_ignoring_ranges_restarts_cleanly(server: _Server, tmp_path: Path) -> None:
    (tmp_path / "TNBC_NucleiSegmentation.zip.part").write_bytes(server.payload[:1000])
    server.honour_ranges = False
    assert fetch(tmp_path, _source(server), progress=False).read_bytes() == server.payload


def test_a_wrong_digest_is_refused_and_not_kept(server: _Server, tmp_path: Path) -> None:
    bad = dataclasses.replace(_source(server), md5="0" * 32)
    with pytest.raises(TnbcError, match="MD5 .* does not match the published"):
        fetch(tmp_path / "raw", bad, progress=False)
    assert not list((tmp_path / "raw").iterdir())  # a complete but wrong file is not left to 'resume'


def test_offline_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TnbcError, match="cannot connect .* offline\\?"):
        fetch(tmp_path, Source(url=f"http://127.0.0.1:{port}/x.zip"), progress=False, timeout=5)
