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

Per output, the folder also keeps ``.provenance.jsonl``: for each finished id the size and
modification time of the files it was made from (its image, its score map), appended as each
id is finished. An id counts as finished only when these still match, so a changed input
image of the same name redoes that id (and only it).

Two runs into one folder: every run holds the folder (a shared ``flock`` on ``.lock``) for
as long as it writes there. A run whose inputs equal the record's joins the runs already
there (shards of one job array); a run with other inputs is refused at once, one line naming
the folder and what differs, while any other run holds it; the record is rewritten only by a
run that is alone in the folder. The decision is made under an exclusive lock on the folder
itself, so two runs started together cannot both decide.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import sys
import threading

from caffe.util.files import WriteError, check_output_dir, remove_stale_temps, write_bytes_atomic

from . import DeepLabError

RECORD = ".provenance.json"
JOURNAL = ".provenance.jsonl"  # per output id: the stamps of the files it was made from
LOCK = ".lock"  # held (shared) by every run writing the folder
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


class FolderInUse(DeepLabError):
    """Another run with other inputs writes the output folder (two runs would mix their outputs)."""


def file_stamp(path: str | os.PathLike) -> list[int]:
    """[size, modification time in ns] of an input file: what tells a changed input (a new
    picture under the same name) from the one an output was made from."""
    st = os.stat(path)
    return [int(st.st_size), int(st.st_mtime_ns)]


def read_journal(folder: str | os.PathLike) -> dict[str, dict]:
    """The folder's per-output entries (id -> {"inputs": ..., ...}, the last one of an id
    wins); a torn last line (a killed run) is ignored. Empty where there is none."""
    entries: dict[str, dict] = {}
    try:
        with open(os.path.join(folder, JOURNAL), encoding="utf-8") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                    entries[entry["key"]] = entry
    except (OSError, UnicodeDecodeError):
        pass
    return entries


def _compact_journal(folder: str) -> None:
    """Rewrite the journal one line per id, in id order, where that changes it (so its bytes
    and its date only change when an entry does)."""
    path = os.path.join(folder, JOURNAL)
    entries = read_journal(folder)
    data = "".join(_canonical(entries[k]) + "\n" for k in sorted(entries)).encode()
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return
    except OSError:
        if not entries:
            return
    write_bytes_atomic(path, data)


