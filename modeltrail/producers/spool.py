"""Offline safety: when the log cannot be reached, trainers' writes wait in a local spool.

A trainer must never block for long or crash because the log is down (a broker away, a
database locked past its busy timeout). Its writes go through an ``Outbox``: written
at once when the log answers, else appended to ``<home>/spool/entries.jsonl``, and the
training goes on. The spool is flushed, in order and once, when the log is back: by the
next write that finds the log reachable again, or by ``modeltrail spool flush``.

What a spooled entry is
-----------------------
An entry is a *command invocation* whose identity and time are fixed when the trainer
made it — an id, the actor, the producer's clock, and the command's arguments (the
inference batch with its packed arrays, the metrics, ...) — not a sealed event.
Sealing claims the next version of a stream and chains to its last hash, which only
the log knows: the run stream has several writers (this trainer's metrics, another
process resuming the run, the CLI finishing it), and even an inference stream may have
a second writer (another rank, a resumed process). Events sealed while offline would
claim versions someone else may take meanwhile, and be refused. So an entry is sealed
when it is flushed, against the stream heads of that moment, with the time and id it
was given when spooled: the event records when the batch was seen, and its id is
derived from the entry's (``uuid5(entry id, n)``), so a retried write of the same entry
carries the same event ids on every log.

Flushing replays entries through the same commands and folds as a live write, so every
rule still holds (an entry a rule refuses — the run's config changed meanwhile — goes
to ``rejected.jsonl`` with the reason, together with the entries that depend on it).

Exactly once, in order
----------------------
One flusher at a time holds ``<home>/spool/lock``; entries replay in file order, in
chunks, each chunk one atomic append. ``cursor.json`` says how far the file has been
flushed. The gap between a chunk's commit and the cursor moving past it is closed
this way: while the chunk's transaction is still open, its sealed events are saved
in the cursor as *in flight*. A flush that finds an in-flight chunk re-sends exactly
those events: the log makes a re-sent batch with the same event ids a no-op when it
had landed, and appends and folds it when it had not; if it is refused (other writers
took its stream versions meanwhile, or a rule refuses it now), nothing of it is in the
log, so it is dropped and its entries are sealed again. On Kafka a chunk the projector
has not decided in time (``ProjectionTimeout``) stays in flight the same way.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modeltrail.core import commands as cmd
from modeltrail.core.batch import Batch
from modeltrail.core.events.envelope import Event, to_datetime
from modeltrail.core.events.seal import Sealer
from modeltrail.core.refs import Ref, Target
from modeltrail.errors import (
    ConcurrencyConflict,
    IntegrityError,
    LogUnavailable,
    ModeltrailError,
    ProjectionTimeout,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: one process per home, threads still locked
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from modeltrail.config import Settings
    from modeltrail.producers.run import Run
    from modeltrail.registry import Registry

CHUNK = 256
"""Entries replayed per transaction when flushing."""

UNDECIDED = (LogUnavailable, ConcurrencyConflict, ProjectionTimeout)
"""Errors of a flush's write after which its chunk may be in the log or not (the log
was away, its stream versions were taken, or a Kafka projector has not decided it yet):
the chunk stays in flight, and the next flush re-sends exactly its sealed events."""


# -- entries ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One command a producer made, with its identity and time fixed when it was made."""

    kind: str
    namespace: str
    actor: str
    at: int
    """The producer's clock when the entry was made (UTC microseconds): the events'
    ``recorded_at``, however late they are flushed."""
    args: Mapping[str, Any]
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    requires: uuid.UUID | None = None
    """An entry that must have been accepted for this one to make sense (the spooled
    opening of the run it writes to)."""

    def dumps(self) -> str:
        return json.dumps(
            {
                "id": str(self.id),
                "kind": self.kind,
                "namespace": self.namespace,
                "actor": self.actor,
                "at": self.at,
                "requires": None if self.requires is None else str(self.requires),
                "args": _to_json(dict(self.args)),
            },
            separators=(",", ":"),
        )

    @classmethod
    def loads(cls, line: str) -> Entry:
        raw = json.loads(line)
        return cls(
            kind=raw["kind"],
            namespace=raw["namespace"],
            actor=raw["actor"],
            at=int(raw["at"]),
            args=_from_json(raw["args"]),
            id=uuid.UUID(raw["id"]),
            requires=None if raw.get("requires") is None else uuid.UUID(raw["requires"]),
        )


