"""The OpenAPI schema tells the truth about errors: every operation documents the error
envelope for each status the API can answer with (drf-spectacular postprocessing hook)."""

ERROR_STATUSES = {
    "400": "Invalid input: `fields` names each offending field (dotted for nested ones).",
    "401": "No API key, or one that is invalid, revoked or expired.",
    "403": "The key's scope does not cover the operation (`forbidden_scope`), or a quota is reached (`quota_exceeded`).",
    "404": "Not found in the caller's organization (another organization's object answers the same).",
    "405": "Method not allowed.",
    "409": "Conflicts with the object's state (e.g. `agent_deleting`).",
    "413": "Too large: a document, batch, body or field beyond its limit.",
    "415": "Unsupported media type.",
    "429": "Rate limited (`rate_limited`): `fields` names the scope and the limit; retry after `Retry-After` seconds.",
    "502": "The embedding provider answered something unusable (`embedding_failed`).",
    "503": "The embedding provider is unavailable (`embedding_unavailable`); retry after `Retry-After` seconds.",
}
_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait before retrying."}}
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "fields"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "fields": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
            },
        }
    },
}
_METHODS = {"get", "put", "post", "patch", "delete"}


def error_responses(result, generator, request, public):
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for item in result.get("paths", {}).values():
        for method, operation in item.items():
            if method not in _METHODS:
                continue
            responses = operation.setdefault("responses", {})
            for status, description in ERROR_STATUSES.items():
                response = {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
                if status in ("429", "503"):
                    response["headers"] = _RETRY_AFTER
                responses.setdefault(status, response)
    return result
