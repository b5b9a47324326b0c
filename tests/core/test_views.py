import pytest
from django.test import Client, override_settings
from django.urls import path

from core.views import server_error


def _boom(request):
    raise RuntimeError("a failure no view handled")


urlpatterns = [path("api/v1/boom", _boom), path("admin/boom", _boom)]
handler500 = server_error


@pytest.fixture
def crashing_urls():
    with override_settings(ROOT_URLCONF=__name__, DEBUG=False):
        yield Client(raise_request_exception=False)


def test_an_unhandled_failure_under_the_api_answers_the_error_envelope(crashing_urls):
    response = crashing_urls.get("/api/v1/boom")
    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "server_error"


def test_an_unhandled_failure_elsewhere_is_django_s_page(crashing_urls):
    response = crashing_urls.get("/admin/boom")
    assert response.status_code == 500
    assert response["Content-Type"].startswith("text/html")


def test_an_unknown_path_under_the_api_is_a_json_404(client, db):
    response = client.post("/api/v1/deletions/null,null/retry")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
