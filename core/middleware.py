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
