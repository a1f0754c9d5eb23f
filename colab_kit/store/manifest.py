"""A store's manifest, typed: the commit record of which shards are complete, read and written only here.

``manifest.json`` (a part of a multi-host build: ``manifest.part-<i>-of-<N>.json``) is JSON, replaced atomically
after each committed shard. Its keys and their meaning are those of every store built since format 1: stores
built before this module load unchanged, and a manifest written here is byte for byte what was written before.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from colab_kit.errors import ColabKitError
from colab_kit.util.files import atomic_write_json

FORMAT_VERSION = 1
NAME = "manifest.json"


class ManifestError(ColabKitError, RuntimeError):
    """A manifest that cannot be read; the message names the file and what rebuilds it."""


def part_name(i: int, n: int) -> str:
    """The manifest file of part ``i`` of ``n`` (``convert --shard i/N``); the whole store's for one part."""
    return NAME if n == 1 else f"manifest.part-{i}-of-{n}.json"


PART_GLOB = "manifest.part-*-of-*.json"


@dataclass
class ShardEntry:
    """One committed shard: its file, the source items it covers, what it holds, its size and sha256."""

    index: int
    file: str
    first_item: int
    n_items: int
    n_graphs: int
    n_failed: int
    n_atoms: int
    n_edges: int
    bytes: int
    sha256: str
    n_warned: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShardEntry:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Manifest:
    """What a store is (fingerprint, graph kind and parameters, source identity, item limit, shard size, part of N)
    and which shards are committed; complete once every shard is, with the totals then."""

    fingerprint: str
    graph_kind: str
    params: dict[str, Any]
    source: dict[str, Any]
    limit: int | None
    shard_size: int
    part: tuple[int, int] = (0, 1)
    complete: bool = False
    shards: list[ShardEntry] = field(default_factory=list)
    format_version: int = FORMAT_VERSION
    n_graphs: int = 0
    n_failed: int = 0
    n_items: int = 0
    n_warned: int = 0

    @property
    def target_name(self) -> str | None:
        """The label's name the source recorded (``"e_form"``; ``"target"`` for an id_prop.csv folder)."""
        return self.source.get("target_name") or None

    def add(self, entry: ShardEntry) -> None:
        """Record a committed shard (kept in index order)."""
        self.shards = sorted([e for e in self.shards if e.index != entry.index] + [entry], key=lambda e: e.index)

    def finish(self) -> Manifest:
        """Mark the store complete and compute its totals (a finished conversion, or a merge of parts)."""
        self.complete = True
        self.n_graphs = sum(e.n_graphs for e in self.shards)
        self.n_failed = sum(e.n_failed for e in self.shards)
        self.n_items = sum(e.n_items for e in self.shards)
        self.n_warned = sum(e.n_warned for e in self.shards)
        return self

    def same_store(self, other: Manifest) -> bool:
        """Whether two manifests describe the same store (parts of one build, a resume): header fields equal."""
        return all(getattr(self, k) == getattr(other, k) for k in HEADER)

    # -- the one writer and the one reader --------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        # the JSON keeps the graph kind's old key, "converter": the file format does not change
        d: dict[str, Any] = {"format_version": self.format_version, "fingerprint": self.fingerprint,
                             "converter": self.graph_kind, "params": self.params, "source": self.source,
                             "limit": self.limit, "shard_size": self.shard_size, "part": list(self.part),
                             "complete": self.complete, "shards": [e.to_dict() for e in self.shards]}
        if self.complete:
            d.update(n_graphs=self.n_graphs, n_failed=self.n_failed, n_items=self.n_items, n_warned=self.n_warned)
        return d

    def write(self, path: str | Path) -> None:
        """Replace ``path`` atomically with this manifest."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        return cls(fingerprint=d["fingerprint"], graph_kind=d["converter"], params=dict(d["params"]),
                   source=dict(d.get("source", {})), limit=d.get("limit"), shard_size=int(d["shard_size"]),
                   part=tuple(d.get("part", (0, 1))), complete=bool(d.get("complete")),
                   shards=[ShardEntry.from_dict(e) for e in d.get("shards", [])],
                   format_version=int(d.get("format_version", 0)), n_graphs=int(d.get("n_graphs", 0)),
                   n_failed=int(d.get("n_failed", 0)), n_items=int(d.get("n_items", 0)),
                   n_warned=int(d.get("n_warned", 0)))

    @classmethod
    def read(cls, path: str | Path) -> Manifest | None:
        """The manifest at ``path``, or None when there is none.

        Raises:
            ManifestError: the file is there but is not a manifest (damaged, cut short, not JSON).
        """
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            return cls.from_dict(json.loads(text))
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{path} is damaged ({type(exc).__name__}: {' '.join(str(exc).split())[:80]})") from None


#: the fields that say which store a manifest belongs to
HEADER = ("format_version", "fingerprint", "graph_kind", "params", "source", "limit", "shard_size")
