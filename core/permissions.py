"""API keys carry a scope; each operation needs one (read < write < admin)."""

from rest_framework.permissions import BasePermission

from core.errors import Forbidden

LEVELS = {"read": 0, "write": 1, "admin": 2}


class KeyScopePermission(BasePermission):
    """Admits a key whose scope covers what the view asks for the request's method
    (`OrgAPIView.key_scope_for`); refuses with 403 `forbidden_scope` otherwise. Runs after
    authentication and before the body is parsed."""

    def has_permission(self, request, view) -> bool:
        needed = view.key_scope_for(request.method)
        held = request.user.api_key.scope
        if LEVELS[held] < LEVELS[needed]:
            raise Forbidden(
                "forbidden_scope", f"This operation needs an API key with the '{needed}' scope; this key has '{held}'.",
                {"scope": [f"needs '{needed}'"]},
            )  # fmt: skip
        return True
