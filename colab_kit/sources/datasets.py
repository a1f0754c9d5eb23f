"""Turn what a user passes as ``--data`` into a local file: shipped data, a known name, a URL or a Drive link.

URLs are fetched by :mod:`colab_kit.sources.download` (resumable, checked, one folder per URL), Google Drive links by
:mod:`colab_kit.sources.gdrive` (``gdown``, which knows Drive's confirmation pages); the known datasets carry their sha256.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from colab_kit.sources.download import DownloadError, download_url, url_folder  # noqa: F401 - resolve's API too
from colab_kit.sources.gdrive import download_drive, parse_drive_id

log = logging.getLogger(__name__)

DEFAULT_DATASET = "mp_eform_cgcnn_3000"
DEFAULT_FRAMES = "mlearn_frames_221"  # the default data of ``--task potential``
_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # colab_kit/, whose data/ holds the shipped file


@dataclass(frozen=True)
class KnownDataset:
    """A dataset that ``--data NAME`` names.

    Attributes:
        name: what the user types.
        url: where to download it; ``None`` for shipped data.
        sha256: hex digest of the file; ``None`` where not known for certain (then only the length is checked).
        filename: the file's name in the download folder.
        description: one line for listings, with the label's unit.
        target: the label column in the file.
        licence: the data licence.
        local: path of shipped data inside the package, e.g. ``data/x.json.gz``.
    """

    name: str
    url: str | None
    sha256: str | None
    filename: str
    description: str
    target: str
    licence: str
    local: str | None = None


_MATBENCH = "https://ml.materialsproject.org/projects/{}.json.gz"
REGISTRY: dict[str, KnownDataset] = {d.name: d for d in (
    KnownDataset(DEFAULT_DATASET, None, "085021aa90649155528cfc8853c385573c2bafa8ef4e73e12db3bc1f8c8c0570",
                 "mp_eform_cgcnn_3000_matbench.json.gz",
                 "3,000 Materials Project formation energies (CGCNN set via CrysXPP)", "e_form",
                 "MIT (CrysXPP) / CC BY 4.0 (Materials Project data)", "data/mp_eform_cgcnn_3000_matbench.json.gz"),
    KnownDataset(DEFAULT_FRAMES, None, "fdf97dd81c19d9888b3f838738acc366fda68e92dc1c6bbdac3d8e98ab2b5eb3",
                 "mlearn_frames_221.extxyz.gz",
                 "221 DFT frames of Li, Mo, Si, Ge, Cu, Ni (mlearn): energies eV, forces eV/A, stresses",
                 "energy", "BSD-3 (mlearn) / NIST terms (ALIGNN's copy of Cu, Ni)", "data/mlearn_frames_221.extxyz.gz"),
    # sha256: matbench's own record of its files (the "hash" of each task in the matbench repository's published
    # dataset metadata); matbench_phonons' also checked here against the copy in shared/data
    KnownDataset("matbench_mp_e_form", _MATBENCH.format("matbench_mp_e_form"),
                 "dedcb1d4ba2e3e50dbdd45ba5bc647a00e9c2bcf8f8bf556dc8e92caa39eb21f", "matbench_mp_e_form.json.gz",
                 "132,752 Materials Project structures, formation energy per atom in eV/atom (Matbench v0.1)",
                 "e_form", "CC BY 4.0 (Matbench / Materials Project)"),
    KnownDataset("matbench_phonons", _MATBENCH.format("matbench_phonons"),
                 "4db551f21ec5f577e6202725f10e34dfc509aa7df3a6bdaac497da7f6dbbb9b3", "matbench_phonons.json.gz",
                 "1,265 structures, frequency of the last phonon DOS peak in cm^-1 (Matbench v0.1)",
                 "last phdos peak", "CC BY 4.0 (Matbench / Materials Project)"),
)}  # the e_form target is eV/atom


def resolve(spec: str | None, download_dir: str | Path, *, progress: bool = True, sha256: str | None = None) -> Path:
    """Make ``--data`` local: a known name, an existing path, an http(s) URL, a Drive link or a Drive file id.

    Args:
        spec: what the user passed; ``None`` means :data:`DEFAULT_DATASET` (shipped, no download).
        download_dir: folder for downloads (created when needed).
        progress: show a byte progress bar with rate and ETA.
        sha256: expected hex digest of the downloaded file (overrides the registry's).

    Returns:
        A path that ``colab_kit.sources.open_source`` can read (file or folder).

    Raises:
        DownloadError: unknown name, missing path or failed download; the message says what to do.
    """
    text = DEFAULT_DATASET if spec is None else os.fspath(spec).strip()
    if not text:
        raise DownloadError(f"--data is empty; pass a dataset name ({', '.join(REGISTRY)}), a path or a URL")
    known = REGISTRY.get(text)
    if known is not None:
        if known.local is not None:
            path = _PACKAGE_DIR / known.local
            if not path.is_file():
                raise DownloadError(f"shipped dataset {known.name!r} is missing at {path}; reinstall colab_kit")
            return path
        assert known.url is not None
        return download_url(known.url, download_dir, filename=known.filename, sha256=sha256 or known.sha256,
                            progress=progress)
    is_url, path = text.lower().startswith(("http://", "https://")), Path(text).expanduser()
    if not is_url and path.exists():
        return path
    if (drive_id := parse_drive_id(text)) is not None:  # a bare id only once it is not an existing path
        return download_drive(drive_id, download_dir, sha256=sha256, progress=progress)
    if is_url:
        return download_url(text, download_dir, sha256=sha256, progress=progress)
    if any(c in text for c in "/\\~") or text.startswith(".") or Path(text).suffix:
        raise DownloadError(f"--data {text!r}: no such file or folder ({path.absolute()}); check the path "
                            "(on Colab, mount Drive first and use /content/drive/MyDrive/...)")
    import difflib

    close = difflib.get_close_matches(text, REGISTRY, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise DownloadError(f"--data {text!r} is not a known dataset, an existing path, a URL or a Google Drive "
                        f"link; {hint}known datasets: {', '.join(sorted(REGISTRY))}")