def _to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, Mapping):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and "$bytes" in value:
            return base64.b64decode(value["$bytes"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def _replay_inference(b: Batch, ns: str, a: Mapping[str, Any]) -> None:
    cmd.record_inference(b, ns, a["model"], a["run"], a["batch"])


def _replay_metrics(b: Batch, ns: str, a: Mapping[str, Any]) -> None:
    cmd.log_metrics(b, ns, a["model"], a["run"], a["metrics"], a["step"])


def _replay_finish(b: Batch, ns: str, a: Mapping[str, Any]) -> None:
    cmd.finish_run(b, ns, a["model"], a["run"], a["status"])


def _replay_open_run(b: Batch, ns: str, a: Mapping[str, Any]) -> bool:
    return cmd.open_run(
        b,
        ns,
        a["model"],
        a["run"],
        a["config"],
        allow_config_change=a["allow_config_change"],
        arch_hash=a["arch_hash"],
    )


def _replay_version(b: Batch, ns: str, a: Mapping[str, Any]) -> Target:
    return cmd.log_version(
        b,
        ns,
        a["model"],
        [cmd.FileEntry(path, size, sha256) for path, size, sha256 in a["files"]],
        metadata=a["metadata"],
        aliases=a["aliases"],
        run=a["run"],
        epoch=a["epoch"],
        arch_hash=a["arch_hash"],
        derived_from=[Target(*t) for t in a.get("derived_from", ())],
    )


def _replay_use(b: Batch, ns: str, a: Mapping[str, Any]) -> None:
    cmd.use_version(b, ns, a["model"], a["run"], Target(*a["used"]))


REPLAY: dict[str, Callable[[Batch, str, Mapping[str, Any]], Any]] = {
    "inference": _replay_inference,
    "metrics": _replay_metrics,
    "finish": _replay_finish,
    "open_run": _replay_open_run,
    "version": _replay_version,
    "use": _replay_use,
}
"""How each kind of entry is written: the same command a live write runs (returning
what it returns: a run's opening whether it resumed, a version's its ``Target``)."""


def replay(b: Batch, entry: Entry) -> Any:
    """Runs an entry's command inside a write, with the entry's actor, time and ids;
    returns the command's result."""
    replayer = REPLAY.get(entry.kind)
    if replayer is None:
        raise IntegrityError(f"spool entry {entry.id} has unknown kind {entry.kind!r}")
    ids = (uuid.uuid5(entry.id, str(n)) for n in range(1_000_000))
    own = b.child(
        actor=entry.actor,
        recorded_at=entry.at,
        sealer=Sealer(b.codec, new_id=ids.__next__),
    )
    result = replayer(own, entry.namespace, entry.args)
    b.adopt(own)
    return result


# -- the spool file ---------------------------------------------------------------------


@dataclass(frozen=True)
class SpoolStatus:
    path: str
    pending: int
    """Entries waiting to be flushed."""
    oldest: datetime | None
    newest: datetime | None
    rejected: int
    """Entries a rule refused when flushed (kept in rejected.jsonl with the reason)."""
    in_flight: int
    """Sealed events of a flush whose outcome is not known yet (re-sent by the next)."""


@dataclass(frozen=True)
class FlushReport:
    flushed: int
    """Entries written to the log (or events re-sent for a flush left in flight)."""
    rejected: int
    """Entries a rule refused, moved to rejected.jsonl."""


@dataclass
class _Cursor:
    done: int = 0
    """Bytes of entries.jsonl already flushed (or rejected)."""
    in_flight: dict[str, Any] | None = None
    """{"end": offset the chunk reaches, "events": [sealed event, ...]}"""
    refused: list[str] = field(default_factory=list)
    """Ids of rejected entries that later entries may require."""


class Spool:
    """The spool of one home: ``entries.jsonl``, ``cursor.json``, ``rejected.jsonl``."""

    def __init__(self, directory: str | os.PathLike[str], *, durable: bool = False) -> None:
        self.directory = Path(directory)
        self.entries_path = self.directory / "entries.jsonl"
        self.cursor_path = self.directory / "cursor.json"
        self.rejected_path = self.directory / "rejected.jsonl"
        self.durable = durable
        self._thread_lock = threading.RLock()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """This spool, exclusively: other threads and other processes wait."""
        with self._thread_lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(self.directory / "lock", "a+b") as handle:
                if fcntl is not None:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    if fcntl is not None:
                        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def has_pending(self) -> bool:
        """True when entries wait (cheap: one stat; the file is emptied once flushed)."""
        try:
            return self.entries_path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def append(self, entries: Sequence[Entry]) -> None:
        data = "".join(e.dumps() + "\n" for e in entries).encode()
        with self.locked(), open(self.entries_path, "a+b") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size and os.pread(handle.fileno(), 1, size - 1) != b"\n":
                handle.write(b"\n")  # a line torn by a crash stays a line of its own
            handle.write(data)
            handle.flush()
            if self.durable:
                os.fsync(handle.fileno())

    def status(self) -> SpoolStatus:
        with self.locked():
            cursor = self._read_cursor()
            entries, _, broken = self._read(cursor.done, None)
            rejected = 0
            if self.rejected_path.exists():
                with open(self.rejected_path, "rb") as handle:
                    rejected = sum(1 for _ in handle)
            in_flight = 0 if cursor.in_flight is None else len(cursor.in_flight["events"])
        times = [e.at for e in entries]
        return SpoolStatus(
            path=str(self.directory),
            pending=len(entries) + broken,
            oldest=to_datetime(min(times)) if times else None,
            newest=to_datetime(max(times)) if times else None,
            rejected=rejected,
            in_flight=in_flight,
        )

    def flush(self, registry: Registry, *, chunk: int = CHUNK) -> FlushReport:
        """Writes every pending entry to the log, in order; raises ``LogUnavailable``
        (keeping what is left) when the log cannot be reached, and ``ProjectionTimeout``
        when a Kafka projector did not decide a chunk in time (the chunk is in the log:
        the next flush re-sends its events, which the projector recognises)."""
        from modeltrail.core.engine import Engine

        # The embedded log appends any batch in one transaction; Kafka appends a batch to
        # one partition, so there a chunk stops where its entries' partition changes.
        one_partition = not isinstance(registry._require_engine(), Engine)
        flushed = rejected = 0
        with self.locked():
            cursor = self._read_cursor()
            if cursor.in_flight is not None:
                flushed += self._resend(registry, cursor)
            while True:
                entries, ends, broken = self._read(cursor.done, chunk)
                if not entries:
                    if not broken:
                        break
                    self._skip_broken(cursor)  # an unreadable line (a torn write)
                    rejected += 1
                    continue
                blocked = [i for i, e in enumerate(entries) if self._blocked(cursor, e)]
                if blocked and blocked[0] == 0:
                    self._reject(cursor, entries[0], ends[0], "it requires a rejected entry")
                    rejected += 1
                    continue
                if blocked:
                    entries, ends = entries[: blocked[0]], ends[: blocked[0]]
                if one_partition:
                    first = _partition(entries[0])
                    same = next((i for i, e in enumerate(entries) if _partition(e) != first), None)
                    entries, ends = entries[:same], ends[:same]
                try:
                    self._commit(registry, cursor, entries, ends[-1])
                    flushed += len(entries)
                except UNDECIDED:
                    raise
                except ModeltrailError:  # a rule refused one of them: find it
                    cursor.in_flight = None  # refused whole: nothing took effect
                    ok, bad = self._one_by_one(registry, cursor, entries, ends)
                    flushed += ok
                    rejected += bad
            self._truncate_if_drained(cursor)
        return FlushReport(flushed, rejected)

    # -- internals ----------------------------------------------------------------------

    def _one_by_one(
        self, registry: Registry, cursor: _Cursor, entries: list[Entry], ends: list[int]
    ) -> tuple[int, int]:
        ok = bad = 0
        for entry, end in zip(entries, ends, strict=True):
            if self._blocked(cursor, entry):
                self._reject(cursor, entry, end, "it requires a rejected entry")
                bad += 1
                continue
            try:
                self._commit(registry, cursor, [entry], end)
                ok += 1
            except UNDECIDED:
                raise
            except ModeltrailError as exc:
                cursor.in_flight = None
                self._reject(cursor, entry, end, f"{type(exc).__name__}: {exc}")
                bad += 1
        return ok, bad

    @staticmethod
    def _blocked(cursor: _Cursor, entry: Entry) -> bool:
        return entry.requires is not None and str(entry.requires) in cursor.refused

    def _commit(self, registry: Registry, cursor: _Cursor, entries: list[Entry], end: int) -> None:
        def decide(b: Batch) -> None:
            for entry in entries:
                replay(b, entry)
            # Saved before the transaction commits: if its outcome is lost, the next
            # flush re-sends exactly these events instead of sealing new ones.
            cursor.in_flight = {"end": end, "events": [_event_json(e) for e in b.events]}
            self._write_cursor(cursor)

        registry._write(decide)
        cursor.done, cursor.in_flight = end, None
        self._write_cursor(cursor)

    def _resend(self, registry: Registry, cursor: _Cursor) -> int:
        assert cursor.in_flight is not None
        events = [_event_from_json(e) for e in cursor.in_flight["events"]]
        count = len(events)
        try:
            registry._require_engine().append(events)
        except (LogUnavailable, ProjectionTimeout, IntegrityError):
            raise  # still undecided, or the saved events are damaged: kept in flight
        except ModeltrailError:
            # Refused whole (its stream versions were taken, or a rule refuses it now), so
            # nothing of it is in the log: its entries are sealed again, and an entry a
            # rule refuses goes to rejected.jsonl.
            count = 0
        else:
            cursor.done = cursor.in_flight["end"]
        cursor.in_flight = None
        self._write_cursor(cursor)
        return count

    def _reject(self, cursor: _Cursor, entry: Entry, end: int, reason: str) -> None:
        record = {"reason": reason, "entry": json.loads(entry.dumps())}
        with open(self.rejected_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, separators=(",", ":")) + "\n")
        if entry.kind == "open_run":
            cursor.refused.append(str(entry.id))
        cursor.done = end
        self._write_cursor(cursor)

    def _skip_broken(self, cursor: _Cursor) -> None:
        with open(self.entries_path, "rb") as handle:
            handle.seek(cursor.done)
            line = handle.readline()
        with open(self.rejected_path, "a", encoding="utf-8") as out:
            text = line.decode("utf-8", "replace").rstrip("\n")
            out.write(json.dumps({"reason": "unreadable line", "line": text}) + "\n")
        cursor.done += len(line)
        self._write_cursor(cursor)

    def _truncate_if_drained(self, cursor: _Cursor) -> None:
        try:
            size = self.entries_path.stat().st_size
        except FileNotFoundError:
            size = 0
        if cursor.done >= size and cursor.in_flight is None:
            with open(self.entries_path, "wb"):
                pass
            cursor.done = 0
            cursor.refused.clear()
            self._write_cursor(cursor)

    def _read(self, start: int, limit: int | None) -> tuple[list[Entry], list[int], int]:
        """Entries from byte ``start`` (at most ``limit``), the offset after each, and
        whether the first line that could not be read stopped the reading (0 or 1)."""
        entries: list[Entry] = []
        ends: list[int] = []
        if not self.entries_path.exists():
            return entries, ends, 0
        with open(self.entries_path, "rb") as handle:
            handle.seek(start)
            offset = start
            for line in handle:
                if limit is not None and len(entries) >= limit:
                    break
                if not line.endswith(b"\n"):
                    return entries, ends, 1  # torn by a crash mid-write
                try:
                    entry = Entry.loads(line.decode("utf-8"))
                except (ValueError, KeyError, TypeError):
                    return entries, ends, 1
                offset += len(line)
                entries.append(entry)
                ends.append(offset)
        return entries, ends, 0

    def _read_cursor(self) -> _Cursor:
        try:
            raw = json.loads(self.cursor_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return _Cursor()
        return _Cursor(raw["done"], raw.get("in_flight"), list(raw.get("refused", [])))

    def _write_cursor(self, cursor: _Cursor) -> None:
        text = json.dumps(
            {"done": cursor.done, "in_flight": cursor.in_flight, "refused": cursor.refused}
        )
        temporary = self.cursor_path.with_suffix(".tmp")
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.cursor_path)


def _partition(entry: Entry) -> tuple[str, str]:
    """Where an entry's events go on Kafka: an inference batch to its run's inference
    stream, every other command to its namespace."""
    if entry.kind == "inference":
        return ("inference", f"{entry.namespace}/{entry.args['model']}/{entry.args['run']}")
    return ("registry", entry.namespace)


def _event_json(event: Event) -> dict[str, Any]:
    return {
        "event_id": str(event.event_id),
        "type": event.type,
        "stream": event.stream,
        "stream_version": event.stream_version,
        "namespace": event.namespace,
        "recorded_at": event.recorded_at,
        "actor": event.actor,
        **{
            name: base64.b64encode(getattr(event, name)).decode("ascii")
            for name in ("prev_hash", "hash", "schema", "payload")
        },
    }


def _event_from_json(raw: Mapping[str, Any]) -> Event:
    def b(name: str) -> bytes:
        return base64.b64decode(raw[name])

    return Event(
        uuid.UUID(raw["event_id"]),
        raw["type"],
        raw["stream"],
        raw["stream_version"],
        raw["namespace"],
        raw["recorded_at"],
        raw["actor"],
        b("prev_hash"),
        b("hash"),
        b("schema"),
        b("payload"),
    )


# -- the producer side ------------------------------------------------------------------


Check = Callable[[Batch], object]
"""A command's decide, dry-run before an entry is spooled."""


@dataclass(frozen=True)
class Written:
    """An entry written to the log at once."""

    result: Any
    """What its command returned (a run's opening: whether it resumed; a version: its
    ``Target``; None for the others)."""


def offline_check(entry: Entry) -> Check:
    """The entry's own command, as it can be checked before the entry is spooled: a run
    opened offline (``requires``) is not in the projection yet, so a version's run is
    left out of its check."""
    if entry.requires is not None and entry.kind == "version":
        entry = replace(entry, args={**entry.args, "run": None})
    return lambda b: replay(b, entry)


class Outbox:
    """Writes a producer's entries now, or spools them while the log cannot be reached.

    While entries wait in the spool, new ones are spooled behind them (so nothing
    overtakes what was made earlier) and a flush is tried at most every ``retry_s``.
    """

    def __init__(self, registry: Registry, spool: Spool, *, retry_s: float = 2.0) -> None:
        self.registry = registry
        self.spool = spool
        self.retry_s = retry_s
        self._lock = threading.RLock()
        self._next_try = 0.0

    def entry(
        self,
        kind: str,
        namespace: str,
        args: Mapping[str, Any],
        *,
        requires: uuid.UUID | None = None,
        at: int | None = None,
    ) -> Entry:
        """A new entry by this registry's actor, made at ``at`` (default: now)."""
        when = self.now() if at is None else at
        return Entry(kind, namespace, self.registry.actor, when, args, requires=requires)

    def now(self) -> int:
        """The registry's clock (UTC microseconds)."""
        return self.registry._require_engine().clock()

    def submit(self, entry: Entry, *, check: Check | None = None) -> Written | None:
        """Writes the entry and returns its command's result (``Written``), or spools it
        (None) while earlier entries wait in the spool or the log cannot be reached. A
        refusal by a rule (``RunConfigConflict`` …) is raised as usual; before an entry
        is spooled, ``check`` (a command's decide, see ``offline_check``) runs on the
        committed projection, so what can be refused offline still raises here."""
        results = self.submit_many([entry], check=check)
        return None if results is None else Written(results[0])

    def submit_many(
        self, entries: Sequence[Entry], *, check: Check | None = None
    ) -> list[Any] | None:
        """Writes the entries in one write (one transaction; on Kafka one record and one
        wait for its verdict), replaying each in order, and returns their commands'
        results; or spools them all (None), as ``submit`` does. A refusal refuses them
        all. On Kafka one write goes to one partition: the entries' events must too
        (the inference batches of one run, or registry writes of one namespace)."""
        with self._lock:
            if self.spool.has_pending():
                self._try_flush()
                if self.spool.has_pending():
                    self._spool(entries, check)
                    return None
            try:
                return self.registry._write(lambda b: [replay(b, e) for e in entries])
            except LogUnavailable:
                self._spool(entries, check)
                self._next_try = time.monotonic() + self.retry_s
                return None

    def _spool(self, entries: Sequence[Entry], check: Check | None) -> None:
        if check is not None:
            engine = self.registry._require_engine()
            with contextlib.suppress(LogUnavailable):  # unreadable too: decided at flush
                engine.dry_run(check, actor=self.registry.actor)
        self.spool.append(entries)

    def _try_flush(self) -> None:
        if time.monotonic() < self._next_try:
            return
        try:
            self.spool.flush(self.registry)
        except UNDECIDED:
            self._next_try = time.monotonic() + self.retry_s
        except ModeltrailError as exc:  # the spool needs a person; training goes on
            self._next_try = time.monotonic() + self.retry_s
            warnings.warn(
                f"the spool at {self.spool.directory} could not be flushed ({exc}); new "
                "writes wait behind it: see `modeltrail spool status` and `spool flush`",
                RuntimeWarning,
                stacklevel=3,
            )


_OUTBOXES: weakref.WeakKeyDictionary[Registry, Outbox] = weakref.WeakKeyDictionary()
_OUTBOXES_LOCK = threading.Lock()


def spool_of(settings: Settings) -> Spool:
    """The spool of a home: ``<home>/spool`` (``registry.settings``, or the CLI's)."""
    return Spool(Path(settings.home) / "spool", durable=settings.durability == "full")


def outbox_for(registry: Registry) -> Outbox:
    """The one outbox of a registry object (shared by its tracers and runs)."""
    with _OUTBOXES_LOCK:
        outbox = _OUTBOXES.get(registry)
        if outbox is None:
            outbox = Outbox(registry, spool_of(registry.settings))
            _OUTBOXES[registry] = outbox
        return outbox


def open_run(
    registry: Registry,
    model_ref: str,
    name: str,
    *,
    config: Mapping[str, Any] | None = None,
    allow_config_change: bool = False,
    arch_hash: str | None = None,
) -> Run:
    """``registry.run(...)`` through the outbox: when the log cannot be reached, or earlier
    writes still wait in the spool, the opening is spooled and a ``Run`` is returned at
    once (its ``resumed`` is then None: unknown).

    What can be checked offline still is: when the registry can be read, a changed config
    or architecture raises here as it would online; what could not be checked is decided
    when the spool is flushed, and a refused opening takes the run's spooled writes with
    it to ``rejected.jsonl``."""
    from modeltrail.producers.run import Run

    ref = Ref.parse(model_ref).resolved(registry.namespace)
    outbox = outbox_for(registry)
    entry = outbox.entry(
        "open_run",
        ref.ns,
        {
            "model": ref.name,
            "run": name,
            "config": dict(config or {}),
            "allow_config_change": allow_config_change,
            "arch_hash": arch_hash,
        },
    )
    written = outbox.submit(entry, check=offline_check(entry))
    if written is not None:
        return Run(registry, ref.ns, ref.name, name, resumed=written.result)
    return Run(registry, ref.ns, ref.name, name, resumed=None, opened_by=entry.id)
