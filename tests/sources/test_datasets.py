"""colab_kit.sources.datasets over real sockets: a local HTTP server (Range, 403/404/429, dropped connections) and,
for Google Drive, real gdown reaching a local Drive look-alike through an HTTPS proxy that the test runs."""

from __future__ import annotations

import datetime
import hashlib
import random
import re
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from colab_kit.sources.datasets import (
    DEFAULT_DATASET,
    DEFAULT_FRAMES,
    REGISTRY,
    DownloadError,
    KnownDataset,
    download_url,
    parse_drive_id,
    resolve,
    url_folder,
)

PAYLOAD = random.Random(0).randbytes(300_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()
DRIVE_OK, DRIVE_QUOTA, DRIVE_PRIVATE = "1AbCdEfGhIjKlMnOpQrStUvWxYz012345", "1QuotaQuotaQuotaQuotaQuotaQ", "1PrivatePrivatePrivatePrivat"
DRIVE_HOSTS = ("drive.google.com", "docs.google.com", "drive.usercontent.google.com")
QUOTA_PAGE = ('<html><body><p class="uc-error-subcaption">Too many users have viewed or downloaded this file '
              "recently. Please try accessing the file again later.</p></body></html>")


@dataclass
class State:
    """What the server serves (path -> bytes, path -> behaviour) and what it saw."""

    files: dict[str, bytes] = field(default_factory=dict)
    modes: dict[str, str] = field(default_factory=dict)  # cut_once | cut_always | no_range
    seen: list[tuple[str, str, str | None]] = field(default_factory=list)  # (host, path, Range)
    sent: int = 0  # body bytes written for files
    cut_done: set[str] = field(default_factory=set)
    tls: ssl.SSLContext | None = None  # set by the `drive` fixture: CONNECT tunnels then speak TLS
    headers: list[dict[str, str]] = field(default_factory=list)  # every request's headers


class Server(ThreadingHTTPServer):
    daemon_threads = True
    state: State

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that hang up early (as the downloader does on purpose) are not test failures


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_CONNECT(self) -> None:
        # HTTPS proxy: accept the tunnel, then speak TLS as the requested Google host with the test CA's cert.
        self.send_response(200, "Connection established")
        self.end_headers()
        self.wfile.flush()
        self.connection = self.request = self.server.state.tls.wrap_socket(self.connection, server_side=True)
        self.rfile, self.wfile = self.connection.makefile("rb"), self.connection.makefile("wb")
        self.close_connection = False

    def finish(self) -> None:
        super().finish()
        self.connection.close()

    def do_GET(self) -> None:
        state: State = self.server.state
        host = (self.headers.get("Host") or "").split(":")[0]
        url = urllib.parse.urlsplit(self.path)
        state.seen.append((host, url.path, self.headers.get("Range")))
        state.headers.append(dict(self.headers))
        query = urllib.parse.parse_qs(url.query)
        if url.path.startswith("/status/"):
            self._reply(int(url.path.split("/")[2]), b"no", "text/plain")
        elif url.path == "/quota.json.gz":
            self._reply(200, QUOTA_PAGE.encode(), "text/html; charset=utf-8")
        elif host == "drive.google.com" and url.path == "/uc":
            self._drive_page(query["id"][0])
        elif host == "drive.usercontent.google.com" and query.get("confirm") == ["t"]:
            self._file("/drive", {"Content-Disposition": 'attachment; filename="drive_data.json.gz"'})
        else:
            self._file(url.path, {"Content-Disposition": 'attachment; filename="named.json.gz"'}
                       if url.path.startswith("/cd/") else {})

    def _reply(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in {"Content-Type": ctype, "Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _drive_page(self, file_id: str) -> None:
        if file_id == DRIVE_OK:  # Drive's "can't scan for viruses" page: gdown must submit its form
            inputs = "".join(f'<input type="hidden" name="{k}" value="{v}">'
                             for k, v in (("id", file_id), ("export", "download"), ("confirm", "t"), ("uuid", "u1")))
            page = (f'<html><body><form id="download-form" action="https://drive.usercontent.google.com/download" '
                    f'method="get"><input type="submit" value="Download anyway">{inputs}</form></body></html>')
        else:
            page = QUOTA_PAGE if file_id == DRIVE_QUOTA else "<html><body>Sign in to continue</body></html>"
        self._reply(200, page.encode(), "text/html; charset=utf-8")

    def _file(self, path: str, headers: dict[str, str]) -> None:
        state: State = self.server.state
        body, mode = state.files.get(path), state.modes.get(path)
        if body is None:
            return self._reply(404, b"missing", "text/plain")
        etag = f'"{hashlib.sha256(body).hexdigest()[:16]}"'  # names this version of the file, as real servers do
        if self.headers.get("If-None-Match") == etag:
            return self._reply(304, b"", "text/plain", {"ETag": etag})
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if_range = self.headers.get("If-Range")
        start = int(match.group(1)) if match and mode != "no_range" and if_range in (None, etag) else 0
        if start >= len(body) > 0:
            return self._reply(416, b"", "text/plain", {"Content-Range": f"bytes */{len(body)}"})
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        for key, value in {"Content-Type": "application/octet-stream", "Content-Length": str(len(body) - start),
                           "ETag": etag, **headers}.items():
            self.send_header(key, value)
        self.end_headers()
        cut = int(0.4 * len(body))
        if mode == "cut_always" or (mode == "cut_once" and path not in state.cut_done):
            state.cut_done.add(path)
            chunk = body[start:max(start, cut)]
            self.wfile.write(chunk)
            state.sent += len(chunk)
            self.connection.shutdown(socket.SHUT_RDWR)  # the server goes away mid-file
            self.close_connection = True
            return None
        self.wfile.write(body[start:])
        state.sent += len(body) - start
        return None


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ssl.SSLContext]:
    """A throwaway CA and a certificate for Drive's host names, so real gdown verifies TLS against our proxy."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now, folder = datetime.datetime.now(datetime.timezone.utc), tmp_path_factory.mktemp("tls")
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "colab_kit test CA")])

    def build(subject: x509.Name, public_key: object) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(public_key)
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))

    usage = dict(content_commitment=False, key_encipherment=False, data_encipherment=False, key_agreement=False,
                 encipher_only=False, decipher_only=False)
    ca = (build(ca_name, ca_key.public_key()).add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, **usage), True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DRIVE_HOSTS[0])]), key.public_key())
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in DRIVE_HOSTS]), False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "leaf.pem").write_bytes(leaf.public_bytes(pem) + key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "leaf.pem")
    return folder / "ca.pem", context


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, State]]:
    """A real HTTP server on a free 127.0.0.1 port; yields its base URL and its state."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.state = State(files={"/data.json.gz": PAYLOAD, "/cd/123": PAYLOAD, "/drive": PAYLOAD})
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.state
    httpd.shutdown()
    httpd.server_close()


def _killed_download(base: str, state: State, folder: Path) -> int:
    """A download cut at 40 % with no retry, as a killed process leaves it: the ``.part`` and the folder's
    ``download.json`` (the server's validator); returns the bytes kept."""
    state.modes["/data.json.gz"] = "cut_always"
    with pytest.raises(DownloadError, match="run the same command again"):
        download_url(f"{base}/data.json.gz", folder, progress=False, retries=0)
    del state.modes["/data.json.gz"]
    return int(0.4 * len(PAYLOAD))


def test_download_verifies_checksum_and_names_file(server: tuple[str, State], tmp_path: Path) -> None:
    base, state = server
    url = f"{base}/data.json.gz"
    path = resolve(url, tmp_path, progress=True, sha256=SHA)
    assert path == url_folder(tmp_path, url) / "data.json.gz" and path.read_bytes() == PAYLOAD
    assert not path.with_name("data.json.gz.part").exists()
    named = resolve(f"{base}/cd/123", tmp_path / "cd", progress=False)  # no suffix: Content-Disposition names it
    assert named.name == "named.json.gz" and named.read_bytes() == PAYLOAD


def test_two_urls_ending_in_one_name_keep_two_files(server: tuple[str, State], tmp_path: Path) -> None:
    base, state = server
    other = bytes(reversed(PAYLOAD))
    state.files["/other/data.json.gz"] = other
    a = resolve(f"{base}/data.json.gz", tmp_path, progress=False)
    b = resolve(f"{base}/other/data.json.gz", tmp_path, progress=False)
    assert a != b and a.read_bytes() == PAYLOAD and b.read_bytes() == other


def test_complete_file_is_asked_about_not_downloaded_again(server: tuple[str, State], tmp_path: Path) -> None:
    base, state = server
    for _ in range(2):  # a pinned sha256: the copy is checked, the server not asked
        assert resolve(f"{base}/data.json.gz", tmp_path, progress=False, sha256=SHA).read_bytes() == PAYLOAD
    assert len(state.seen) == 1
    first = resolve(f"{base}/cd/123", tmp_path, progress=False).stat().st_mtime_ns
    again = resolve(f"{base}/cd/123", tmp_path, progress=False)  # not pinned: If-None-Match, 304, no body
    assert len(state.seen) == 3 and again.stat().st_mtime_ns == first and again.name == "named.json.gz"
    assert state.headers[-1]["If-None-Match"] == f'"{SHA[:16]}"'
    assert state.sent == 2 * len(PAYLOAD)
    assert not list(tmp_path.rglob("*.part"))


def test_a_file_changed_upstream_is_fetched_again(server: tuple[str, State], tmp_path: Path) -> None:
    base, state = server
    url = f"{base}/data.json.gz"
    assert resolve(url, tmp_path, progress=False).read_bytes() == PAYLOAD
    state.files["/data.json.gz"] = new = PAYLOAD[::-1]  # the publisher replaced it
    assert resolve(url, tmp_path, progress=False).read_bytes() == new


def test_resume_sends_range_with_if_range_and_fetches_only_the_rest(server: tuple[str, State], tmp_path: Path) -> None:
    base, state = server
    cut = _killed_download(base, state, tmp_path)
    state.seen.clear()
    state.sent = 0
    assert resolve(f"{base}/data.json.gz", tmp_path, progress=False, sha256=SHA).read_bytes() == PAYLOAD
    assert state.seen == [("127.0.0.1", "/data.json.gz", f"bytes={cut}-")]
    assert state.headers[-1]["If-Range"] == f'"{SHA[:16]}"'  # the validator the killed process kept
    assert state.sent == len(PAYLOAD) - cut


def test_a_file_replaced_mid_download_is_fetched_whole_never_spliced(server: tuple[str, State], tmp_path: Path) -> None:
    """The killed download's validator no longer names the file upstream: the server sends it whole (200), and the
    result is the new file alone, not the old file's first 40 % followed by the new file's rest."""
    base, state = server
    _killed_download(base, state, tmp_path)
    state.files["/data.json.gz"] = new = random.Random(1).randbytes(len(PAYLOAD))
    got = resolve(f"{base}/data.json.gz", tmp_path, progress=False).read_bytes()
    assert got == new and "If-Range" in state.headers[-1]


def test_server_ignoring_range_restarts_from_zero(server: tuple[str, State], tmp_path: Path) -> None:
    base, state = server
    _killed_download(base, state, tmp_path)
    state.modes["/data.json.gz"] = "no_range"
    assert resolve(f"{base}/data.json.gz", tmp_path, progress=False, sha256=SHA).read_bytes() == PAYLOAD


def test_a_partial_file_without_its_validator_is_not_resumed(server: tuple[str, State], tmp_path: Path) -> None:
    base, state = server
    url = f"{base}/data.json.gz"
    folder = url_folder(tmp_path, url)
    folder.mkdir(parents=True)
    (folder / "data.json.gz.part").write_bytes(b"bytes of an unknown version")
    assert resolve(url, tmp_path, progress=False, sha256=SHA).read_bytes() == PAYLOAD
    assert state.seen == [("127.0.0.1", "/data.json.gz", None)]


def test_full_part_file_is_finished_without_a_body(server: tuple[str, State], tmp_path: Path) -> None:
    base, state = server
    url = f"{base}/data.json.gz"
    _killed_download(base, state, tmp_path)
    folder = url_folder(tmp_path, url)
    (folder / "data.json.gz.part").write_bytes(PAYLOAD)  # killed between the last byte and the rename
    state.sent = 0
    assert resolve(url, tmp_path, progress=False, sha256=SHA).read_bytes() == PAYLOAD
    assert state.sent == 0


def test_dropped_connection_is_retried_from_the_part_file(server: tuple[str, State], tmp_path: Path) -> None:
    base, state = server
    state.modes["/data.json.gz"] = "cut_once"
    path = download_url(f"{base}/data.json.gz", tmp_path, sha256=SHA, progress=False, backoff_s=0)
    assert path.read_bytes() == PAYLOAD
    cut = int(0.4 * len(PAYLOAD))
    assert [r for _, _, r in state.seen] == [None, f"bytes={cut}-"] and state.sent == len(PAYLOAD)


def test_server_that_always_drops_gives_a_resumable_error(server: tuple[str, State], tmp_path: Path) -> None:
    base, state = server
    state.modes["/data.json.gz"] = "cut_always"
    url = f"{base}/data.json.gz"
    with pytest.raises(DownloadError, match="run the same command again") as info:
        download_url(url, tmp_path, progress=False, retries=2, backoff_s=0)
    cut = int(0.4 * len(PAYLOAD))
    assert f"stopped at {cut:,} of {len(PAYLOAD):,} bytes" in str(info.value) and len(state.seen) == 3
    folder = url_folder(tmp_path, url)
    assert (folder / "data.json.gz.part").stat().st_size == cut and not (folder / "data.json.gz").exists()


def test_checksum_mismatch_moves_the_file_aside(server: tuple[str, State], tmp_path: Path) -> None:
    base, _ = server
    url = f"{base}/data.json.gz"
    with pytest.raises(DownloadError, match=f"expected sha256 {'0' * 64}, got {SHA}"):
        resolve(url, tmp_path, progress=False, sha256="0" * 64)
    folder = url_folder(tmp_path, url)
    assert not (folder / "data.json.gz").exists() and not (folder / "data.json.gz.part").exists()
    assert (folder / "data.json.gz.bad").read_bytes() == PAYLOAD


def test_a_self_signed_certificate_is_named_not_retried(tls: tuple[Path, ssl.SSLContext], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """An HTTPS server whose certificate nobody trusts: one line that says so, not "run again to resume"."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    _, context = tls
    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.state = State(files={"/data.json.gz": PAYLOAD})
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        with pytest.raises(DownloadError, match="TLS certificate is not trusted") as info:
            download_url(f"https://127.0.0.1:{httpd.server_address[1]}/data.json.gz", tmp_path, progress=False,
                         backoff_s=0)
        assert "run the same command again" not in str(info.value)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_offline_a_finished_download_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.state = State(files={"/data.json.gz": PAYLOAD})
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/data.json.gz"
    first = resolve(url, tmp_path, progress=False)
    httpd.shutdown()
    httpd.server_close()  # the network is gone: the copy is used, with a warning
    assert resolve(url, tmp_path, progress=False) == first and first.read_bytes() == PAYLOAD


@pytest.mark.parametrize(("path", "message"), [
    ("/status/403/x.json.gz", "permission denied.*Anyone with the link"),
    ("/status/404/x.json.gz", "not found.*check the URL"),
    ("/status/429/x.json.gz", "quota exceeded.*24 h"),
    ("/quota.json.gz", "quota exceeded.*24 h"),
    ("/missing.json.gz", "not found.*missing.json.gz"),
])
def test_http_errors_say_what_to_do(server: tuple[str, State], tmp_path: Path, path: str, message: str) -> None:
    base, _ = server
    with pytest.raises(DownloadError, match=message):
        resolve(base + path, tmp_path, progress=False)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # nothing left behind


def test_server_errors_are_retried_then_reported(server: tuple[str, State], tmp_path: Path) -> None:
    base, state = server
    with pytest.raises(DownloadError, match=r"HTTP 503.*run the same command again"):
        download_url(f"{base}/status/503/x.json.gz", tmp_path, progress=False, retries=1, backoff_s=0)
    assert len(state.seen) == 2


def test_connection_refused_means_no_network(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(DownloadError, match=f"no network.*127.0.0.1:{port}.*pass its path"):
        resolve(f"http://127.0.0.1:{port}/x.json.gz", tmp_path, progress=False)


@pytest.fixture
def drive(server: tuple[str, State], tls: tuple[Path, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch) -> State:
    """Route real gdown's https://drive.google.com requests to the local server, as a corporate proxy would."""
    base, state = server
    ca, state.tls = tls
    monkeypatch.setenv("HTTPS_PROXY", base)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca))
    monkeypatch.delenv("NO_PROXY")
    return state


def test_gdown_downloads_through_drive_confirmation_page(drive: State, tmp_path: Path) -> None:
    path = resolve(f"https://drive.google.com/file/d/{DRIVE_OK}/view?usp=sharing", tmp_path, progress=False,
                   sha256=SHA)
    assert path == tmp_path / f"gdrive_{DRIVE_OK}" / "drive_data.json.gz" and path.read_bytes() == PAYLOAD
    assert [host for host, _, _ in drive.seen] == ["drive.google.com", "drive.usercontent.google.com"]
    assert resolve(DRIVE_OK, tmp_path, progress=False) == path and len(drive.seen) == 2  # found offline


def test_gdown_resumes_its_partial_file(drive: State, tmp_path: Path) -> None:
    folder = tmp_path / f"gdrive_{DRIVE_OK}"
    folder.mkdir()
    half = len(PAYLOAD) // 2
    (folder / "drive_data.json.gzabcd1234.part").write_bytes(PAYLOAD[:half])  # gdown's own partial-file name
    assert resolve(DRIVE_OK, tmp_path, progress=False).read_bytes() == PAYLOAD
    # gdown reads the first reply's headers (to learn the name), then asks again for the rest only
    assert drive.seen[-1] == ("drive.usercontent.google.com", "/download", f"bytes={half}-")


@pytest.mark.parametrize(("file_id", "message"), [
    (DRIVE_QUOTA, "quota exceeded.*24 h.*Make a copy"),
    (DRIVE_PRIVATE, "permission denied.*Anyone with the link"),
])
def test_gdown_failures_become_advice(drive: State, tmp_path: Path, file_id: str, message: str) -> None:
    with pytest.raises(DownloadError, match=message):
        resolve(f"https://drive.google.com/open?id={file_id}", tmp_path, progress=False)


ID = "1AbC-dEfGhIjKlMnOpQrStUvWxYz_0123"


@pytest.mark.parametrize(("text", "expected"), [
    (ID, ID),
    (f"https://drive.google.com/file/d/{ID}/view?usp=sharing", ID),
    (f"https://drive.google.com/file/d/{ID}", ID),
    (f"https://drive.google.com/file/u/1/d/{ID}/edit", ID),
    (f"https://drive.google.com/open?id={ID}", ID),
    (f"https://drive.google.com/uc?id={ID}&export=download", ID),
    (f"https://docs.google.com/uc?export=download&id={ID}", ID),
    (f"https://drive.usercontent.google.com/download?id={ID}&confirm=t", ID),
    (f"https://example.com/file/d/{ID}/view", None),
    ("https://ml.materialsproject.org/projects/matbench_mp_e_form.json.gz", None),
    ("https://drive.google.com/drive/folders/", None),
    ("matbench_mp_e_form_subset_version2", None),  # long, but a name: no upper case
    ("short1AbC", None),
    ("data/structures.json.gz", None),
    ("", None),
])
def test_parse_drive_id(text: str, expected: str | None) -> None:
    assert parse_drive_id(text) == expected


def test_shipped_default_matches_registry(tmp_path: Path) -> None:
    for spec in (None, DEFAULT_DATASET):
        path = resolve(spec, tmp_path / "never")
        assert path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == REGISTRY[DEFAULT_DATASET].sha256
    assert not (tmp_path / "never").exists()
    entry = REGISTRY["matbench_mp_e_form"]
    assert entry.url and entry.url.startswith("https://") and entry.target == "e_form"


def test_shipped_frames_are_the_potential_default(tmp_path: Path) -> None:
    """``--task potential`` without ``--data`` trains on the shipped DFT frames: the file is in the package with its
    registry checksum, the planner names it, and every frame has energy, forces and stress in ASE's units."""
    from colab_kit.plan import detect, make_plan
    from colab_kit.sources import open_frames
    from colab_kit.sources.frames import parse_frame

    path = resolve(DEFAULT_FRAMES, tmp_path / "never")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == REGISTRY[DEFAULT_FRAMES].sha256
    plan = make_plan(detect(), "debug", task="potential")
    assert plan.data == DEFAULT_FRAMES and "shipped" in plan.reasons["data"]
    assert make_plan(detect(), "debug").data == DEFAULT_DATASET
    frames = open_frames(str(path), settings=plan.label_settings()).resolve_targets()
    assert frames.spec.targets == "efs"
    parsed = [parse_frame(item, frames.spec) for item in frames]
    assert len(parsed) == 221 and {len(s) for s, _ in parsed} <= set(range(2, 65))
    assert {s.composition.elements[0].symbol for s, _ in parsed} == {"Li", "Mo", "Si", "Ge", "Cu", "Ni"}
    # shuffled: the first frames (--set n_samples=N) hold every element, not one element's block
    assert {s.composition.elements[0].symbol for s, _ in parsed[:24]} == {"Li", "Mo", "Si", "Ge", "Cu", "Ni"}
    structure, labels = parsed[0]
    assert labels.forces.shape == (len(structure), 3) and labels.stress.shape == (3, 3)
    assert not (tmp_path / "never").exists()


def test_known_name_downloads_with_registry_checksum(server: tuple[str, State], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    base, _ = server
    entry = KnownDataset("local_test", f"{base}/data.json.gz", "f" * 64, "local.json.gz", "test", "y", "none")
    monkeypatch.setitem(REGISTRY, "local_test", entry)
    with pytest.raises(DownloadError, match="checksum mismatch"):
        resolve("local_test", tmp_path, progress=False)
    monkeypatch.setitem(REGISTRY, "local_test", KnownDataset(**{**entry.__dict__, "sha256": SHA}))
    assert resolve("local_test", tmp_path, progress=False) == url_folder(tmp_path, entry.url) / "local.json.gz"
    for name in ("matbench_mp_e_form", "matbench_phonons"):  # the known downloads are pinned by their sha256
        assert re.fullmatch(r"[0-9a-f]{64}", REGISTRY[name].sha256 or ""), name


def test_local_paths_and_unknown_names(tmp_path: Path) -> None:
    (tmp_path / "mine.json.gz").write_bytes(b"x")
    assert resolve(str(tmp_path / "mine.json.gz"), tmp_path) == tmp_path / "mine.json.gz"
    assert resolve(str(tmp_path), tmp_path) == tmp_path
    with pytest.raises(DownloadError, match="no such file or folder.*missing.json.gz"):
        resolve(str(tmp_path / "missing.json.gz"), tmp_path)
    with pytest.raises(DownloadError, match="not a known dataset.*matbench_mp_e_form.*mp_eform_cgcnn_3000"):
        resolve("no_such_dataset", tmp_path)
    with pytest.raises(DownloadError, match="did you mean 'matbench_phonons'"):  # a typo gets the name it missed
        resolve("matbench_phonon", tmp_path)


def test_run_pins_the_downloaded_file_with_data_sha256(server: tuple[str, State], tmp_path: Path) -> None:
    """`run --data URL --set data_sha256=...`: a file that is not the one pinned is refused in one line."""
    from helpers import FIXTURES, run_cli

    base, state = server
    state.files["/mp.json.gz"] = (FIXTURES / "mp_eform_cgcnn_3000_sample.json.gz").read_bytes()
    res = run_cli("run", "--mode", "debug", "--graph-kind", "radius", "--data", f"{base}/mp.json.gz",
                  "--set", f"data_sha256={'ab' * 32}", "--work-dir", str(tmp_path), env={"NO_PROXY": "127.0.0.1"})
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert f"checksum mismatch for {base}/mp.json.gz: expected sha256 {'ab' * 32}" in res.stderr
    from colab_kit.plan.machine import detect
    from colab_kit.plan.planner import PlanError, make_plan

    with pytest.raises(PlanError, match="data_sha256 must be the downloaded file's sha256, 64 hex digits"):
        make_plan(detect(), "debug", data_sha256="abc")
