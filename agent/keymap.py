"""The agent-managed key map (``link: {map: SIDE}``): which target row a source row is.

Neither table holds the other's key, so the pairs live in ``<state_schema>.key_map`` on
*both* systems. A row of the table on system X pairs one X row with its counterpart:

    ident        "<entity>:<the other system's key>"   primary key: how the pipeline
                                                       writing into X finds X's row
    local_ident  "<entity>:<X's key>"                  indexed: how the pipeline reading
                                                       X finds the counterpart
    entity, remote_key, local_key (keys as text), created_at

Exactly once without twins, also under kill -9:

* The pipeline that INSERTs a row records the pair in its target's map in the same
  transaction (the key the target generated, or the target key the row was given).
* After that COMMIT, the pair is sent to the other pipeline (a remedy), which copies it into
  its own target's map, so both systems hold every pair (SIDE's copy is the reference named
  in the configuration, the other one a mirror). The copy is also stored in the remedies
  outbox in the INSERT's transaction (:mod:`agent.remedies`), so a crash before the other
  pipeline's commit delays it until that pipeline starts again, but does not lose it.
* Until then, a pipeline that finds no pair in its target's map
  also looks in its *source's* map (a plain read on a connection of its own), where the
  row's creator committed it before the row could be changed at all, and copies what it
  finds in its own transaction. The next change of a row created on the other side is
  therefore never mistaken for a new row.
* A propagated delete removes the pair in the deleting transaction and (after COMMIT) from
  the other system's copy.

Lookups are batched: one read of the target's map (and at most one of the source's) per
batch of changes, for the keys the in-memory cache (:class:`agent.rules.Judge`) lacks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from agent import rules
from agent.conflicts import Remedy
from agent.errors import AgentError, TransientError
from agent.events import Row, RowChange, TableId
from agent.ports import Sink, Write, WriteKind
from agent.routes import LinkKind, Route, RouteTable

log = logging.getLogger(__name__)

TABLE = "key_map"
"""The map's table name in the state schema (created by ``cdc-agent setup``)."""

REASON = "map"
"""The :attr:`Remedy.reason` of a pair copied to (or removed from) the other system."""


def ident(entity: str, key: object) -> str:
    """How a map row is found: the entity and a key as text."""
    return f"{entity}:{key}"


def pair_values(entity: str, local_key: object, remote_key: object) -> dict[str, object]:
    """The map row (on the system holding ``local_key``) without its primary key."""
    return {"local_ident": ident(entity, local_key), "entity": entity,
            "remote_key": str(remote_key), "local_key": str(local_key)}


class PeerRows(Protocol):
    """What the map needs of a reader of the source system (see agent.transfer.Rows)."""

    def open(self) -> None: ...
    def lookup(self, table: TableId, column: str, keys: Sequence[object],
               columns: Sequence[str], *, lock: bool) -> list[dict[str, object]]: ...
    def close(self) -> None: ...


class PeerMap:
    """Reads the source system's key map (plain reads, one connection kept open)."""

    def __init__(self, rows: Callable[[], PeerRows], state_schema: str) -> None:
        self._factory = rows
        self._rows: PeerRows | None = None
        self._table = TableId(state_schema, TABLE)

    def __call__(self, local_idents: Sequence[str]) -> dict[str, str]:
        """``local_ident`` -> the other system's key, for the pairs the source's map holds."""
        try:
            if self._rows is None:
                rows = self._factory()
                rows.open()
                self._rows = rows
            found = self._rows.lookup(self._table, "local_ident", list(local_idents),
                                      ["local_ident", "remote_key"], lock=False)
        except AgentError:
            self.close()
            raise
        except Exception as error:  # driver errors: the connection is retried next time
            self.close()
            raise TransientError(f"reading the source's key map: {type(error).__name__}: "
                                 f"{error}") from error
        return {str(r["local_ident"]): str(r["remote_key"]) for r in found}

    def close(self) -> None:
        rows, self._rows = self._rows, None
        if rows is not None:
            try:
                rows.close()
            except Exception:  # closing a broken connection: nothing left to do
                log.debug("closing the peer key-map reader failed", exc_info=True)


Peer = Callable[[Sequence[str]], Mapping[str, str]]


