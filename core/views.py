"""Answers outside any API view that still speak the API's error envelope."""

from django.http import JsonResponse
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt

from core.middleware import API_PREFIX


@csrf_exempt  # an API path: no session, no CSRF token; a POST to it is a 404 like any other
def api_not_found(request, *args, **kwargs):
    """Every path under /api/v1/ that matches no endpoint (a malformed id included): JSON,
    not Django's HTML page, whatever DEBUG says."""
    return JsonResponse({"error": {"code": "not_found", "message": "No such endpoint.", "fields": {}}}, status=404)


def server_error(request, *args, **kwargs):
    """Django's 500 for an exception no view handled (a database that cannot be reached
    before the view runs, say): under /api/ the API's error envelope, elsewhere Django's
    own page."""
    if request.path.startswith(API_PREFIX):
        return JsonResponse(
            {"error": {"code": "server_error", "message": "The server failed to answer this request; it was logged.", "fields": {}}},
            status=500,
        )
    return defaults.server_error(request, *args, **kwargs)