@contextlib.contextmanager
def _gate(folder: str):
    """An exclusive lock on the folder itself, held while a run decides (joins, takes over or
    leaves): short, so it is waited for."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:  # a file system without locks: nothing to serialise with
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
        yield
    finally:
        os.close(fd)


def _try_lock(f, kind: int) -> bool:
    """flock ``kind`` without waiting; False when another run holds a conflicting lock."""
    try:
        fcntl.flock(f.fileno(), kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            return True  # no locks on this file system: as before, unguarded
        raise
    return True


class Provenance:
    """An output folder bound to the inputs of this run (see the module doc): ``fresh(path)``
    tells whether an output there was made from them, ``done(id, stamps, paths)`` whether an
    id's outputs were made from these very input files; ``note`` records a finished id.
    The run holds the folder until ``close()`` (also a context manager)."""

    def __init__(self, folder: str, since_ns: int, changed: bool, lock=None, entries: dict | None = None):
        self.folder, self.since_ns, self.changed = folder, since_ns, changed
        self._lock = lock
        self.entries: dict[str, dict] = entries if entries is not None else {}
        self._journal: int | None = None
        self._writing = threading.Lock()  # extraction notes ids from its writer threads

    def __getstate__(self):  # workers get the binding, never the lock or the journal
        return {**self.__dict__, "_lock": None, "_journal": None, "_writing": None}

    def __setstate__(self, state):
        self.__dict__.update(state, _writing=threading.Lock())

    def fresh(self, path: str | os.PathLike) -> bool:
        """True when ``path`` exists and was written after the record (from these inputs)."""
        try:
            return os.stat(path).st_mtime_ns >= self.since_ns
        except OSError:
            return False

    def done(self, key: str, inputs: dict, paths) -> bool:
        """True when every one of ``paths`` is fresh and ``key`` was recorded as made from
        ``inputs`` (stamps of its input files, :func:`file_stamp`)."""
        entry = self.entries.get(key)
        return (entry is not None and entry.get("inputs") == json.loads(_canonical(inputs))
                and all(self.fresh(p) for p in paths))

    def note(self, key: str, inputs: dict, **extra) -> None:
        """Record that ``key``'s outputs are written, made from ``inputs`` (one appended line;
        ``extra`` fields are kept for later stages, e.g. the image's path)."""
        entry = json.loads(_canonical({"key": key, "inputs": inputs, **extra}))
        line = (_canonical(entry) + "\n").encode()
        with self._writing:
            self._append(line)
        self.entries[key] = entry

    def _append(self, line: bytes) -> None:
        if self._journal is None:
            try:
                self._journal = os.open(os.path.join(self.folder, JOURNAL), os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                                        0o666)
            except OSError as e:
                raise WriteError(f"cannot write {os.path.join(self.folder, JOURNAL)}: {e.strerror or e}") from None
        try:
            os.write(self._journal, line)
        except OSError as e:
            raise WriteError(f"cannot write {os.path.join(self.folder, JOURNAL)}: {e.strerror or e}") from None

    def close(self) -> None:
        """Leave the folder; the last run leaving it rewrites the journal one line per id, in
        id order (so a folder's bytes do not depend on the order ids finished in)."""
        if self._journal is not None:
            os.close(self._journal)
            self._journal = None
        lock, self._lock = self._lock, None
        if lock is None:
            return
        try:
            with _gate(self.folder):
                if _try_lock(lock, fcntl.LOCK_EX):  # no other run left in the folder
                    _compact_journal(self.folder)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(self.folder, LOCK))
        finally:
            lock.close()

    def __enter__(self) -> "Provenance":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_output(folder: str | os.PathLike, stage: str, inputs: dict, info: dict | None = None,
                what: str = "--out", quiet: bool = False, journal: bool = True) -> Provenance:
    """Check ``folder`` is a usable output folder (one line naming it and why, before any
    work), take hold of it and bind it to ``inputs``: the record is kept when it matches, else
    rewritten with a note on stderr (the folder's outputs are then redone). While another run
    with other inputs holds the folder, FolderInUse (nothing is touched). Stale temporary files
    of a killed run's record are removed. ``journal``: the stage records its outputs one by
    one (:meth:`Provenance.note`). Call ``close()`` when the run ends."""
    folder = os.fspath(folder)
    check_output_dir(folder, f"{what} folder")
    record = {"stage": stage, "inputs": json.loads(_canonical(inputs)), "info": info or {}}
    path = os.path.join(folder, RECORD)
    with _gate(folder):
        try:
            lock = open(os.path.join(folder, LOCK), "a+b")
        except OSError as e:
            raise WriteError(f"cannot write {os.path.join(folder, LOCK)}: {e.strerror or e}") from None
        try:
            alone = _try_lock(lock, fcntl.LOCK_EX)
            old = read_record(folder)
            same = (old is not None and old.get("stage") == stage
                    and _canonical(old["inputs"]) == _canonical(record["inputs"]))
            if not alone and not (same and _try_lock(lock, fcntl.LOCK_SH)):
                what_differs = _changes(old, record) if old is not None else "no record yet"
                raise FolderInUse(f"{what} folder {folder} is in use by another run with other inputs "
                                  f"({what_differs}); two runs into one folder would mix their outputs: wait "
                                  f"for it to end or choose another folder")
            if alone:
                remove_stale_temps(folder, [RECORD, JOURNAL], min_age=_TEMP_MIN_AGE)
            if same:
                entries = read_journal(folder) if journal else {}
                if (journal and not entries and not quiet and alone
                        and any(not e.startswith(".") for e in os.listdir(folder))):
                    print(f"note: {folder} has no per-output record ({JOURNAL}; made by an earlier version): "
                          f"its outputs are redone", file=sys.stderr)
                result = Provenance(folder, os.stat(path).st_mtime_ns, False, lock, entries)
            else:
                if not quiet:
                    if old is not None:
                        print(f"note: {folder} was made from other inputs ({_changes(old, record)}); "
                              f"its outputs are redone", file=sys.stderr)
                    elif any(not e.startswith(".") for e in os.listdir(folder)):
                        print(f"note: {folder} has no record of the inputs its files were made from; "
                              f"they are redone", file=sys.stderr)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, JOURNAL))
                write_bytes_atomic(path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
                result = Provenance(folder, os.stat(path).st_mtime_ns, True, lock, {})
            if alone:
                _try_lock(lock, fcntl.LOCK_SH)  # from now on, runs with these inputs may join
        except BaseException:
            lock.close()
            raise
    return result
