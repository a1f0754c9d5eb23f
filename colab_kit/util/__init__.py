"""Helpers every stage may use, none of which knows about crystals or models: files written atomically and checked
(:mod:`.files`), one writer per folder (:mod:`.locks`), logging (:mod:`.logs`), stopping on signals
(:mod:`.interrupt`), label units (:mod:`.units`), the torchrun world (:mod:`.distributed`) and seeded,
reproducible CPU runs (:mod:`.reproducible`).

Their public names are the modules': ``from colab_kit.util.files import atomic_write_bytes``.
"""

__all__ = ["distributed", "files", "interrupt", "locks", "logs", "reproducible", "units"]
