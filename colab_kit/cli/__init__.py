"""The command line, ``python -m colab_kit`` (:mod:`.commands`: run, detect, convert, train, evaluate; :mod:`.use`:
predict, export, benchmark, head, download; :mod:`.store`: merge), with the options they share (:mod:`.common`)."""

from colab_kit.cli.commands import build_parser, main

__all__ = ["build_parser", "main"]
