"""Google Drive: file ids from share links, and downloads through ``gdown`` (which knows Drive's confirmation pages).

:mod:`colab_kit.sources.datasets` resolves Drive links with it; the retry, checksum and error helpers are
:mod:`colab_kit.sources.download`'s.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path

from colab_kit.sources.download import (
    MANUAL_FIX,
    QUOTA_FIX,
    TIMEOUT_S,
    DownloadError,
    Transient,
    bad_checksum,
    complete_download,
    is_quota,
    is_unreachable,
    status_error,
)
from colab_kit.util.files import sha256_file

_DRIVE_HOSTS = frozenset({"drive.google.com", "docs.google.com", "drive.usercontent.google.com"})
_DRIVE_ID = re.compile(r"[A-Za-z0-9_-]{25,45}")


def parse_drive_id(text: str) -> str | None:
    """The Google Drive file id in a share link or a bare id, else ``None``.

    Accepts ``drive.google.com/file/d/<ID>/view``, ``.../open?id=<ID>``, ``.../uc?id=<ID>``,
    ``docs.google.com/uc?id=<ID>``, ``drive.usercontent.google.com/download?id=<ID>`` and a bare id
    (25-45 of ``[A-Za-z0-9_-]`` with both upper and lower case letters, as Drive's random ids have;
    that keeps names like ``my_structures_dataset_v2`` from being read as ids).
    """
    text = text.strip()
    if "://" not in text:
        ok = _DRIVE_ID.fullmatch(text) and re.search("[A-Z]", text) and re.search("[a-z]", text)
        return text if ok else None
    parts = urllib.parse.urlsplit(text)
    if (parts.hostname or "").lower() not in _DRIVE_HOSTS:
        return None
    ids = urllib.parse.parse_qs(parts.query).get("id", [])
    match = re.fullmatch(r"/file/(?:u/\d+/)?d/([^/]+)(?:/.*)?", parts.path)
    candidate = ids[0] if len(ids) == 1 else (match.group(1) if match else None)
    return candidate if candidate and _DRIVE_ID.fullmatch(candidate) else None


def download_drive(file_id: str, download_dir: str | Path, *, sha256: str | None = None, progress: bool = True,
                   retries: int = 4) -> Path:
    """Download a Google Drive file with ``gdown`` into ``download_dir/gdrive_<id>/<Drive's file name>``.

    The per-id folder lets a rerun find the finished file without asking Drive (whose name is only
    known from its response); ``gdown``'s ``resume=True`` continues its own ``.part`` file.
    """
    import gdown
    import requests
    from gdown.exceptions import FileURLRetrievalError

    folder = Path(download_dir).expanduser() / f"gdrive_{file_id}"
    done = sorted(p for p in folder.glob("*") if p.is_file() and p.suffix not in (".part", ".bad"))
    if done and (path := complete_download(done[0], sha256)):
        return path
    what = f"Google Drive file {file_id}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # use_cookies=False: gdown would otherwise write ~/.cache/gdown/cookies.txt, outside download_dir.
        out = gdown.download(id=file_id, output=f"{folder}{os.sep}", quiet=not progress, resume=True,
                             retries=retries, timeout=TIMEOUT_S, use_cookies=False)
    except FileURLRetrievalError as exc:
        if is_quota(str(exc)):
            raise DownloadError(f"{what}: Google Drive download quota exceeded; {QUOTA_FIX}") from exc
        raise DownloadError(f"{what}: permission denied or not found; check the link's sharing is 'Anyone with "
                            f"the link' and the id is right; if it is, the file may have been downloaded too often: "
                            f"{QUOTA_FIX} (gdown said: {' '.join(str(exc).split())})") from exc
    except requests.HTTPError as exc:
        error = status_error(exc.response.status_code, what)
        if isinstance(error, Transient):
            error = DownloadError(f"download of {what} stopped ({error}); run the same command again to resume")
        raise error from exc
    except (gdown.exceptions.DownloadError, requests.RequestException) as exc:
        if is_unreachable(exc):
            raise DownloadError(f"{what}: no network (cannot reach Google Drive); {MANUAL_FIX}") from exc
        raise DownloadError(f"download of {what} stopped ({exc}); run the same command again to resume") from exc
    except OSError as exc:
        raise DownloadError(f"{what}: cannot write into {folder} ({exc}); free disk space or pass another "
                            "download folder") from exc
    if not out:
        raise DownloadError(f"{what}: gdown returned nothing; check the link's sharing, or {MANUAL_FIX}")
    path = Path(str(out))
    if sha256 and (actual := sha256_file(path)) != sha256.lower():
        raise bad_checksum(path, path, sha256, actual, what)
    return path
