"""Print one of the README's two commands, exactly as written there, for .ci/run to execute.

The README marks each command's code block with an HTML comment (``<!-- command: run -->`` /
``<!-- command: tests -->``) on the line before it; CI runs what follows, so the README cannot say one thing while
CI does another.

    python .ci/readme_command.py tests   # prints the shell lines of the README's test command
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def command(name: str, text: str | None = None) -> str:
    text = README.read_text(encoding="utf-8") if text is None else text
    m = re.search(rf"<!-- command: {re.escape(name)} -->\s*```(?:bash|sh)?\n(.*?)```", text, re.S)
    if m is None:
        raise SystemExit(f"README.md has no code block marked <!-- command: {name} -->")
    return m.group(1)


if __name__ == "__main__":
    print(command(sys.argv[1]), end="")
