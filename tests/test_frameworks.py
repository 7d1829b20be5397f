"""Flask and Bottle idioms that hand-written hooks get wrong: streamed bodies."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import bottle
import flask
import webtest
from support import Models, Probe

from wsgi_sqla import SessionMiddleware


def test_flask_streamed_template_lazy_loads_and_its_writes_commit_at_close(
    session: Any, models: Models, probe: Probe
) -> None:
    app = flask.Flask(__name__)

    @app.get("/stream")
    def stream() -> flask.Response:
        user = models.User(name="ann").save()
        models.Post(title="first", author=user).save()

        @flask.stream_with_context
        def rows() -> Iterator[str]:
            for post in user.posts:  # lazy load after the decision committed
                yield f"{user.name}:{post.title};"
            models.User(name="written-while-streaming").save()

        return flask.Response(rows(), mimetype="text/plain")

    app.wsgi_app = SessionMiddleware(app.wsgi_app, session)  # type: ignore[method-assign]
    assert webtest.TestApp(app).get("/stream").text == "ann:first;"
    assert probe.names() == ["ann", "written-while-streaming"]
    assert probe.checked_out() == 0


def test_flask_abort_rolls_back(session: Any, models: Models, probe: Probe) -> None:
    app = flask.Flask(__name__)

    @app.post("/")
    def create() -> str:
        models.User(name="ann").save()
        flask.abort(403)

    app.wsgi_app = SessionMiddleware(app.wsgi_app, session)  # type: ignore[method-assign]
    webtest.TestApp(app).post("/", status=403)
    assert probe.names() == []


def test_bottle_generator_body_commits_after_streaming(
    session: Any, models: Models, probe: Probe
) -> None:
    app = bottle.Bottle()

    @app.get("/")
    def listing() -> Iterator[str]:
        models.User(name="ann").save()
        yield "one;"
        models.User(name="tail").save()
        yield "two;"

    assert webtest.TestApp(SessionMiddleware(app, session)).get("/").text == "one;two;"
    assert probe.names() == ["ann", "tail"]
