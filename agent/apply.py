"""Applying a buffer of source changes inside the open target transaction.

Plans the changes with the rules, writes them with the conflict records, turns keys the
target generated into write-backs for the source row, and applies the corrections (remedies)
the other direction asked for. Remedies travel between the two pipelines through an
:class:`Exchange`: a direction can only write into its own target, so a revert of the source
is done by the pipeline that writes into the source.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property

from agent import rules
from agent.codec import encode_value
from agent.conflicts import Conflict, Remedy
from agent.errors import PermanentError, RowError, SchemaError
from agent.events import Op, RowChange, TableId
from agent.keymap import REASON as MAP_REASON
from agent.keymap import KeyMap, Peer
from agent.ports import Sink, Write, WriteKind
from agent.quarantine import Poison, Quarantine
from agent.remedies import RemedyStore, outbox_write
from agent.routes import LinkKind, Route, RouteTable
from agent.schema_pause import Pauses, fetch_drift, target_drift
from agent.staging import Scheduler, change_of

log = logging.getLogger(__name__)

Buffered = tuple[RowChange, datetime, str]
"""A change, its (effective) source commit time and its transaction's position."""


@dataclass
class Ahead:
    """A batch planned ahead of its transaction (:meth:`Applier.plan_ahead`)."""

    plan: rules.Plan
    intercepted: rules.Plan
    """What the batch's push requests and filtered changes counted before planning."""

    @property
    def simple(self) -> bool:
        """Its writes are all it does: they may go out on their own (no generated keys to
        link, no conflicts to record, no remedies, no deferred changes)."""
        p = self.plan
        return not (p.remedies or p.conflicts or p.links or p.deferred)

    def counts(self) -> rules.Plan:
        """The batch's counters, as :meth:`Applier.apply` returns them."""
        return rules.Plan(writes=self.plan.writes, conflicts=self.plan.conflicts,
                          skipped=self.intercepted.skipped + self.plan.skipped)


class Exchange:
    """Remedies waiting for the pipeline that writes into their table's system."""

    def __init__(self) -> None:
        self._inboxes: dict[str, queue.SimpleQueue[Remedy]] = {}

    def _inbox(self, direction: str) -> queue.SimpleQueue[Remedy]:
        return self._inboxes.setdefault(direction, queue.SimpleQueue())

    def send(self, from_direction: str, remedy: Remedy) -> None:
        """A remedy found by ``from_direction`` (it targets that direction's source)."""
        source, target = from_direction.split("_to_", 1)
        self._inbox(f"{target}_to_{source}").put(remedy)

    def deliver(self, direction: str, remedies: Sequence[Remedy]) -> None:
        """Remedies for ``direction`` read back from the outbox."""
        for remedy in remedies:
            self._inbox(direction).put(remedy)

    def waiting(self, direction: str) -> bool:
        return not self._inbox(direction).empty()

    def take(self, direction: str, limit: int = 1000) -> list[Remedy]:
        inbox, taken = self._inbox(direction), list[Remedy]()
        while len(taken) < limit:
            try:
                taken.append(inbox.get_nowait())
            except queue.Empty:
                break
        return taken


