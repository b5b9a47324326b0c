"""Content negotiation for an API that only speaks JSON."""

from rest_framework.negotiation import DefaultContentNegotiation

# What clients send when they take JSON: no Accept header, anything, or JSON itself.
_TAKES_JSON = frozenset((None, "*/*", "application/json"))


class JSONNegotiation(DefaultContentNegotiation):
    """DRF's negotiation answers these requests with the first renderer (JSON) and
    application/json after parsing and ranking the Accept header against every renderer;
    here they get that answer directly, and every other Accept header (or a `format`
    parameter) goes through DRF's, 406 included."""

    def select_renderer(self, request, renderers, format_suffix=None):
        if (
            not format_suffix
            and renderers
            and renderers[0].media_type == "application/json"
            and request.META.get("HTTP_ACCEPT") in _TAKES_JSON
            and self.settings.URL_FORMAT_OVERRIDE not in request.query_params
        ):
            return renderers[0], "application/json"
        return super().select_renderer(request, renderers, format_suffix)
