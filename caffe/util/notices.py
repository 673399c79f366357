"""One-line notices on stderr, each at most once per process (deprecated calls, data that
Caffe accepts but that is probably a mistake, such as an Accuracy label outside the classes)."""
from __future__ import annotations

import sys

_SEEN: set = set()


def warn_once(key, message: str) -> bool:
    """Print ``warning: <message>`` on stderr the first time ``key`` is seen in this process;
    returns whether it was printed."""
    if key in _SEEN:
        return False
    _SEEN.add(key)
    print(f"warning: {message}", file=sys.stderr, flush=True)
    return True
