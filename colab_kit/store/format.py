"""The sharded on-disk graph store: atomic, pickle-free, mmap'd.

Layout of a store directory::

    manifest.json                 the commit record: fingerprint, parameters, source, completed shards
    shard-000000.safetensors      ~1000 graphs: concatenated compact arrays + per-graph pointers,
    shard-000001.safetensors      ids / failures / fingerprint in the safetensors metadata
    ...

A shard is written to a temporary name in the same directory, fsynced and renamed; only then is it
added to the manifest (itself replaced atomically). A shard file that the manifest does not list is
ignored and rebuilt, so a kill at any instant loses at most the shards in flight.

Shards are safetensors files (a JSON header + raw little-endian arrays), readable by any
safetensors tool and loaded here without executing code: the reader maps each file once per process
and slices it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np

from colab_kit.errors import ColabKitError
from colab_kit.graphs import Converter
from colab_kit.store.manifest import FORMAT_VERSION, Manifest, ManifestError, ShardEntry
from colab_kit.store.manifest import NAME as MANIFEST
from colab_kit.util.files import (  # noqa: F401 - the store's API too
    atomic_write_bytes,
    atomic_write_json,
    has_sha256,
    sha256_file,
)

SHARD_SUFFIX = ".safetensors"

# per-graph ragged arrays: (name, pointer it is sliced by)
RAGGED = {
    "z": "atom_ptr", "frac": "atom_ptr", "pos": "atom_ptr", "nbr_count": "atom_ptr",
    "nbr": "edge_ptr", "image": "edge_ptr", "d2u": "edge_ptr",
    "angles": "angle_ptr",
    # a potential's per-atom labels (colab_kit.sources.frames): eV/Å, μB
    "forces": "atom_ptr", "magmom": "atom_ptr",
}
#: per-graph arrays, stacked: the cell, and a potential's stress (GPa, tensile positive)
PER_GRAPH = ("lattice", "stress")
_ST_DTYPES = {
    "U8": np.uint8, "I8": np.int8, "U16": np.uint16, "I16": np.int16, "U32": np.uint32, "I32": np.int32,
    "I64": np.int64, "U64": np.uint64, "F16": np.float16, "F32": np.float32, "F64": np.float64, "BOOL": np.bool_,
}


#: what fixes a damaged or missing shard: the command that built it rebuilds exactly the shards that fail their check
REBUILD = "run the same `run` or `convert` command again: it rebuilds the shards that fail their check"


class StoreError(ColabKitError, RuntimeError):
    """A store that cannot be used as it is; the message names the file and the fix."""


def fingerprint(converter: str, params: dict[str, Any], source: dict[str, Any], limit: int | None) -> str:
    """Names a store: converter + every parameter + format version + source identity + item limit."""
    # on_isolated_atoms="error" is how every store was built before the setting existed: leaving it out of the
    # key keeps those stores valid
    params = {k: v for k, v in params.items() if (k, v) != ("on_isolated_atoms", "error")}
    # "converter" is the graph kind's old name; renaming the key would change every store's fingerprint
    key = {"converter": converter, "params": params, "format_version": FORMAT_VERSION, "source": source, "limit": limit}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def shard_name(index: int) -> str:
    return f"shard-{index:06d}{SHARD_SUFFIX}"


# ---------------------------------------------------------------- writing

INDEX_ARRAYS = ("nbr", "nbr_count", "d2u", "angles")  # non-negative integers: stored as uint16 when they fit


def narrow(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` with each integer array in the smallest dtype that holds it: the index arrays
    (:data:`INDEX_ARRAYS`) uint16 or int32, periodic images int8, int16 or int32. One graph's arrays right after
    conversion (a worker's shard in memory stays small) and a shard's concatenation are narrowed alike."""
    out = dict(arrays)
    for k in INDEX_ARRAYS:
        if k in out:
            hi = int(out[k].max()) if out[k].size else 0
            out[k] = out[k].astype(np.uint16 if hi < 65536 else np.int32)
    if "image" in out:  # a structure-only store has no edges
        lim = int(np.abs(out["image"]).max()) if out["image"].size else 0
        out["image"] = out["image"].astype(np.int8 if lim < 128 else np.int16 if lim < 32768 else np.int32)
    return out


