"""colab_kit: train crystal graph neural networks on a free Colab runtime without running out of memory.

Importing the package does nothing but define names: no directories, probes, logging setup or
warning filters happen at import time.
"""

from __future__ import annotations

__version__ = "0.1.0"
