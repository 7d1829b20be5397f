from typing import Any

import webtest

from wsgi_sqla import SessionMiddleware


def test_smoke(session: Any, models: Any, probe: Any) -> None:
    def app(environ: Any, start_response: Any) -> Any:
        models.User(name="a").save()
        start_response("200 OK", [])
        return [b"ok"]

    webtest.TestApp(SessionMiddleware(app, session)).get("/")
    assert probe.names() == ["a"]
    assert probe.checked_out() == 0
