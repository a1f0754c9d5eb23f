"""HTTP(S) downloads that survive a flaky network, a killed runtime and a file changed upstream.

Bytes land in ``<file>.part`` inside one folder per URL (:func:`url_folder`); transient failures are retried with
backoff from the ``.part``; the server's validator is kept in the folder's ``download.json`` across processes, so a
resume sends ``If-Range`` and a finished file is checked with ``If-None-Match``; length and sha256 are checked, and
only a complete, verified file gets its final name. The errors here say what to do in one line; Google Drive
(:mod:`colab_kit.sources.gdrive`) shares them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from colab_kit.errors import ColabKitError
from colab_kit.util.files import atomic_write_json, sha256_file

log = logging.getLogger(__name__)

CHUNK = 1 << 20
TIMEOUT_S = (15.0, 60.0)  # (connect, between bytes): a stalled server becomes a retry, not a hang
MANUAL_FIX = "download the file in a browser, put it on this machine (or in your Drive) and pass its path with --data"
QUOTA_PHRASES = ("too many users have viewed or downloaded", "quota exceeded", "download quota")
QUOTA_FIX = ("wait up to 24 h and run the same command again, or add the file to your own Drive "
             "(right click > Make a copy), mount Drive and pass the copy's path with --data")


class DownloadError(ColabKitError, RuntimeError):
    """A dataset could not be made local; the message names the URL or file and what to do."""


class Transient(Exception):
    """A failure worth retrying from the ``.part`` file: connection lost, timeout, HTTP 5xx."""


def is_quota(text: str) -> bool:
    return any(phrase in text.lower() for phrase in QUOTA_PHRASES)


def url_folder(download_dir: str | Path, url: str) -> Path:
    """The folder of one URL's download: keyed by the whole URL, so two URLs ending in ``data.json.gz`` never
    share a file."""
    return Path(download_dir).expanduser() / f"url-{hashlib.sha256(url.encode()).hexdigest()[:16]}"


META = "download.json"  # {"url", "name", "validator", "total", "complete", "sha256"}: kept across processes


def download_url(url: str, download_dir: str | Path, *, filename: str | None = None, sha256: str | None = None,
                 progress: bool = True, retries: int = 4, backoff_s: float = 2.0) -> Path:
    """Resumable, retried, verified download of one http(s) URL into its own folder under ``download_dir``.

    The server's validator (ETag, else Last-Modified) is kept in the folder's ``download.json``: a resumed download
    (by this process or a later one) sends ``Range`` with ``If-Range``, so a file replaced upstream is fetched whole
    again, never spliced from two versions; a finished download is checked against the server with
    ``If-None-Match`` / ``If-Modified-Since`` (a file changed upstream is fetched again; offline, the copy is used)
    unless a ``sha256`` pins its content.

    Args:
        url: the file's URL.
        download_dir: where the per-URL folders live (:func:`url_folder`).
        filename: final name; default: the URL path's last part, or the server's Content-Disposition name
            when that part has no suffix (e.g. ``.../ndownloader/files/123``).
        sha256: expected hex digest; a mismatch moves the file to ``<name>.bad`` and raises.
        progress: show a byte progress bar.
        retries: further attempts after a transient failure, each resuming from the ``.part`` file.
        backoff_s: wait before the first retry (s), doubled after each.

    Returns:
        The final path.
    """
    import requests

    folder = url_folder(download_dir, url)
    meta = _read_meta(folder, url)
    job = _Download(url=url, dest_dir=folder, name=filename or meta.get("name") or _name_from_url(url),
                    sha256=sha256.lower() if sha256 else None, progress=progress, meta=meta)
    job.fixed = filename is not None or bool(Path(job.name).suffix) or "name" in meta
    done = job.dest_dir / job.name
    if job.fixed and meta.get("complete") and done.is_file():
        if job.sha256 is not None:  # the content is pinned: no need to ask the server
            if complete_download(done, job.sha256) is not None:
                return done
            job.meta = meta = {}  # a copy that fails its pin was moved aside: download it again
        elif not meta.get("validator"):
            return done  # the server gave nothing to ask whether it changed: the copy stands
        else:
            job.cached = done
    try:
        job.dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create download folder {job.dest_dir} ({exc}); pass a writable one") from exc
    reason = ""
    with requests.Session() as session:
        session.headers.update({"Accept-Encoding": "identity", "User-Agent": "colab_kit"})
        for attempt in range(retries + 1):
            if attempt:
                delay = backoff_s * 2 ** (attempt - 1)
                log.warning("download of %s: %s; retry %d/%d in %.0f s", url, reason, attempt, retries, delay)
                time.sleep(delay)
            try:
                return job.attempt(session)
            except Transient as exc:
                reason = str(exc)
    if job.cached is not None:
        log.warning("cannot ask %s whether %s changed (%s); using the copy downloaded before", url, job.cached.name, reason)
        return job.cached
    have = job.part.stat().st_size if job.part.exists() else 0
    total = f"{job.total:,}" if job.total is not None else "an unknown number of"
    raise DownloadError(f"download of {url} stopped at {have:,} of {total} bytes ({reason}); run the same command "
                        f"again to resume (the bytes so far are kept in {job.part})")


def _read_meta(folder: Path, url: str) -> dict[str, Any]:
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) and meta.get("url") == url else {}


@dataclass
class _Download:
    """State of one URL download across its attempts (and, through ``download.json``, across processes)."""

    url: str
    dest_dir: Path
    name: str
    sha256: str | None
    progress: bool
    meta: dict[str, Any] = field(default_factory=dict)
    fixed: bool = True
    total: int | None = None
    responded: bool = False
    cached: Path | None = None  # a finished copy whose freshness the server is asked about

    @property
    def part(self) -> Path:
        return self.dest_dir / f"{_name_from_url(self.url) if not self.fixed else self.name}.part"

    def _save_meta(self, **changes: Any) -> None:
        self.meta = {**self.meta, "url": self.url, **changes}
        atomic_write_json(self.dest_dir / META, self.meta)

    def attempt(self, session: Any) -> Path:
        """One request: append to (or restart) the ``.part`` file; raise :class:`Transient` to be retried."""
        import http.client

        import requests
        import urllib3
        from tqdm.auto import tqdm

        validator = self.meta.get("validator")
        offset = self.part.stat().st_size if self.part.exists() else 0
        if offset and not validator:  # bytes of a version nobody can name: they cannot be resumed safely
            self.part.unlink()
            offset = 0
        headers: dict[str, str] = {}
        if offset:
            # a file changed upstream is sent whole (200) instead of the rest: never spliced onto old bytes
            headers.update({"Range": f"bytes={offset}-", "If-Range": validator})
        elif self.cached is not None:
            headers["If-None-Match" if validator.startswith('"') else "If-Modified-Since"] = validator
        try:
            response = session.get(self.url, headers=headers, stream=True, timeout=TIMEOUT_S)
        except requests.exceptions.SSLError as exc:
            raise DownloadError(f"{self.url}: the server's TLS certificate is not trusted ({root_message(exc)}); if you "
                                f"trust this server, {MANUAL_FIX}") from None
        except requests.RequestException as exc:
            if not self.responded and is_unreachable(exc):
                if self.cached is not None:
                    log.warning("no network: cannot ask %s whether %s changed; using the copy downloaded before",
                                self.url, self.cached.name)
                    return self.cached
                raise DownloadError(f"no network: cannot connect to {self.url} ({root_message(exc)}); {MANUAL_FIX}") from exc
            raise Transient(root_message(exc)) from exc
        self.responded = True
        with response:
            if response.status_code == 304 and self.cached is not None:
                return self.cached  # unchanged upstream
            final = self.dest_dir / (self.name if self.fixed else _name_from_disposition(response) or self.name)
            if response.status_code == 416:  # .part already holds everything (killed before the rename)
                total = re.fullmatch(r"bytes \*/(\d+)", response.headers.get("Content-Range", ""))
                if total and int(total.group(1)) == offset:
                    return self._finish(final)
                self.part.unlink()
                raise Transient("server refused the byte range of the partial file; starting again")
            if response.status_code >= 400:
                raise status_error(response.status_code, self.url)
            reject_web_page(response, final, self.url)
            if response.status_code == 206:
                cr = re.fullmatch(r"bytes (\d+)-\d+/(\d+)", response.headers.get("Content-Range", ""))
                if not cr or int(cr.group(1)) != offset:
                    self.part.unlink()
                    raise Transient(f"server answered the range request with {cr and cr.group(0)!r}; starting again")
                self.total = int(cr.group(2))
            else:  # 200: the whole file, from zero (a new one, or the old one changed); raw bytes are stored
                if offset:
                    log.info("%s changed upstream since the partial download: fetching it whole", self.url)
                offset, length = 0, response.headers.get("Content-Length", "")
                self.total = int(length) if length.isdigit() else None
                self._save_meta(name=final.name, validator=_validator(response), total=self.total, complete=False)
            bar = tqdm(total=self.total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                       desc=final.name, disable=not self.progress, dynamic_ncols=True)
            try:
                with open(self.part, "ab" if response.status_code == 206 else "wb") as f:
                    # raw bytes: a server that gzips a .json.gz in transit must not get it unpacked on disk
                    for chunk in response.raw.stream(CHUNK, decode_content=False):
                        f.write(chunk)
                        bar.update(len(chunk))
                    f.flush()
                    os.fsync(f.fileno())
            except (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException,
                    ConnectionError, TimeoutError) as exc:
                raise Transient(root_message(exc)) from exc
            except OSError as exc:
                raise DownloadError(f"cannot write {self.part} ({exc}); free disk space or pass another download "
                                    "folder, then run the same command again to resume") from exc
            finally:
                bar.close()
        have = self.part.stat().st_size
        if self.total is not None and have != self.total:
            if have > self.total:
                self.part.unlink()
            raise Transient(f"connection closed at {have:,} of {self.total:,} bytes")
        return self._finish(final)

    def _finish(self, final: Path) -> Path:
        actual = sha256_file(self.part)
        if self.sha256 and actual != self.sha256:
            raise bad_checksum(self.part, final, self.sha256, actual, self.url)
        os.replace(self.part, final)
        self._save_meta(name=final.name, complete=True, sha256=actual)
        return final


def _validator(response: Any) -> str | None:
    """What names this version of the file for If-Range / If-None-Match: a strong ETag, else Last-Modified."""
    etag = response.headers.get("ETag", "")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified") or None


def complete_download(path: Path, sha256: str | None, size: int | None = None) -> Path | None:
    """``path`` when it is a finished download (right size and checksum where known); a wrong one moves aside."""
    if not path.is_file() or (size is not None and path.stat().st_size != size):
        return None
    if sha256 is None or sha256_file(path) == sha256.lower():
        return path
    os.replace(path, path.with_name(path.name + ".bad"))
    log.warning("%s does not match sha256 %s; moved to %s.bad and downloading again", path, sha256, path.name)
    return None


def bad_checksum(src: Path, final: Path, expected: str, actual: str, what: str) -> DownloadError:
    bad = final.with_name(final.name + ".bad")
    os.replace(src, bad)
    return DownloadError(f"checksum mismatch for {what}: expected sha256 {expected}, got {actual}; the file was moved "
                         f"to {bad}; delete it and run again, or check the URL (the file may have changed upstream)")


def status_error(status: int, what: str) -> Exception:
    if status in (401, 403):
        return DownloadError(f"permission denied (HTTP {status}) for {what}; check that the link is public "
                             f"(sharing set to 'Anyone with the link'), or {MANUAL_FIX}")
    if status in (404, 410):
        return DownloadError(f"not found (HTTP {status}): {what}; check the URL (copy the download link again)")
    if status == 429:
        return DownloadError(f"quota exceeded (HTTP 429) for {what}: too many downloads; {QUOTA_FIX}")
    if status >= 500:
        return Transient(f"server error HTTP {status}")
    return DownloadError(f"HTTP {status} for {what}; check the URL, or {MANUAL_FIX}")


def reject_web_page(response: Any, final: Path, url: str) -> None:
    """A quota notice or a login page saved as ``data.json.gz`` would only fail later, far from its cause."""
    is_html = response.headers.get("Content-Type", "").lower().startswith("text/html")
    if not is_html or final.suffix in (".html", ".htm"):
        return
    page = response.raw.read(65536, decode_content=True).decode("utf-8", "replace")
    if is_quota(page):
        raise DownloadError(f"quota exceeded for {url} (the server sent a quota page); {QUOTA_FIX}")
    raise DownloadError(f"{url} returned a web page, not the file; use a direct download link (for Drive, the "
                        f"share link or file id), or {MANUAL_FIX}")


def is_unreachable(exc: BaseException) -> bool:
    """Connection refused or DNS failure (urllib3 ``NewConnectionError``), anywhere in the cause chain."""
    from urllib3.exceptions import NewConnectionError

    seen: BaseException | None = exc
    for _ in range(10):  # bounded: cause chains can loop
        if seen is None or isinstance(seen, NewConnectionError) or isinstance(getattr(seen, "reason", None),
                                                                                NewConnectionError):
            return seen is not None
        seen = seen.__cause__ or seen.__context__ or next((a for a in seen.args if isinstance(a, BaseException)), None)
    return False


def root_message(exc: BaseException) -> str:
    """The innermost message, without urllib3's pool and object reprs."""
    text = str(getattr(exc.args[0], "reason", exc) if exc.args else exc)
    return re.sub(r"<[^>]*>: ", "", text)[:200] or type(exc).__name__


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", Path(name.replace("\\", "/")).name).lstrip(".")


def _name_from_url(url: str) -> str:
    name = _safe_name(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    return name or "download-" + hashlib.sha1(url.encode()).hexdigest()[:10]


def _name_from_disposition(response: Any) -> str | None:
    header = response.headers.get("Content-Disposition", "")  # filename*=UTF-8''x, filename="x" or filename=x
    match = re.search(r"filename\*?\s*=\s*(?:[\w-]*'[^']*')?\"?([^\";]+)", header)
    return (_safe_name(urllib.parse.unquote(match.group(1).strip())) or None) if match else None
