"""What produced an output folder, so that "finished" means "finished from these inputs" (no torch).

Every stage that skips finished outputs (extract, densecrf, crf_search) keeps a small
``.provenance.json`` in its output folder: the stage, the inputs that decide its outputs
(weights digest, the net's text after placeholders, CRF parameters, the identity of the score
maps read, ...) and, for people, where they came from (paths, placeholder values).

The rule, the same for every stage: a rerun whose inputs differ from the recorded ones
**redoes** the folder, with a note on stderr saying what changed; nothing is deleted, the
record is rewritten at once, and an output counts as finished only when it is newer than the
record (so outputs of the old inputs, including other shards' ids and ids not in this
run's list, are never taken as finished). ``--force`` redoes this run's outputs whatever the
record says. The Makefile's stage stamps copy the record (rewritten only when it changes), so
``make eval WEIGHTS=other.caffemodel`` reruns exactly the stages whose inputs changed.

A later stage names its input folder by that folder's record (``source_identity``), so CRF
outputs made from old score maps are redone when the score maps are.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys

from caffe.util.files import check_output_dir, remove_stale_temps, write_bytes_atomic

from . import DeepLabError

RECORD = ".provenance.json"
_TEMP_MIN_AGE = 60.0  # seconds: a record's temporary file older than this belongs to a killed run


def file_digest(path: str | os.PathLike) -> str:
    """A content digest of a file (BLAKE2b over every byte, with the size): weights files are
    told apart by what they hold, not by name or date; ~1 GB/s."""
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            size = 0
            while chunk := f.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
    except OSError as e:
        raise DeepLabError(f"cannot read {path}: {e.strerror or e}") from None
    return f"{size}:{h.hexdigest()}"


def text_digest(text: str | bytes) -> str:
    """Short digest of a text (e.g. a palette or an id list)."""
    data = text.encode() if isinstance(text, str) else bytes(text)
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def read_record(folder: str | os.PathLike) -> dict | None:
    """The folder's record, or None where there is none (or it is unreadable)."""
    try:
        with open(os.path.join(folder, RECORD), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "inputs" in record else None


def source_identity(folder: str | os.PathLike) -> dict:
    """How a later stage names an input folder: the digest of the folder's record where it has
    one (made by a stage of this pipeline), else its real path."""
    record = read_record(folder)
    if record is not None:
        return {"stage": record.get("stage"), "inputs": text_digest(_canonical(record["inputs"]))}
    return {"path": os.path.realpath(folder)}


def _changes(old: dict, new: dict) -> str:
    """A short account of which inputs differ."""
    if old.get("stage") != new.get("stage"):
        return f"it holds {old.get('stage')!r} outputs"
    a, b = old.get("inputs", {}), new["inputs"]
    keys = sorted(k for k in set(a) | set(b) if _canonical(a.get(k)) != _canonical(b.get(k)))

    def short(v) -> str:
        text = v if isinstance(v, str) else _canonical(v)
        return text if len(text) <= 40 else text_digest(text)[:12] + "…"

    return "; ".join(f"{k}: {short(a.get(k))} -> {short(b.get(k))}" for k in keys[:6]) or "record changed"


class Provenance:
    """An output folder bound to the inputs of this run (see the module doc): ``fresh(path)``
    tells whether an output there was made from them."""

    def __init__(self, folder: str, since_ns: int, changed: bool):
        self.folder, self.since_ns, self.changed = folder, since_ns, changed

    def fresh(self, path: str | os.PathLike) -> bool:
        """True when ``path`` exists and was written after the record (from these inputs)."""
        try:
            return os.stat(path).st_mtime_ns >= self.since_ns
        except OSError:
            return False


def open_output(folder: str | os.PathLike, stage: str, inputs: dict, info: dict | None = None,
                what: str = "--out", quiet: bool = False) -> Provenance:
    """Check ``folder`` is a usable output folder (one line naming it and why, before any
    work) and bind it to ``inputs``: the record is kept when it matches, else rewritten with a
    note on stderr (the folder's outputs are then redone). Stale temporary files of a killed
    run's record are removed."""
    folder = os.fspath(folder)
    check_output_dir(folder, f"{what} folder")
    remove_stale_temps(folder, [RECORD], min_age=_TEMP_MIN_AGE)
    record = {"stage": stage, "inputs": json.loads(_canonical(inputs)), "info": info or {}}
    path = os.path.join(folder, RECORD)
    old = read_record(folder)
    if old is not None and old.get("stage") == stage and _canonical(old["inputs"]) == _canonical(record["inputs"]):
        return Provenance(folder, os.stat(path).st_mtime_ns, False)
    if not quiet:
        if old is not None:
            print(f"note: {folder} was made from other inputs ({_changes(old, record)}); its outputs are redone",
                  file=sys.stderr)
        elif any(not e.startswith(".") for e in os.listdir(folder)):
            print(f"note: {folder} has no record of the inputs its files were made from; they are redone",
                  file=sys.stderr)
    write_bytes_atomic(path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
    return Provenance(folder, os.stat(path).st_mtime_ns, True)
