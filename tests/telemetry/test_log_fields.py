"""Decision and failure log records carry the unit's facts as fields, for JSON formatters."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from support import Boom, Models, answering, serve

from wsgi_sqla import RejectedWorkError, SessionMiddleware, transaction

from .work import swallowing

FIELDS = ("outcome", "reason", "owner", "status", "duration")


class JsonFormatter(logging.Formatter):
    """What a JSON log formatter does: the message, and every extra field as it is."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {"message": record.getMessage(), **{f: getattr(record, f, "-") for f in FIELDS}}
        )


def logged(caplog: pytest.LogCaptureFixture, level: int) -> list[dict[str, Any]]:
    formatter = JsonFormatter()
    return [
        json.loads(formatter.format(r))
        for r in caplog.records
        if r.name == "wsgi_sqla" and r.levelno == level
    ]


@pytest.mark.parametrize(
    ("status", "outcome"), [("201 Created", "committed"), ("422 Unprocessable", "rolled_back")]
)
def test_decision_record_carries_outcome_reason_owner_status_and_duration(
    caplog: pytest.LogCaptureFixture, models: Models, status: str, outcome: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="wsgi_sqla")
    work = lambda: models.User(name="ann").save()  # noqa: E731

    serve(SessionMiddleware(answering(status, work), models.User.__session__))

    [record] = logged(caplog, logging.DEBUG)
    duration = record.pop("duration")
    assert record == {
        "message": f"{outcome.replace('_', ' ')} / (status): {status}",
        "outcome": outcome,
        "reason": "status",
        "owner": "request",
        "status": status,
    }
    assert isinstance(duration, float)
    assert duration >= 0


def test_record_of_a_raising_view_says_exception(
    caplog: pytest.LogCaptureFixture, models: Models
) -> None:
    caplog.set_level(logging.DEBUG, logger="wsgi_sqla")

    def work() -> None:
        raise Boom("the view failed")

    serve(SessionMiddleware(answering("200 OK", work), models.User.__session__), path="/x")

    [record] = logged(caplog, logging.DEBUG)
    assert record["outcome"] == "rolled_back"
    assert record["reason"] == "exception"
    assert record["owner"] == "request"


def test_refused_commit_record_carries_the_facts(
    caplog: pytest.LogCaptureFixture, models: Models
) -> None:
    caplog.set_level(logging.ERROR, logger="wsgi_sqla")
    session = models.User.__session__

    serve(SessionMiddleware(answering("200 OK", swallowing(models)), session))

    refusal = next(r for r in logged(caplog, logging.ERROR) if "not committed" in r["message"])
    assert {f: refusal[f] for f in ("outcome", "reason", "owner")} == {
        "outcome": "rolled_back",
        "reason": "rejected",
        "owner": "request",
    }
    assert "status" in refusal
    assert "duration" in refusal


def test_refused_block_record_names_the_transaction_owner(
    caplog: pytest.LogCaptureFixture, models: Models
) -> None:
    caplog.set_level(logging.ERROR, logger="wsgi_sqla")
    session = models.User.__session__

    with pytest.raises(RejectedWorkError), transaction(session):
        swallowing(models)()

    refusal = next(r for r in logged(caplog, logging.ERROR) if "not committed" in r["message"])
    assert (refusal["outcome"], refusal["reason"], refusal["owner"]) == (
        "rolled_back",
        "rejected",
        "transaction",
    )
