"""Stage 4, the store: graphs on disk in resumable, checksummed safetensors shards read by memory map.

:mod:`.format` is the shard format and :class:`GraphStore` (the reader); :mod:`.manifest` the typed manifest (one
reader, one writer); :mod:`.build` converts a source into a store (:func:`build_store`, resumable, in worker
processes: :mod:`.worker_pool`, :mod:`.shard_build`); :mod:`.merge` joins the parts several hosts built;
:mod:`.batch_read` reads a batch's graphs shard by shard.
"""

from colab_kit.store.batch_read import gather
from colab_kit.store.build import ConversionError, build_store
from colab_kit.store.format import GraphStore, StoreError, fingerprint, read_manifest
from colab_kit.store.manifest import Manifest, ManifestError, ShardEntry
from colab_kit.store.merge import MERGE_MODES, merge_stores

__all__ = ["MERGE_MODES", "ConversionError", "GraphStore", "Manifest", "ManifestError", "ShardEntry", "StoreError",
           "build_store", "fingerprint", "gather", "merge_stores", "read_manifest"]
