"""What every command-line tool shares: one-line errors, --set and --shard parsing."""
from __future__ import annotations

import os
import sys
from typing import Callable

from . import DeepLabError


def run_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a tool's ``main``; a user error prints ``error: ...`` on one line and exits 2."""
    try:
        code = main(argv)
    except DeepLabError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def parse_set(items: list[str] | None) -> dict[str, str]:
    """Turn ``--set NAME=VALUE`` items into a mapping (for ``${NAME}`` placeholders)."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise DeepLabError(f"--set expects NAME=VALUE, got {item!r}")
        out[name.strip()] = value
    return out


def parse_shard(text: str | None) -> tuple[int, int]:
    """Parse ``--shard K/N`` (1-based K) into ``(K - 1, N)``; None means the whole list."""
    if not text:
        return 0, 1
    k, sep, n = text.partition("/")
    try:
        k_i, n_i = int(k), int(n)
    except ValueError:
        k_i = n_i = 0
    if not sep or n_i < 1 or not 1 <= k_i <= n_i:
        raise DeepLabError(f"--shard expects K/N with 1 <= K <= N, got {text!r}")
    return k_i - 1, n_i
