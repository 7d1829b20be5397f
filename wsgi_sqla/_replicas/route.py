"""One unit of work's route: a replica or the primary, chosen once, at the first query.

A unit of work is routed once, never per statement: either every session of
the ``Replicas`` runs on one replica, in a read-only transaction, or every one
runs on its primary. Splitting a unit across servers would let it read its own
writes from a server that does not have them yet.

The choice is made when a session first needs a connection (``get_bind``), so
a unit that never touches the database costs nothing, and a replica that
cannot be reached is skipped before the application sees it. Among the
healthy replicas within the lag bound (:func:`candidates`, rotated so units
spread over them), a unit that carries a position token takes one already
seen at that position, or asks at most one replica for its position, and
goes to the primary when none has it. On the primary, the route notes which
statements write, so that a commit of a write is followed by reading the
primary's position for the next token.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, event, exc
from sqlalchemy.orm import Session

from .._http import succeeded
from .dialects import is_write
from .health import Replica
from .tokens import POSITION_HEADER, Token

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse

    from .router import Primary, Replicas

__all__ = ["Route", "candidates"]

logger = logging.getLogger("wsgi_sqla")


def candidates(replicas: Sequence[Replica], now: float, turns: Iterator[int]) -> list[Replica]:
    """The healthy replicas within their lag bound, rotated by the next turn."""
    healthy = [replica for replica in replicas if replica.healthy(now) and replica.within(now)]
    if len(healthy) > 1:
        turn = next(turns) % len(healthy)
        healthy = healthy[turn:] + healthy[:turn]
    return healthy


class Route:
    """Where one unit of work runs; chosen when its first session needs a connection."""

    __slots__ = (
        "committed",
        "connections",
        "did_commit",
        "on_primary",
        "replica_ok",
        "replicas",
        "token",
        "token_drop",
        "what",
        "wrote",
    )

    def __init__(
        self, replicas: Replicas, replica_ok: bool, token: Token | None, what: str = "unit of work"
    ) -> None:
        self.replicas: Replicas = replicas
        #: how errors name the unit: "request", "transaction() block", "task".
        self.what: str = what
        self.replica_ok: bool = replica_ok
        self.token: Token | None = token
        #: whether a token this request carried can be dropped (every replica has it).
        self.token_drop: bool = False
        #: the primaries' positions after the unit's last commit of a write, if any.
        self.committed: tuple[str, ...] | None = None
        #: whether the unit's sessions committed (a read-only unit too).
        self.did_commit: bool = False
        #: per primary index: the connection the unit runs on.
        self.connections: dict[int, Connection] = {}
        #: per primary index: whether the connection is on the primary.
        self.on_primary: dict[int, bool] = {}
        #: primary indexes that saw a write statement.
        self.wrote: set[int] = set()

    # -- hooks ----------------------------------------------------------------

    def attach(self, session: Session, primary: Primary) -> None:
        """A session of ``primary`` was created for this unit: bind it through the route."""
        session.get_bind = functools.partial(self._bind, primary)  # type: ignore[method-assign]
        # The replica check may have begun the connection's transaction; the
        # session then makes it its own (commit, rollback) instead of nesting.
        session.join_transaction_mode = "control_fully"

    def replica_for(self, engine: Engine) -> Replica | None:
        """The state of the replica over ``engine`` (for the engine's error listener)."""
        for primary in self.replicas.primaries:
            for replica in primary.replicas:
                if replica.engine is engine:
                    return replica
        return None

    def use_primary(self) -> None:
        if self.connections and not all(self.on_primary.values()):
            raise RuntimeError(
                "use_primary(): this request already ran a query on a read replica; call "
                "use_primary() in the view before its first query"
            )
        self.replica_ok = False

    def read_positions(self) -> None:
        """After a commit: the primaries' positions, if the unit wrote (:attr:`committed`)."""
        self.did_commit = True
        if not self.wrote:
            return
        positions = []
        for primary in self.replicas.primaries:
            position = None
            if primary.index in self.wrote:
                connection = self.connections.get(primary.index)
                if connection is not None and not connection.closed:
                    try:
                        position = primary.dialect.read_primary(connection)
                    except Exception:
                        logger.exception("reading the primary's position after COMMIT failed")
            positions.append(position or "")
        self.wrote.clear()
        self.committed = tuple(positions) if any(positions) else None

    def respond(self, status: str, headers: list[tuple[str, str]]) -> None:
        """The request committed with ``status``: add the token headers it calls for.

        A token for a committed write answered below 400; a Max-Age=0 cookie
        and an empty header when the token it carried is no longer needed.
        """
        if not succeeded(status):
            return
        tokens = self.replicas.tokens
        if self.committed is not None:
            value = tokens.encode(self.committed)
            headers.append(("Set-Cookie", tokens.cookie(value, tokens.max_age)))
            headers.append((POSITION_HEADER, value))
        elif self.token is not None and self.token_drop:
            headers.append(("Set-Cookie", tokens.cookie("", 0)))
            headers.append((POSITION_HEADER, ""))

    def start_response(
        self,
        server_start_response: StartResponse,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: Any = None,
    ) -> Callable[[bytes], object]:
        """The server's ``start_response``, after :meth:`respond` if the unit committed."""
        if self.did_commit:
            self.respond(status, headers)
        return server_start_response(status, headers, exc_info)

    def release(self) -> None:
        """Return the unit's connections to their pools (after its sessions were closed)."""
        connections, self.connections = self.connections, {}
        for connection in connections.values():
            try:
                connection.close()
            except Exception:
                logger.exception("closing a routed connection failed; it is discarded")

    # -- choosing -------------------------------------------------------------

    def _bind(self, primary: Primary, *args: Any, **kw: Any) -> Connection:
        connection = self.connections.get(primary.index)
        if connection is None or connection.closed:
            connection = self._choose(primary)
            self.connections[primary.index] = connection
        return connection

    def _choose(self, primary: Primary) -> Connection:
        if self.replica_ok:
            connection = self._replica(primary)
            if connection is not None:
                self.on_primary[primary.index] = False
                return connection
        connection = primary.engine.connect()
        self.on_primary[primary.index] = True
        index = primary.index

        @event.listens_for(connection, "before_cursor_execute")
        def saw(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
            if is_write(statement):
                self.wrote.add(index)

        return connection

    def _replica(self, primary: Primary) -> Connection | None:
        replicas = self.replicas
        wanted = self.token.positions[primary.index] if self.token is not None else ""
        dialect = primary.dialect
        # In turn order: a replica already seen at the position needs no check;
        # otherwise at most one replica is asked for its position, and one seen
        # caught up (or the primary) takes the request if it is behind. Asking
        # the replicas in turn is also how the token learns it can be dropped.
        checked = False
        chosen: Connection | None = None
        for replica in candidates(primary.replicas, time.monotonic(), replicas.turns):
            needs_check = bool(wanted) and not dialect.reached(replica.position, wanted)
            if needs_check and checked:
                continue
            try:
                connection = replica.engine.connect()
            except exc.SQLAlchemyError as error:
                replica.fail(error)
                continue
            if needs_check:
                checked = True
                try:
                    value = connection.exec_driver_sql(dialect.replica_position_sql).scalar()
                except exc.SQLAlchemyError as error:
                    connection.close()
                    replica.fail(error)
                    continue
                replica.observe(dialect.parse_replica(value))
                if not dialect.reached(replica.position, wanted):
                    connection.close()
                    continue
            replica.recovered()
            chosen = connection
            break
        if self.token is not None and chosen is not None:
            # Dropped only once EVERY replica was seen at the position: after one
            # caught-up replica, another may still lag (GitLab #413203).
            self.token_drop = all(
                not position or all(p.dialect.reached(r.position, position) for r in p.replicas)
                for p, position in zip(replicas.primaries, self.token.positions, strict=True)
            )
        return chosen