class KeyMap:
    """One direction's side of the key map: resolving, recording and removing pairs."""

    def __init__(self, direction: str, routes: RouteTable, judge: rules.Judge,
                 state_schema: str, peer: Peer | None = None) -> None:
        self.direction = direction
        self.judge = judge
        self.peer = peer
        self.table = TableId(state_schema, TABLE)
        self.routes = {r.entity: r for r in routes.routes if r.link is LinkKind.MAP}
        self.tables = {r.target_table for r in self.routes.values()}
        """Target tables located through the map (their lookups use keys as text)."""
        self._held: list[Remedy] = []
        self._held_by: object = None

    @property
    def active(self) -> bool:
        return bool(self.routes)

    # -- resolving ----------------------------------------------------------------------

    def resolve(self, sink: Sink, routes: RouteTable, changes: Sequence[RowChange]) -> None:
        """Load into the cache the pairs of the changes' source keys it does not hold."""
        wanted: dict[str, tuple[str, object]] = {}
        for change in changes:
            for route in routes.routes_for(change.table):
                if route.link is not LinkKind.MAP:
                    continue
                key = rules.source_row(change).get(route.source_key)
                if key is not None and self.judge.link_of(route.entity, key) is None:
                    wanted[ident(route.entity, key)] = (route.entity, key)
        if not wanted:
            return
        found = sink.fetch(self.table, "ident", list(wanted), ["local_key"])
        for key_ident, values in found.items():
            entity, key = wanted.pop(str(key_ident))
            self.judge.remember_link(entity, key, str(values["local_key"]))
        if wanted and self.peer is not None:
            self._from_peer(sink, wanted)

    def _from_peer(self, sink: Sink, wanted: Mapping[str, tuple[str, object]]) -> None:
        """Pairs the source's map holds (rows the other direction created): copy them."""
        copies = []
        for local_ident, target_key in self.peer(list(wanted)).items() if self.peer else ():
            entity, key = wanted[local_ident]
            self.judge.remember_link(entity, key, target_key)
            copies.append(Write(self.table, WriteKind.UPSERT, {"ident": local_ident},
                                pair_values(entity, target_key, key), {}, entity, str(key)))
        if copies:
            log.info("%s: %d key pair(s) copied from the source's key map", self.direction,
                     len(copies))
            sink.write(copies)

    # -- recording and removing ---------------------------------------------------------

    def settle(self, sink: Sink, result: rules.Plan,
               generated: Mapping[int, object]) -> list[Remedy]:
        """Record the pairs of the rows this batch created and drop those it deleted; returns
        the copies for the other system's map (also held until :meth:`release`)."""
        writes: list[Write] = []
        copies: list[Remedy] = []
        for index, route, row in result.links:
            if route.link is LinkKind.MAP:
                writes += self._created(route, row, result.writes[index],
                                        generated.get(index), copies)
        for write in result.writes:
            mapped = self.routes.get(write.entity)
            if (write.kind is WriteKind.DELETE and mapped is not None
                    and write.table == mapped.target_table):
                writes += self._deleted(mapped, write, copies)
        if writes:
            sink.write(writes)
        if copies:
            self._hold(sink, copies)
        return copies

    def _created(self, route: Route, row: Row, insert: Write, generated: object,
                 copies: list[Remedy]) -> list[Write]:
        source_key = row.get(route.source_key)
        # A key the target generated, or the one the INSERT gave it (a mapped field).
        target_key = generated if generated is not None else insert.values.get(route.target_key)
        if target_key is None:
            self.judge.forget_link(route.entity, source_key)
            log.warning("%s: %s created without a key to map (no generated key and no value "
                        "for %s)", self.direction, route.entity, route.target_key)
            return []
        self.judge.remember_link(route.entity, source_key, str(target_key))
        copies.append(Remedy(self.table, ("ident", ident(route.entity, target_key)),
                             pair_values(route.entity, source_key, target_key), {},
                             route.entity, REASON))
        return [Write(self.table, WriteKind.UPSERT, {"ident": ident(route.entity, source_key)},
                      pair_values(route.entity, target_key, source_key), {}, route.entity,
                      str(source_key))]

    def _deleted(self, route: Route, delete: Write, copies: list[Remedy]) -> list[Write]:
        source_key = delete.source_key
        target_key = delete.key.get(route.locator)
        self.judge.forget_link(route.entity, source_key)
        copies.append(Remedy(self.table, ("ident", ident(route.entity, target_key)), {}, {},
                             route.entity, REASON))
        return [Write(self.table, WriteKind.DELETE, {"ident": ident(route.entity, source_key)},
                      {}, {}, route.entity, source_key)]

    # -- the other system's copy --------------------------------------------------------

    def _hold(self, sink: Sink, copies: list[Remedy]) -> None:
        """Keep copies for the other system until this transaction commits (a rolled-back
        pair must never reach it): :meth:`release` after the COMMIT on ``sink``."""
        if self._held_by is not sink:
            self._held, self._held_by = [], sink  # a new session: the old ones rolled back
        self._held += copies

    def release(self, sink: Sink) -> list[Remedy]:
        """The copies held for the transaction just committed on ``sink``."""
        held = self._held if self._held_by is sink else []
        self._held = []
        return held

    def copy_write(self, remedy: Remedy) -> Write:
        """The write that applies the other direction's pair (or its removal) to this
        direction's target map; the cache learns it too."""
        _, key = remedy.key
        entity = remedy.entity
        remote = str(key)[len(entity) + 1:]  # the ident is "<entity>:<key>"
        if remedy.values:
            self.judge.remember_link(entity, remote, str(remedy.values["local_key"]))
            return Write(self.table, WriteKind.UPSERT, {"ident": key}, remedy.values, {},
                         entity, remote)
        self.judge.forget_link(entity, remote)
        return Write(self.table, WriteKind.DELETE, {"ident": key}, {}, {}, entity, remote)
