"""``Replicas``: its checks, the removed keywords, and one state shared by its owners.

``Replicas(...)`` opens no connection, so all of this runs against engines
for hosts that do not exist.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import scoped_session, sessionmaker

from wsgi_sqla import Replicas, SessionMiddleware, transaction
from wsgi_sqla._replicas.route import candidates

PRIMARY = "postgresql+psycopg://x@nowhere/db"
REPLICA = "postgresql+psycopg://x@nowhere-replica/db"


@pytest.fixture
def replica() -> Engine:
    return create_engine(REPLICA)


@pytest.fixture
def db() -> scoped_session[Any]:
    return scoped_session(sessionmaker(bind=create_engine(PRIMARY)))


def app(environ: Any, start_response: Any) -> list[bytes]:
    return []


# -- its checks -----------------------------------------------------------------


@pytest.mark.parametrize("max_lag", [0, -1, 86401, "30", True])
def test_max_lag_is_checked(db: scoped_session[Any], replica: Engine, max_lag: Any) -> None:
    error = TypeError if type(max_lag) in (str, bool) else ValueError
    with pytest.raises(error, match=r"^Replicas: max_lag must be"):
        Replicas({db: [replica]}, max_lag=max_lag)


@pytest.mark.parametrize(
    "backoff", [pytest.param(-1, id="negative"), pytest.param(31, id="over-30")]
)
def test_the_back_off_is_at_most_30_seconds(
    db: scoped_session[Any], replica: Engine, backoff: float
) -> None:
    with pytest.raises(ValueError, match=r"^Replicas: backoff must be between 0 and 30 s"):
        Replicas({db: [replica]}, backoff=backoff)


@pytest.mark.parametrize("max_age", [0, 3601])
def test_token_max_age_is_checked(db: scoped_session[Any], replica: Engine, max_age: int) -> None:
    with pytest.raises(ValueError, match=r"^Replicas: token_max_age must be between 1 and 3600"):
        Replicas({db: [replica]}, token_max_age=max_age)


def test_the_secret_is_checked(db: scoped_session[Any], replica: Engine) -> None:
    with pytest.raises(ValueError, match=r"^Replicas: secret must be at least 16 characters"):
        Replicas({db: [replica]}, secret="short")
    with pytest.raises(TypeError, match=r"^Replicas: secret must be str, bytes or None"):
        Replicas({db: [replica]}, secret=12345678901234567)  # type: ignore[arg-type]
    assert Replicas({db: [replica]}, secret="x" * 16).secret == b"x" * 16


def test_reads_must_be_callable(db: scoped_session[Any], replica: Engine) -> None:
    with pytest.raises(TypeError, match=r"^Replicas: reads must be a callable"):
        Replicas({db: [replica]}, reads="GET")  # type: ignore[arg-type]


def test_replicas_must_be_a_mapping(replica: Engine) -> None:
    with pytest.raises(TypeError, match=r"^Replicas: the replicas must be a mapping"):
        Replicas([replica])  # type: ignore[arg-type]


def test_the_mapping_is_checked(db: scoped_session[Any], replica: Engine) -> None:
    with pytest.raises(TypeError, match=r"^Replicas: the keys must be scoped sessions"):
        Replicas({"db": [replica]})  # type: ignore[dict-item]
    unbound: scoped_session[Any] = scoped_session(sessionmaker())
    with pytest.raises(TypeError, match=r"^Replicas: a scoped session must be bound"):
        Replicas({unbound: [replica]})
    with pytest.raises(TypeError, match=r"^Replicas: replicas\[0\] must be a list"):
        Replicas({db: replica})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"^Replicas: replicas\[0\] names no replica engine"):
        Replicas({db: []})
    with pytest.raises(ValueError, match=r"^Replicas: a replica of .* another kind of database"):
        Replicas({db: [create_engine("mysql+pymysql://x@nowhere/db")]})
    sqlite: scoped_session[Any] = scoped_session(sessionmaker(bind=create_engine("sqlite://")))
    with pytest.raises(ValueError, match=r"^Replicas: replicas are supported on PostgreSQL"):
        Replicas({sqlite: [replica]})


def test_the_mapping_is_positional(db: scoped_session[Any], replica: Engine) -> None:
    with pytest.raises(TypeError):
        Replicas(mapping={db: [replica]})  # type: ignore[call-arg]


# -- removed keywords and mappings ----------------------------------------------

REMOVED = {
    "replica_reads": "replicas=Replicas({db: [...]}, reads=...)",
    "position_secret": "replicas=Replicas({db: [...]}, secret=...)",
    "replica_backoff": "replicas=Replicas({db: [...]}, backoff=...)",
    "position_max_age": "replicas=Replicas({db: [...]}, token_max_age=...)",
    "replica_max_lag": "replicas=Replicas({db: [...]}, max_lag=...)",
}


@pytest.mark.parametrize("keyword", list(REMOVED))
def test_a_removed_middleware_keyword_names_its_new_spelling(
    db: scoped_session[Any], keyword: str
) -> None:
    removed: dict[str, Any] = {keyword: 1}  # what untyped code can still pass
    with pytest.raises(TypeError) as raised:
        SessionMiddleware(app, db, **removed)
    assert (
        str(raised.value) == f"SessionMiddleware: {keyword}= was removed; write {REMOVED[keyword]}"
    )


def owners(db: scoped_session[Any]) -> dict[str, Callable[..., object]]:
    from wsgi_sqla.celery import task_base

    return {
        "SessionMiddleware": lambda **kw: SessionMiddleware(app, db, **kw),
        "transaction()": lambda **kw: transaction(db, **kw),
        "task_base()": lambda **kw: task_base(db, **kw),
    }


@pytest.mark.parametrize("owner", ["SessionMiddleware", "transaction()", "task_base()"])
def test_replica_max_lag_is_removed_everywhere(db: scoped_session[Any], owner: str) -> None:
    with pytest.raises(
        TypeError, match=rf"^{re.escape(owner)}: replica_max_lag= was removed; write "
    ):
        owners(db)[owner](replica_max_lag=30)


@pytest.mark.parametrize("owner", ["SessionMiddleware", "transaction()", "task_base()"])
def test_a_mapping_given_to_replicas_says_to_build_replicas(
    db: scoped_session[Any], replica: Engine, owner: str
) -> None:
    with pytest.raises(TypeError, match=r"write replicas=Replicas\(\{db: \[\.\.\.\]\}\)$"):
        owners(db)[owner](replicas={db: [replica]})
    with pytest.raises(
        TypeError, match=rf"^{re.escape(owner)}: replicas must be a wsgi_sqla.Replicas"
    ):
        owners(db)[owner](replicas=[replica])


def test_an_unknown_keyword_is_still_unexpected(db: scoped_session[Any]) -> None:
    unknown: dict[str, Any] = {"replica": 1}
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'replica'"):
        SessionMiddleware(app, db, **unknown)


def test_a_session_task_setting_replica_max_lag_names_its_new_spelling(
    db: scoped_session[Any],
) -> None:
    from wsgi_sqla.celery import SessionTask

    with pytest.raises(TypeError, match=r"\.Reads: replica_max_lag= was removed; write replicas="):

        class Reads(SessionTask[Any, Any]):
            sessions = (db,)
            replica_max_lag = 5.0

    with pytest.raises(TypeError, match=r"\.Mapped\.replicas: replicas= takes a Replicas"):

        class Mapped(SessionTask[Any, Any]):
            sessions = (db,)
            replicas = {db: [create_engine(REPLICA)]}  # type: ignore[assignment]  # noqa: RUF012


# -- one state, shared ------------------------------------------------------------


def test_a_middleware_without_replicas_keeps_the_plain_request_path(
    db: scoped_session[Any],
) -> None:
    plain = SessionMiddleware(app, db)
    assert type(plain) is SessionMiddleware
    assert plain.replicas is None


def test_owners_given_one_replicas_share_its_state(
    db: scoped_session[Any], replica: Engine
) -> None:
    from wsgi_sqla.celery import task_base

    shared = Replicas({db: [replica]}, backoff=0.5, max_lag=2)
    middleware = SessionMiddleware(app, db, replicas=shared)
    task = task_base(db, replicas=shared)
    assert middleware.replicas is shared and task.replicas is shared
    (state,) = shared.primaries[0].replicas
    state.fail(ConnectionError("down"))
    # What the middleware's requests learned, the blocks and tasks see: the same object.
    assert candidates(shared.primaries[0].replicas, 0.0, shared.turns) == []
    assert (state.backoff, state.max_lag) == (0.5, 2)


def test_a_transaction_block_keeps_the_back_off(db: scoped_session[Any], replica: Engine) -> None:
    shared = Replicas({db: [replica]}, backoff=0.5)
    (state,) = shared.primaries[0].replicas
    state.fail(ConnectionError("down"))
    down_until = state.down_until
    for _ in range(3):
        with transaction(db, replicas=shared):
            pass  # no query: no connection
    assert (state.backoff, state.down_until) == (0.5, down_until)


def test_two_replicas_over_one_engine_keep_their_own_settings(
    db: scoped_session[Any], replica: Engine
) -> None:
    strict = Replicas({db: [replica]}, backoff=1, max_lag=1)
    lenient = Replicas({db: [replica]}, backoff=20, max_lag=60)
    (tight,) = strict.primaries[0].replicas
    (loose,) = lenient.primaries[0].replicas
    assert (tight.backoff, tight.max_lag) == (1, 1)  # not the last built's
    assert (loose.backoff, loose.max_lag) == (20, 60)  # not the tightest's


def test_type_checkers_reject_the_removed_keywords(tmp_path: Path) -> None:
    mypy_api = pytest.importorskip("mypy.api")
    old = tmp_path / "old_spelling.py"
    old.write_text(
        "from typing import Any\n"
        "from sqlalchemy.orm import scoped_session\n"
        "from wsgi_sqla import SessionMiddleware, transaction\n"
        "from wsgi_sqla.celery import task_base\n\n\n"
        "def build(app: Any, db: scoped_session[Any]) -> None:\n"
        "    SessionMiddleware(app, db, position_secret='x' * 16)\n"
        "    transaction(db, replica_max_lag=1.0)\n"
        "    task_base(db, replica_max_lag=1.0)\n"
    )
    stdout, stderr, status = mypy_api.run(["--strict", "--no-error-summary", str(old)])
    assert status == 1, stdout + stderr
    assert stdout.count('expected "Never"') == 3, stdout
