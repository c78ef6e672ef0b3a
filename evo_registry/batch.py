"""Group commit: one writer per process stores the reports of many requests in one transaction.

A durable commit costs a WAL flush (~10 ms on this machine's disk) and each statement a round trip
to the database; one transaction per report spent both on every report.  Here the request threads
hand their checked report (``store.Pending``) to the process's writer and wait; the writer takes
everything that queued up while it was busy (at most ``max_batch``), stores it with
``Store.ingest_batch`` in one transaction, and wakes each waiter only after COMMIT returned.  So an
acknowledgement still means "durably stored", de-duplication and the rate limit are decided under
the devices' row locks as before (items in queue order), and nothing waits on a timer: a lone
report is written at once, and batches grow only when requests arrive faster than commits.

When a batch fails, nobody is acknowledged.  A database that is down fails every waiter (the app
answers 503); any other error is retried one item per transaction, so one report that trips a bug
fails alone.  A deadlock or serialization failure (PostgreSQL) retries the batch.

The writer is a thread because both drivers block (sqlite3, and psycopg's pipeline mode, which
sends a batch's writes with COMMIT); the event loop hands it a report with ``submit_async`` and is
woken once per batch.  A connection that the database closed (a restart) is replaced, and the
batch tried once more on the new one, before anyone is answered 503.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from evo_registry.store import Limits, Outcome, Pending, Store

LOG = logging.getLogger(__name__)

Writer = Callable[[Sequence[Pending], Limits], list[Outcome]]


def _retryable(exc: BaseException) -> bool:
    """Return True for PostgreSQL's transient conflicts (deadlock, serialization failure)."""
    try:
        from psycopg import errors
    except ImportError:
        return False
    return isinstance(exc, errors.DeadlockDetected | errors.SerializationFailure)


def _database_down(exc: BaseException) -> bool:
    import sqlite3

    from evo_registry.errors import DatabaseError

    if isinstance(exc, DatabaseError | sqlite3.OperationalError):
        return True
    try:
        import psycopg
    except ImportError:
        return False
    return isinstance(exc, psycopg.OperationalError) and not _retryable(exc)


@dataclass
class _Slot:
    item: Pending
    done: threading.Event = field(default_factory=threading.Event)
    outcome: Outcome | None = None
    error: BaseException | None = None
    # For a waiter in an asyncio loop (the app's report route): its future, resolved there.
    future: asyncio.Future[Outcome] | None = None


def _resolve(slots: list[_Slot]) -> None:
    """Hand the outcomes to the asyncio waiters (runs in their loop)."""
    for slot in slots:
        fut = slot.future
        if fut is None or fut.done():
            continue
        if slot.error is not None:
            fut.set_exception(slot.error)
        elif slot.outcome is not None:
            fut.set_result(slot.outcome)
        else:
            fut.set_exception(AssertionError("woken without an outcome"))


class GroupCommit:
    """The writer of one process (started on the first report)."""

    def __init__(self, store: Store, limits: Limits, max_batch: int = 128,
                 write: Writer | None = None) -> None:
        self.limits = limits
        self.max_batch = max_batch
        self._write: Writer = write or store.ingest_batch
        self._cond = threading.Condition()
        self._queue: list[_Slot] = []
        self._thread: threading.Thread | None = None
        self._closing = False
        # For the bench and the tests: how many batches, how many reports.
        self.batches = 0
        self.items = 0

    def submit(self, item: Pending) -> Outcome:
        """Store one report with whatever else is waiting; return its outcome after COMMIT."""
        slot = _Slot(item)
        self._enqueue(slot)
        slot.done.wait()
        if slot.error is not None:
            raise slot.error
        if slot.outcome is None:
            raise AssertionError("woken without an outcome")
        return slot.outcome

    def submit_async(self, item: Pending) -> asyncio.Future[Outcome]:
        """Queue one report from an asyncio loop; the future resolves after COMMIT."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._enqueue(_Slot(item, future=future))
        return future

    def _enqueue(self, slot: _Slot) -> None:
        with self._cond:
            self._closing = False  # a report after close(): serve it (tests reuse an app)
            self._queue.append(slot)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="group-commit",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def _wake(self, batch: list[_Slot]) -> None:
        """Wake the waiters of a batch: threads one by one, each asyncio loop once."""
        loops: dict[asyncio.AbstractEventLoop, list[_Slot]] = {}
        for slot in batch:
            if slot.future is not None:
                loops.setdefault(slot.future.get_loop(), []).append(slot)
            slot.done.set()
        for loop, slots in loops.items():
            try:
                loop.call_soon_threadsafe(_resolve, slots)
            except RuntimeError:  # that loop is closed: nobody waits any more
                LOG.warning("%s outcomes for a closed event loop dropped", len(slots))

    def close(self) -> None:
        """Stop the writer once the queue is empty (the reports queued are still stored)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(30)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    if self._closing:
                        self._thread = None
                        return
                    self._cond.wait()
                batch = self._queue[:self.max_batch]
                del self._queue[:self.max_batch]
            try:
                self._store(batch)
            except BaseException as exc:  # never leave a waiter hanging
                LOG.exception("group commit writer failed")
                left = [slot for slot in batch if not slot.done.is_set()]
                for slot in left:
                    slot.error = exc
                self._wake(left)

    def _store(self, batch: list[_Slot]) -> None:
        items = [s.item for s in batch]
        for attempt in range(3):
            try:
                outcomes = self._write(items, self.limits)
            except Exception as exc:
                if _retryable(exc) and attempt < 2:
                    LOG.info("batch of %s reports hit a transient conflict (%s): retrying",
                             len(items), exc)
                    continue
                if _database_down(exc) and attempt == 0:
                    # The connection the database closed is dropped (db.Database); a database
                    # that is back answers the new one.  A COMMIT whose answer was lost is no
                    # harm: its reports come back as duplicates, stored once.
                    LOG.info("batch of %s reports: database unavailable (%s): trying once "
                             "more on a new connection", len(items), exc)
                    continue
                if _database_down(exc) or len(batch) == 1:
                    for slot in batch:
                        slot.error = exc
                    self._wake(batch)
                    return
                LOG.warning("batch of %s reports failed (%s): storing them one by one",
                            len(batch), exc)
                for slot in batch:
                    self._store([slot])
                return
            break
        self.batches += 1
        self.items += len(batch)
        for slot, outcome in zip(batch, outcomes, strict=True):
            slot.outcome = outcome
        self._wake(batch)
