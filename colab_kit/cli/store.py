"""The store commands for several hosts: ``merge`` (one store from ``convert --shard i/N`` parts) and ``verify``
(every shard's checksum). The work is in :mod:`colab_kit.store.merge`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

EXAMPLES = {
    "merge": """examples:
  # on host i of 4:  python -m colab_kit convert data.json.gz --shard i/4 --out part-i
  python -m colab_kit merge part-0 part-1 part-2 part-3 --out store            # copies, checking every sha256
  python -m colab_kit merge /shared/part-* --out /shared/store --mode link      # hard links on one file system
The merged store equals a single-host `convert` byte for byte; a killed merge resumes.
""",
    "verify": """examples:
  python -m colab_kit verify store/      # every shard's size and sha256 against the manifest
""",
}


def cmd_merge(args: argparse.Namespace) -> int:
    from colab_kit.store import merge_stores
    from colab_kit.util.locks import hold

    with hold(args.out, "store"):  # one writer: the same lock as `convert --out`
        store = merge_stores(args.parts, args.out, mode=args.mode)
    print(f"store {store.root}: {len(store)} graphs in {len(store.shards)} shards from {len(args.parts)} part "
          f"folder(s), every checksum checked ({args.mode})")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from colab_kit.store import GraphStore

    store = GraphStore(args.store)
    problems = store.verify()
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"error: {len(problems)} of {len(store.shards)} shards of {store.root} are damaged or missing; delete the "
              "damaged files and run the same `convert` (or `run`) command again: it rebuilds only those",
              file=sys.stderr)
        return 1
    print(f"store {store.root}: {len(store)} graphs, {len(store.shards)} shards, every sha256 matches the manifest")
    return 0


def add_commands(sub: Any, make: Any) -> None:
    """Add ``merge`` and ``verify`` to the CLI's subparsers (``make(sub, name, help, epilog)`` makes one)."""
    from colab_kit.store import MERGE_MODES

    p = make(sub, "merge", "make one store from the parts hosts built with `convert --shard i/N`", EXAMPLES["merge"])
    p.add_argument("parts", nargs="+", help="the part folders (each holds manifest.part-i-of-N.json)")
    p.add_argument("--out", required=True, help="the store folder to write (may be one of the parts)")
    p.add_argument("--mode", choices=MERGE_MODES, default="copy",
                   help="copy (default; parts kept), link (hard links, one file system) or move")
    p.set_defaults(func=cmd_merge)

    p = make(sub, "verify", "check every shard of a store against the sha256 in its manifest", EXAMPLES["verify"])
    p.add_argument("store", help="the store folder")
    p.set_defaults(func=cmd_verify)