class Applier:
    """Writes one direction's planned changes through its sink."""

    def __init__(self, direction: str, routes: RouteTable, judge: rules.Judge,
                 exchange: Exchange, state_schema: str,
                 quarantine: Quarantine | None = None, scheduler: Scheduler | None = None,
                 requests: Callable[[Mapping[str, object]], None] | None = None,
                 outbox: RemedyStore | None = None,
                 pauses: Pauses | None = None,
                 peer: Peer | None = None) -> None:
        self.direction = direction
        self.routes = routes
        self.judge = judge
        self.exchange = exchange
        self.conflicts_table = TableId(state_schema, "conflicts")
        self.links_table = TableId(state_schema, "links")
        self.quarantine = quarantine or Quarantine(direction, state_schema)
        self.scheduler = scheduler
        """Schedules of the direction's entities (None: everything is continuous)."""
        self.requests = requests
        """Called with each pending push request read from the source's push_requests."""
        self.requests_table = TableId(state_schema, "push_requests")
        self.state_schema = state_schema
        self.outbox = outbox
        """Remedies for this direction that other directions stored durably (None: none)."""
        self._handled: list[str] = []
        source, target = direction.split("_to_", 1)
        self._reverse = f"{target}_to_{source}"
        self._target = target
        self.pauses = pauses or Pauses(direction, state_schema)
        """Entities paused by a schema change (agent.schema_pause)."""
        self.keymap = KeyMap(direction, routes, judge, state_schema, peer)
        """Entities linked through the agent's key map (``link: {map: SIDE}``)."""
        self._lock_cache: dict[tuple[TableId, str], bool] = {}

    def apply(self, sink: Sink, buffer: Sequence[Buffered]) -> rules.Plan:
        """Plan and write ``buffer``; returns the (last round's) plan for the counters.

        Push requests go to :attr:`requests`; changes of ``manual`` entities are dropped and
        those of cron-scheduled ones staged (see :mod:`agent.staging`). Raises
        :class:`Poison` when a write fails for a row reason (the caller rolls back).
        """
        total = rules.Plan()
        if self.scheduler is not None or self.requests is not None:
            buffer = self._intercept(sink, buffer, total)
        return self._apply(sink, buffer, total)

    def _intercept(self, sink: Sink, buffer: Sequence[Buffered],
                   total: rules.Plan) -> list[Buffered]:
        """Take out push requests and the changes of entities that do not flow continuously."""
        requests = self.requests_table
        flowing = [item for item in buffer if item[0].table != requests]
        if len(flowing) != len(buffer):
            for item in buffer:
                if item[0].table == requests:
                    self._request(item[0])
        if self.scheduler is None:  # every entity flows continuously
            return flowing
        kept: list[Buffered] = []
        staged: list[tuple[Route, RowChange, datetime | None]] = []
        for item in flowing:
            change = item[0]
            routes = self.routes.routes_for(change.table)
            mode = self.scheduler.mode(routes[0].entity) if routes else ""
            if mode == "manual":  # counted with the filtered changes (a metrics label)
                total.skipped["filter"] += 1
            elif mode == "cron":
                staged.append((routes[0], change, item[1]))
            else:
                kept.append(item)
        if staged:
            assert self.scheduler is not None
            self.write(sink, self.scheduler.stage(sink, staged))
        return kept

    def _request(self, change: RowChange) -> None:
        row = change.new
        if self.requests is not None and change.op is not Op.DELETE and row is not None \
                and row.get("status") == "pending":
            self.requests(row)

    def apply_window(self, sink: Sink) -> int:
        """Apply, in the open transaction, the staged records whose window has come, and
        delete them; returns how many records were applied."""
        if self.scheduler is None:
            return 0
        count = 0
        for entity in self.scheduler.due():
            route = next(r for r in self.routes.routes if r.entity == entity)
            staged, deletes = self.scheduler.take(sink, entity)
            now = datetime.now(UTC)
            buffer = [(change_of(s, route.source_table), s.ts or now, "staged") for s in staged]
            self._apply(sink, buffer, rules.Plan())
            if deletes:
                self.write(sink, deletes)
            self.scheduler.applied(entity)
            count += len(staged)
            log.info("%s: applied %d staged %s records at their window", self.direction,
                     len(staged), entity)
        return count

    def _apply(self, sink: Sink, buffer: Sequence[Buffered], total: rules.Plan) -> rules.Plan:
        letters, pending = self._divert(buffer)
        if letters:
            self.write(sink, letters)
            total.skipped["quarantined"] += len(letters)
        while pending:
            pending = self._carry_out(sink, self._plan(sink, pending), total)
        return total

    def _carry_out(self, sink: Sink, result: rules.Plan, total: rules.Plan) -> list[rules.Change]:
        """Write a round's plan; returns the changes deferred to the next round."""
        writes = result.writes + [self._record(c) for c in result.conflicts]
        if writes:
            self.write(sink, writes)
        self._link(sink, result)
        self._send(sink, result.remedies)
        total.skipped.update(result.skipped)
        total.conflicts += result.conflicts
        total.writes += result.writes
        return result.deferred

    def plan_ahead(self, reads: Sink, buffer: Sequence[Buffered],
                   behind: rules.Written | None) -> Ahead | None:
        """Plan ``buffer`` without the target transaction: rows read on ``reads`` (plain
        reads), the rows of a batch still being written (``behind``) as it leaves them.

        None when the buffer needs the open transaction (locking reads, dead letters,
        schedules, the key map); then nothing was read and nothing was decided.
        """
        # Decided before any work per change, and before push requests are taken out (a
        # batch given back to its transaction hands them over there, once).
        if (self.scheduler is not None or self.keymap.active or self.quarantine.active
                or self.quarantine.isolating or self._reads_locked(buffer)
                or self.pauses.affects(self.routes, buffer)):
            return None
        needed = rules.lookups(self.routes, [change for change, _, _ in buffer], self.judge)
        total = rules.Plan()
        if self.requests is not None:  # with no scheduler nothing is staged (no write)
            buffer = self._intercept(reads, buffer, total)
        changes: list[rules.Change] = [(change, ts) for change, ts, _ in buffer]
        return Ahead(self._plan(reads, changes, needed, behind), total)

    def finish(self, sink: Sink, ahead: Ahead) -> rules.Plan:
        """Carry out, in the open transaction, a plan made ahead that needs more than its
        writes (links, conflicts, remedies, deferred changes); returns the batch's total."""
        total = ahead.intercepted
        pending = self._carry_out(sink, ahead.plan, total)
        while pending:
            pending = self._carry_out(sink, self._plan(sink, pending), total)
        return total

    def _divert(self, buffer: Sequence[Buffered]) -> tuple[list[Write], list[rules.Change]]:
        """Split off the changes of blocked keys and of paused entities (a mapped column
        is gone): they become dead letters, in order."""
        if not self.quarantine.active and not self.pauses.affects(self.routes, buffer):
            return [], [(change, ts) for change, ts, _ in buffer]
        letters: list[Write] = []
        pending: list[rules.Change] = []
        for change, ts, position in buffer:
            record = self._record_key(change)
            if record is not None and self.pauses.parks(self.routes, change):
                letters.append(self.pauses.letter(*record, change, ts, position))
            elif record is not None and self.quarantine.blocks(*record):
                letters.append(self.quarantine.letter(*record, change, ts, position))
            else:
                pending.append((change, ts))
        return letters, pending

    def _record_key(self, change: RowChange) -> tuple[str, str] | None:
        for route in self.routes.routes_for(change.table):
            return route.entity, str(rules.source_row(change).get(route.source_key))
        return None

    def write(self, sink: Sink, writes: Sequence[Write]) -> None:
        """Write, naming the culprit of a row error (one write at a time when isolating)."""
        batches = [[w] for w in writes] if self.quarantine.isolating else [list(writes)]
        for batch in batches:
            try:
                sink.write(batch)
            except RowError as error:
                index = getattr(error, "index", None)
                culprit = batch[index] if index is not None else (
                    batch[0] if len(batch) == 1 else None)
                if culprit is not None and self._stops(culprit):
                    raise PermanentError(f"{culprit.entity}: {error} (on_error: stop)") from error
                record = (culprit.entity, culprit.source_key) if culprit is not None else None
                raise Poison(record, error) from error
            except SchemaError as error:  # a mapped target column is gone: pause the entity
                index = getattr(error, "index", None)
                drift = target_drift(self.routes, batch, batch[index] if index is not None
                                     else None, error)
                if drift is None:
                    raise
                raise drift from error

    def _stops(self, write: Write) -> bool:
        return any(r.entity == write.entity and r.on_error == "stop" for r in self.routes.routes)

    def _plan(self, sink: Sink, changes: Sequence[rules.Change],
              needed: Mapping[rules.LookupKey, set[object]] | None = None,
              behind: rules.Written | None = None) -> rules.Plan:
        """Read the rows the rules need (``needed``, when the caller has worked it out
        already; those of the batch ``behind`` as it leaves them) and plan ``changes``."""
        plain = [c[0] if isinstance(c, tuple) else c for c in changes]
        self._known_links(sink, plain)
        if self.keymap.active:
            self.keymap.resolve(sink, self.routes, plain)
        if needed is None:
            needed = rules.lookups(self.routes, plain, self.judge)
        view = self._view(sink, needed, behind)
        result = rules.plan(self.routes, changes, view, self.judge)
        log.debug("%s: %d changes -> %d writes", self.direction, len(changes),
                  len(result.writes))
        return result

    def _view(self, sink: Sink, needed: Mapping[rules.LookupKey, set[object]],
              behind: rules.Written | None = None) -> rules.TargetView:
        """The target rows the rules need, read once; those the batch behind writes are
        taken as it leaves them."""
        view = rules.TargetView()
        for (table, locator, columns), keys in needed.items():
            asked = list(keys)
            try:
                found = sink.fetch(table, locator, asked, columns,
                                   lock=self._locks(table, locator))
            except SchemaError as error:
                drift = fetch_drift(self.routes, table, error)
                if drift is None:
                    raise
                raise drift from error
            if table in self.keymap.tables:  # keys from the map are text
                found = {**found, **{str(k): v for k, v in found.items()}}
            view.load(table, locator, found, asked, behind)
        return view

    def _reads_locked(self, buffer: Sequence[Buffered]) -> bool:
        """Whether a route of a table that ``buffer`` changes reads its rows with a lock."""
        if not self._some_locked:  # the usual answer, without a look at each change
            return False
        return any(self._locks(route.target_table, route.locator)
                   for table in {change.table for change, _, _ in buffer}
                   for route in self.routes.routes_for(table))

    @cached_property
    def _some_locked(self) -> bool:
        return any(self._locks(r.target_table, r.locator) for r in self.routes.routes)

    def _locks(self, table: TableId, locator: str) -> bool:
        """Whether the rules' read of ``table``'s rows must lock them.

        It must when a route writing there has a field that is not a plain source-owned one:
        ownership and conflict rules decide on the target's values, so an application
        write must not slip in between the read and the agent's write. When every field
        goes from the source as it is, the outcome is the source's value whatever the
        target held: a write that slips in is a change of a field the source owns, which
        the reverse direction handles (revert or keep) either way; the plain read only
        saves the no-op write. It spares the server a row lock (and its WAL) per row.
        """
        locks = self._lock_cache.get((table, locator))
        if locks is None:
            locks = self._lock_cache[(table, locator)] = any(
                not route.plain or route.link is LinkKind.MAP
                for route in self.routes.routes
                if route.target_table == table and route.locator == locator)
        return locks

    def _known_links(self, sink: Sink, changes: Sequence[RowChange]) -> None:
        """Keys generated earlier for source rows that still show no link (the write-back may
        have been lost in a crash): found in the target's links table, so no twin is made."""
        if not any(r.link is LinkKind.SOURCE_HOLDS_KEY for r in self.routes.routes):
            return  # only a key the target generates is linked that way
        asked = {f"{route.entity}:{row.get(route.source_key)}": (route.entity, row)
                 for change in changes for route in self.routes.routes_for(change.table)
                 if route.link is LinkKind.SOURCE_HOLDS_KEY
                 and (row := rules.source_row(change)) and route.locate(row) is None
                 and self.judge.link_of(route.entity, row.get(route.source_key)) is None}
        if not asked:
            return
        found = sink.fetch(self.links_table, "ident", list(asked), ["target_key"])
        for ident, values in found.items():
            entity, row = asked[str(ident)]
            route = next(r for r in self.routes.routes if r.entity == entity)
            self.judge.remember_link(entity, row.get(route.source_key), values["target_key"])

    def _record(self, c: Conflict) -> Write:
        """The conflicts-table row for a conflict (values encoded exactly, never logged)."""
        return Write(self.conflicts_table, WriteKind.INSERT, {}, {
            "entity": c.entity, "record": c.record, "field": c.field, "direction": c.direction,
            "source_value": encode_value(c.source_value),
            "target_value": encode_value(c.target_value), "winner": c.winner, "rule": c.rule,
            "resolution": c.resolution, "status": "open" if c.winner == "none" else "closed",
            "source_commit_ts": c.source_ts}, {}, c.entity, c.record)

    def _link(self, sink: Sink, result: rules.Plan) -> None:
        """Keys the target generated go back into the source rows that caused them."""
        if not result.links and not self.keymap.active:
            return
        generated = sink.generated_keys() if result.links else {}
        if self.keymap.active:
            copies = self.keymap.settle(sink, result, generated)
            if copies:  # durable with the pair; in memory only after the COMMIT (release)
                sink.write([outbox_write(self.state_schema, self._reverse, r) for r in copies])
        for index, route, row in result.links:
            if route.link is LinkKind.MAP:
                continue
            source_key = row.get(route.source_key)
            target_key = generated.get(index)
            if target_key is None:
                self.judge.forget_link(route.entity, source_key)
                continue
            self.judge.remember_link(route.entity, source_key, target_key)
            sink.write([Write(self.links_table, WriteKind.UPSERT,
                              {"ident": f"{route.entity}:{source_key}"},
                              {"entity": route.entity, "source_key": str(source_key),
                               "target_key": str(target_key)}, {}, route.entity, str(source_key))])
            self._send(sink, [Remedy(
                route.source_table, (route.source_key, source_key),
                {route.link_column: target_key}, {route.link_column: None}, route.entity, "link")])

    def _send(self, sink: Sink, remedies: Sequence[Remedy]) -> None:
        """Remedies go to the reverse pipeline in memory, and into the outbox in the open
        transaction, so a crash before the reverse pipeline's commit loses none."""
        if not remedies:
            return
        stored = [r for r in remedies if r.stored]
        if stored:
            sink.write([outbox_write(self.state_schema, self._reverse, r) for r in stored])
        for remedy in remedies:
            self.exchange.send(self.direction, remedy)

    def committed(self, sink: Sink) -> None:
        """The transaction on ``sink`` committed: its key pairs may now reach the other
        system's map."""
        for remedy in self.keymap.release(sink):
            self.exchange.send(self.direction, remedy)

    def remedy_writes(self, sink: Sink, remedies: Sequence[Remedy]) -> list[Write]:
        """Writes for the remedies whose rows still hold what they expect."""
        writes: list[Write] = []
        # Earlier remedies of this call are written after the loop: later ones of the same
        # row must see what those will have set (a chain of corrections, oldest first).
        ahead: dict[tuple[TableId, str, object], dict[str, object]] = {}
        for remedy in remedies:
            if remedy.stored:  # the others have no outbox row to mark done
                self._handled.append(remedy.ident)
            if remedy.reason == MAP_REASON:  # a key pair: no row to expect anything of
                writes.append(self.keymap.copy_write(remedy))
                continue
            column, key = remedy.key
            expected = list(remedy.expect)
            current = sink.fetch(remedy.table, column, [key], expected).get(key)
            row = (remedy.table, column, key)
            if current is not None and row in ahead:
                current = {**current, **ahead[row]}
            if current is None or not all(
                    rules.same_value(current.get(c), v) for c, v in remedy.expect.items()):
                log.info("%s: %s of %s skipped: the row changed meanwhile", self.direction,
                         remedy.reason, remedy.entity)
                continue
            writes.append(Write(remedy.table, WriteKind.UPDATE, {column: key}, remedy.values,
                                {}, remedy.entity, str(key)))
            ahead.setdefault(row, {}).update(remedy.values)
        return writes

    def settling(self) -> list[tuple[str, str, str, object]]:
        """Conflicting fields, quiet now, to check again in this direction's target."""
        return self.judge.recent.settled(self._target)

    def settle_writes(self, sink: Sink, items: Sequence[tuple[str, str, str, object]]
                      ) -> list[Write]:
        """Writes that give quiet conflicting fields the newest known change's value, where
        the target holds one known to be older (see :func:`agent.rules.settle_write`)."""
        writes: list[Write] = []
        for entity, _record, name, key in items:
            route = next((r for r in self.routes.routes if r.entity == entity), None)
            f = next((x for x in route.fields if x.name == name), None) if route else None
            if route is None or f is None:
                continue
            current = sink.fetch(route.target_table, route.locator, [key],
                                 [f.target_column]).get(key)
            write = None if current is None else rules.settle_write(route, f, key, current,
                                                                    self.judge)
            if write is not None:
                writes.append(write)
        return writes

    def recover_remedies(self, *, force: bool = False) -> None:
        """Queue the remedies waiting in the outbox (at session start, and now and then:
        `push` in another process leaves its write-backs there)."""
        if force:
            self._handled.clear()  # handled in a transaction that was rolled back
        if self.outbox is None or not (force or self.outbox.due()):
            return
        try:
            pending = self.outbox.pending()
        except Exception as error:  # the system is down: the reader says so; read again later
            log.warning("%s: could not read stored remedies (%s); trying again later",
                        self.direction, type(error).__name__)
            return
        if pending:
            log.info("%s: %d stored remedies to apply", self.direction, len(pending))
            self.exchange.deliver(self.direction, pending)

    def settle_remedies(self) -> None:
        """After the commit: the remedies handled in it are done (applied, or skipped
        because their row had changed)."""
        if not self._handled:
            return
        handled, self._handled = self._handled, []
        if self.outbox is None:
            return
        try:
            self.outbox.settle(handled)
        except Exception as error:  # they stay pending: handled again later, as a no-op
            log.warning("%s: could not mark %d remedies done (%s); they will be checked "
                        "again", self.direction, len(handled), type(error).__name__)