_NP_TO_ST = {np.dtype(v).newbyteorder("<").str: k for k, v in _ST_DTYPES.items()}


def safetensors_bytes(arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """Serialise to the safetensors format, byte-for-byte deterministic.

    (The safetensors library writes its metadata map in a per-process random order, so two builds
    of the same shard would differ in bytes and checksums.) Tensors are laid out widest dtype first
    so every one is aligned for zero-copy mmap views; the header is padded to 8 bytes.
    """
    names = sorted(arrays, key=lambda k: (-arrays[k].dtype.itemsize, k))
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    blobs = []
    for k in names:
        a = np.ascontiguousarray(arrays[k]).astype(arrays[k].dtype.newbyteorder("<"), copy=False)
        b = a.tobytes()
        header[k] = {"dtype": _NP_TO_ST[a.dtype.str], "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return len(head).to_bytes(8, "little") + head + b"".join(blobs)


def pack_shard(graphs: list[dict[str, np.ndarray]], ids: list[str], targets: list[float],
               failures: list[tuple[str, str]], fp: str, warned: list[tuple[str, str]] = ()) -> bytes:
    """Concatenate per-graph arrays into one safetensors blob with pointers and metadata."""
    names = [k for k in RAGGED if graphs and k in graphs[0]] if graphs else []
    unknown = sorted(set(graphs[0]) - set(RAGGED) - set(PER_GRAPH)) if graphs else []
    if unknown:  # a new graph kind's array would be dropped without a word: the store's schema must name it
        raise StoreError(f"graph arrays {unknown} have no place in the store (it keeps {sorted(RAGGED)} and "
                         f"{PER_GRAPH}); "
                         "add them to colab_kit.store.format.RAGGED with the pointer they are sliced by")
    out: dict[str, np.ndarray] = {}
    ptr_src = {"atom_ptr": "z", "edge_ptr": "nbr", "angle_ptr": "angles"}
    for ptr, src in ptr_src.items():
        if graphs and src in graphs[0]:
            out[ptr] = np.concatenate(([0], np.cumsum([len(g[src]) for g in graphs]))).astype(np.int64)
    joined = narrow({k: np.concatenate([g[k] for g in graphs]) if graphs else np.zeros(0) for k in names})
    out.update({k: np.ascontiguousarray(a) for k, a in joined.items()})
    out["lattice"] = np.stack([g["lattice"] for g in graphs]).astype(np.float64) if graphs else np.zeros((0, 3, 3))
    if graphs and "stress" in graphs[0]:
        out["stress"] = np.stack([g["stress"] for g in graphs]).astype(np.float32)
    out["target"] = np.asarray(targets, dtype=np.float64)
    meta = {
        "format": "colab_kit.store",
        "format_version": str(FORMAT_VERSION),
        "fingerprint": fp,
        "ids": json.dumps(ids),
        "failures": json.dumps([list(f) for f in failures]),
    }
    if warned:  # (id, warning) of items converted despite a library warning, e.g. a CIF pymatgen had to fix
        meta["warnings"] = json.dumps([list(w) for w in warned])
    return safetensors_bytes(out, meta)


def write_shard(root: str | Path, index: int, graphs: list[dict[str, np.ndarray]], ids: list[str],
                targets: list[float], failures: list[tuple[str, str]], fp: str,
                first_item: int, n_items: int, warned: list[tuple[str, str]] = ()) -> ShardEntry:
    """Write one shard atomically; returns its manifest entry."""
    blob = pack_shard(graphs, ids, targets, failures, fp, warned)
    path = Path(root) / shard_name(index)
    atomic_write_bytes(path, blob)
    return ShardEntry(
        index=index, file=path.name, first_item=first_item, n_items=n_items, n_graphs=len(graphs),
        n_failed=len(failures), n_warned=len({w[0] for w in warned}),
        n_atoms=int(sum(len(g["z"]) for g in graphs)),
        # a structure-only store (edges built on the device) counts the edges its atoms will have
        n_edges=int(sum(len(g["nbr"]) if "nbr" in g else int(g["nbr_count"].sum()) for g in graphs)),
        bytes=len(blob), sha256=hashlib.sha256(blob).hexdigest(),
    )


# ---------------------------------------------------------------- reading

class Shard:
    """One mmap'd shard file: arrays are plain ndarray views into the map (nothing copied until sliced).

    The header is read with ``read()`` before mapping (a page fault on a cold map pulls in a whole
    read-around window; 133 headers cost 1.05 s through a map vs 0.07 s with reads) and the ids /
    failures JSON is parsed only when asked for. The map keeps the kernel's default read-around: an
    epoch reads every graph, so the neighbours it pulls in are used later (``MADV_RANDOM`` made a cold
    random-order pass 3.2x slower: 573 vs 1,820 graphs/s on the 132k store)."""

    def __init__(self, path: Path, expect_fp: str | None, expect_bytes: int | None,
                 expect_sha256: str | None = None) -> None:
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below; the map outlives it
        except FileNotFoundError:
            raise StoreError(f"shard {path} listed in the manifest is missing; {REBUILD}") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            if expect_bytes is not None and size != expect_bytes:
                raise StoreError(f"shard {path} is damaged: {size} bytes on disk, {expect_bytes} in the manifest; {REBUILD}")
            # the first map of a shard in a process checks its sha256: a flipped byte is never trained on
            if expect_sha256 is not None and not has_sha256(path, expect_sha256):
                raise StoreError(f"shard {path} is damaged: its sha256 is not the manifest's; {REBUILD}")
            try:
                n = int.from_bytes(f.read(8), "little")
                if not 0 < n <= size - 8:
                    raise ValueError(f"header length {n} does not fit in {size} bytes")
                header = json.loads(f.read(n))
            except (ValueError, UnicodeDecodeError) as exc:
                raise StoreError(f"shard {path} is not a readable safetensors file ({exc}); delete it and run convert again") from exc
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        meta = header.pop("__metadata__", {}) or {}
        if meta.get("format") != "colab_kit.store" or (expect_fp is not None and meta.get("fingerprint") != expect_fp):
            raise StoreError(
                f"shard {path} does not belong to this store (fingerprint {meta.get('fingerprint')!r}, "
                f"expected {expect_fp!r}); remove it and run `python -m colab_kit convert` again"
            )
        buf = np.frombuffer(mm, dtype=np.uint8)
        base = 8 + n
        self.arrays: dict[str, np.ndarray] = {}
        for name, info in header.items():
            start, end = info["data_offsets"]
            dtype = np.dtype(_ST_DTYPES[info["dtype"]]).newbyteorder("<")
            self.arrays[name] = buf[base + start: base + end].view(dtype).reshape(info["shape"])
        self._meta = meta
        self.n = len(self.arrays["target"]) if "target" in self.arrays else len(self.ids)
        self.ptr = {k: v.astype(np.int64) for k, v in self.arrays.items() if k.endswith("_ptr")}
        self.target = self.arrays["target"].astype(np.float64) if "target" in self.arrays else np.zeros(0)

    @functools.cached_property
    def ids(self) -> list[str]:
        return json.loads(self._meta.get("ids", "[]"))

    @functools.cached_property
    def failures(self) -> list[tuple[str, str]]:
        return [tuple(f) for f in json.loads(self._meta.get("failures", "[]"))]

    @functools.cached_property
    def warnings(self) -> list[tuple[str, str]]:
        return [tuple(w) for w in json.loads(self._meta.get("warnings", "[]"))]

    def __len__(self) -> int:
        return self.n

    def graph(self, i: int) -> dict[str, np.ndarray]:
        out = {}
        arrays, ptr = self.arrays, self.ptr
        for name, p in RAGGED.items():
            if name in arrays:
                pp = ptr[p]
                out[name] = arrays[name][pp[i]: pp[i + 1]]
        for name in PER_GRAPH:
            if name in arrays:
                out[name] = arrays[name][i]
        return out


class GraphStore:
    """Read-only view of a complete store. Opening reads only ``manifest.json``; shard files are
    mapped on first use, separately in every process (safe in forked DataLoader workers), and a
    pickled GraphStore carries only its path."""

    def __init__(self, root: str | Path, allow_partial: bool = False) -> None:
        self.root = Path(root)
        path = self.root / MANIFEST
        try:
            manifest = Manifest.read(path)
        except ManifestError as exc:
            raise StoreError(f"{exc}; {REBUILD}") from None
        if manifest is None:
            raise StoreError(f"no graph store at {self.root} ({MANIFEST} missing); build one with `python -m colab_kit convert SOURCE --out {self.root}`")
        if manifest.format_version != FORMAT_VERSION:
            raise StoreError(
                f"store {self.root} has format version {manifest.format_version}, this colab_kit reads "
                f"{FORMAT_VERSION}; convert the data again into a new directory"
            )
        if not manifest.complete and not allow_partial:
            raise StoreError(f"store {self.root} is incomplete ({len(manifest.shards)} shards done); run `python -m colab_kit convert` again to finish it")
        self.manifest: Manifest = manifest
        self.shards: list[ShardEntry] = sorted(manifest.shards, key=lambda s: s.index)
        counts = np.array([s.n_graphs for s in self.shards], dtype=np.int64)
        self.starts = np.concatenate(([0], np.cumsum(counts)))  # the first graph of each shard, and the total
        self._n = int(self.starts[-1])
        self.graph_kind: str = manifest.graph_kind
        self.params: dict[str, Any] = manifest.params
        self.fingerprint: str = manifest.fingerprint
        self._open: dict[int, Shard] = {}
        self._pid = os.getpid()
        self._converter: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"root": str(self.root), "allow_partial": not self.manifest.complete}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"], allow_partial=state["allow_partial"])  # type: ignore[misc]

    def __len__(self) -> int:
        return self._n

    def shard(self, k: int) -> Shard:
        """Shard ``k``, mapped in this process on first use (and its sha256 checked then)."""
        if self._pid != os.getpid():  # forked: maps from the parent are not ours to reuse
            self._open, self._pid = {}, os.getpid()
        sh = self._open.get(k)
        if sh is None:
            meta = self.shards[k]
            sh = self._open[k] = Shard(self.root / meta.file, self.fingerprint, meta.bytes, meta.sha256 or None)
        return sh

    def release(self, k: int) -> None:
        """Unmap shard ``k`` (mapped again on next use): a pass over the store keeps only its current shards mapped,
        so mapped pages, which RSS counts, do not grow with the store."""
        self._open.pop(k, None)

    def locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < self._n:
            raise IndexError(f"graph index {i} out of range for a store of {self._n} graphs")
        k = int(np.searchsorted(self.starts, i, side="right") - 1)
        return k, i - int(self.starts[k])

    def arrays(self, i: int) -> dict[str, np.ndarray]:
        """The compact arrays of graph ``i`` (views into the map)."""
        k, j = self.locate(i)
        return self.shard(k).graph(j)

    def graph_id(self, i: int) -> str:
        k, j = self.locate(i)
        return self.shard(k).ids[j]

    def target(self, i: int) -> float:
        k, j = self.locate(i)
        return float(self.shard(k).target[j])

    @property
    def converter(self) -> Any:
        if self._converter is None:

            self._converter = Converter(self.graph_kind, self.params)
        return self._converter

    def get(self, i: int) -> Any:
        """Graph ``i`` as its model consumes it (its graph kind's ``to_graph``: e.g. a PyG ``Data``, a CHGNet ``CrystalGraph``)."""
        return self.item(i)[0]

    def item(self, i: int, target: float | None = None) -> tuple[Any, float]:
        """(graph ``i`` as :meth:`get` returns it, its target), with one index lookup; ``target`` replaces the
        stored one (a distillation target)."""
        k, j = self.locate(i)
        sh = self.shard(k)
        t = float(sh.target[j]) if target is None else float(target)
        return self.converter.to_graph(sh.graph(j), target=t, graph_id=sh.ids[j]), t

    @property
    def potential(self) -> dict[str, Any] | None:
        """The label spec of a potential's store (keys, units, trained targets: :class:`colab_kit.sources.LabelSpec`
        as a dict), None for a store of one label per structure."""
        return self.manifest.source.get("potential")

    def frame(self, i: int) -> tuple[Any, tuple[float, np.ndarray, np.ndarray, np.ndarray]]:
        """(graph ``i`` as :meth:`get` returns it, (energy eV/atom, forces [A, 3] eV/Å, stress [3, 3] GPa, magnetic
        moments [A] μB)) of a potential's store."""
        k, j = self.locate(i)
        sh = self.shard(k)
        arrays = sh.graph(j)
        t = float(sh.target[j])
        graph = self.converter.to_graph(arrays, target=t, graph_id=sh.ids[j])
        return graph, (t, arrays["forces"], arrays["stress"], arrays["magmom"])

    def _per_graph(self, fn: Any) -> np.ndarray:
        parts = [fn(self.shard(k)) for k in range(len(self.shards))]
        return np.concatenate(parts) if parts else np.zeros(0)

    def sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """(atoms, directed edges) per graph, from the shard pointers; no graph is read."""
        atoms = self._per_graph(lambda s: np.diff(s.ptr["atom_ptr"]) if len(s) else np.zeros(0, np.int64))
        edges = self._per_graph(_edge_counts)
        return atoms.astype(np.int64), edges.astype(np.int64)

    def targets(self) -> np.ndarray:
        return self._per_graph(lambda s: s.target)

    def ids(self) -> list[str]:
        return [i for k in range(len(self.shards)) for i in self.shard(k).ids]

    def failures(self) -> list[tuple[str, str]]:
        """(id, reason) of every structure that was skipped during conversion."""
        return [f for k in range(len(self.shards)) for f in self.shard(k).failures]

    def warnings(self) -> list[tuple[str, str]]:
        """(id, warning) of every structure that converted although its parser warned (e.g. pymatgen
        rounding a CIF's coordinates)."""
        return [w for k in range(len(self.shards)) for w in self.shard(k).warnings]

    def verify(self) -> list[str]:
        """Check every shard's checksum; returns the problems found (empty when the store is sound)."""
        problems = []
        for meta in self.shards:
            p = self.root / meta.file
            if not p.exists():
                problems.append(f"{p}: missing")
            elif p.stat().st_size != meta.bytes or sha256_file(p) != meta.sha256:  # hashed again: verify is explicit
                problems.append(f"{p}: checksum mismatch (damaged or modified)")
        return problems


def _edge_counts(s: Shard) -> np.ndarray:
    """Directed edges per graph of a shard: from its edge pointer, or (a structure-only store, whose edges are built
    on the device) from the per-atom edge counts."""
    if not len(s):
        return np.zeros(0, np.int64)
    if "edge_ptr" in s.ptr:
        return np.diff(s.ptr["edge_ptr"])
    return np.add.reduceat(s.arrays["nbr_count"].astype(np.int64), s.ptr["atom_ptr"][:-1])


def read_manifest(path: str | Path) -> Manifest | None:
    """The manifest at ``path`` (None when there is none or it is damaged): for code that only looks."""
    try:
        return Manifest.read(path)
    except ManifestError:
        return None
