from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.urls import reverse

from core import db


class AdminUnscoped:
    """The admin is cross-tenant by nature: operators see every organization. Its requests
    run in one transaction as the role that bypasses row-level security (core/db.py);
    services it calls for one organization (an upload, a search) declare theirs inside."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.prefix = None

    def __call__(self, request):
        if self.prefix is None:
            self.prefix = reverse("admin:index")
        if not request.path.startswith(self.prefix):
            return self.get_response(request)
        with db.unscoped("the admin: operators see every organization"):
            return self.get_response(request)


API_PREFIX = "/api/"


class BrowserOnly:
    """For middleware only the browser's pages use (the admin, the console: sessions, the
    logged-in user, messages): an API request skips it. It authenticates with a bearer key
    and has no cookies to read or set; through these it paid for a session store, a lazy
    user and message storage it never touched (docs/benchmarks.md, "The request's floor
    by layer"). Subclasses of Django's own, so that the admin's checks for them hold.
    (CSRF's stays Django's: `check --deploy` looks for it by name; API views are exempt.)"""

    def __call__(self, request):
        if request.path_info.startswith(API_PREFIX):
            return self.get_response(request)
        return super().__call__(request)


class SessionMiddleware(BrowserOnly, sessions.SessionMiddleware):
    pass


class AuthenticationMiddleware(BrowserOnly, auth.AuthenticationMiddleware):
    pass


class MessageMiddleware(BrowserOnly, messages.MessageMiddleware):
    pass
