"""core.middleware.BrowserOnly: the browser's middleware (sessions, the logged-in user,
messages) runs for the admin and the console, never for the API."""

import pytest
from django.http import HttpResponse

from core.middleware import AuthenticationMiddleware, MessageMiddleware, SessionMiddleware


def _chain(seen):
    def view(request):
        seen.append((hasattr(request, "session"), hasattr(request, "user"), hasattr(request, "_messages")))
        return HttpResponse()

    return SessionMiddleware(AuthenticationMiddleware(MessageMiddleware(view)))


@pytest.mark.django_db
@pytest.mark.parametrize("path, expected", [
    ("/api/v1/agents", (False, False, False)),
    ("/api/v1/search", (False, False, False)),
    ("/admin/", (True, True, True)),
    ("/console/", (True, True, True)),
    ("/apiary", (True, True, True)),  # not under /api/
])  # fmt: skip
def test_only_paths_outside_the_api_get_a_session_a_user_and_messages(rf, path, expected):
    seen = []
    response = _chain(seen)(rf.get(path))
    assert seen == [expected]
    assert "Cookie" not in response.get("Vary", "")


def test_an_api_response_sets_no_cookie_and_the_admin_still_logs_in(client, client_a, admin_user):
    api = client_a.get("/api/v1/agents")
    assert api.status_code == 200 and not api.cookies
    client.force_login(admin_user)
    assert client.get("/admin/").status_code == 200
