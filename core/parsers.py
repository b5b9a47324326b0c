"""JSON bodies parsed with a bound on nesting: Python's parser raises RecursionError (not
ValueError, which DRF turns into a 400) on input nested about a thousand deep, so without
this a few kilobytes of brackets answer 500."""

from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise ParseError("JSON parse error - nested too deeply") from exc
