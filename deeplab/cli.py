"""What every command-line tool shares: one-line errors, ``--set`` (and dummies for file-only
placeholders), ``--shard`` and the one ``a:b:c`` range syntax."""
from __future__ import annotations

import math
import os
import signal
import sys
import threading

from caffe import tool
from caffe.precision import AMP_CHOICES

from . import USER_ERRORS, DeepLabError


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that a command stops as on Ctrl-C: the outputs
    being written are finished, temporary files removed, and it says what was done."""


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends it at once
    print("SIGTERM received: stopping (writes under way are finished, temporary files removed)", file=sys.stderr)
    raise Terminated()


def run_main(main_fn, argv: list[str] | None = None) -> None:
    """The one error-to-exit-status rule (``caffe.tool.run_main``) for the pipeline's commands:
    engine, pipeline and CRF errors print one line and exit 2; Ctrl-C exits 130 and SIGTERM,
    which stops the command the same way (:class:`Terminated`), 143."""
    def guarded(args):
        try:
            return main_fn(args)
        except Terminated:
            print("terminated", file=sys.stderr)
            return 128 + signal.SIGTERM

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        tool.run_main(guarded, argv, user_errors=USER_ERRORS)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def parse_set(items: list[str] | None) -> dict[str, str]:
    """Turn ``--set NAME=VALUE`` items into a mapping (for ``${NAME}`` placeholders)."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise DeepLabError(f"--set expects NAME=VALUE, got {item!r}")
        out[name.strip()] = value
    return out


def default_amp() -> str:
    """``--amp``'s default for training and extraction: ``$DEEPLAB_AMP`` where set (one of
    AMP_CHOICES, e.g. fp32 on a machine whose numbers must not depend on a probe), else auto."""
    value = os.environ.get("DEEPLAB_AMP") or "auto"
    if value not in AMP_CHOICES:
        raise DeepLabError(f"DEEPLAB_AMP={value!r}: must be one of {', '.join(AMP_CHOICES)}")
    return value


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


def shard(items: list, spec: str | None) -> list:
    """Shard ``K/N`` (1-based K) of ``items``: every N-th item from the K-th, so the N shards are
    disjoint and their union is the list; None is the whole list."""
    k, n = parse_shard(spec)
    return items[k::n]


def parse_range(text: str, integer: bool = False) -> list:
    """Values from ``a,b,c`` items, each a number, ``start:stop`` (step 1) or ``start:step:stop``
    (MATLAB's and the paper's order, stop included): sorted, without repeats.

    ``start:step:stop`` with a step larger than ``stop - start`` is refused as the likely
    ``start:stop:step`` mix-up. Raises ValueError with the reason (callers name the option).
    """
    num = int if integer else float
    syntax = (f"expected {'integers' if integer else 'numbers'} as 'a,b,c', 'start:stop' or 'start:step:stop' "
              f"(step > 0, stop >= start); got {text!r}")
    values: set = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            bits = [num(b) for b in part.split(":")]
        except ValueError:
            raise ValueError(syntax) from None
        if not all(math.isfinite(b) for b in bits):
            raise ValueError(f"{part!r}: not a finite number")
        if len(bits) == 1:
            values.add(bits[0])
            continue
        start, step, stop = (bits[0], 1, bits[1]) if len(bits) == 2 else bits if len(bits) == 3 else (0, 0, 0)
        if step <= 0 or stop < start:
            raise ValueError(syntax)
        if stop > start and step > stop - start:
            raise ValueError(f"{part!r}: step {step:g} exceeds {stop:g} - {start:g}; ranges are start:step:stop "
                             f"(did you mean {start:g}:{stop:g}:{step:g}?)")
        n = int(math.floor((stop - start) / step + 1e-9)) + 1
        values.update(start + i * step if integer else round(start + i * step, 10) for i in range(n))
    if not values:
        raise ValueError(syntax)
    return sorted(values)


# Fields whose values only name files or folders: a placeholder there does not change what a
# net computes, so shape inspection (netinfo) may fill it with a dummy.
FILE_FIELDS = frozenset({"source", "root_folder", "prefix", "mean_file", "file_name", "snapshot_prefix",
                         "net", "train_net", "test_net", "weights"})


def file_placeholders(path: str | os.PathLike, mapping: dict[str, str]) -> dict[str, str]:
    """Dummy values ``<NAME>`` for the ``${NAME}`` placeholders of a prototxt that ``mapping``
    leaves unfilled and that appear only inside quoted values of file fields (FILE_FIELDS:
    source, root_folder, prefix, ...). A placeholder used anywhere else (``num_output:
    ${NUM_LABELS}``) gets none, so filling still stops on it with a clear error."""
    from caffe.prototxt import placeholders

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return {}  # the parser reports the file itself
    found = placeholders(text)
    return {name: f"<{name}>" for name in sorted(found) if name not in mapping and found[name] <= FILE_FIELDS}
