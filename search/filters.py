"""What a search request may ask besides its text: filters on chunk metadata (checked here:
400 naming the field and operator) and the operators of a question (quoted phrases,
-words)."""

import json
import re
from datetime import date, datetime

from django.conf import settings

from tenants.errors import invalid

FILTER_OPERATORS = ("$eq", "$in", "$gte", "$lte")


def filters_sql(filters: dict) -> tuple[str, list]:
    """SQL conditions on chunk `c` for the request's filters, {org} where the organization
    goes (core/db.py binds it); 400 naming the field (and operator) for anything not supported."""
    clauses, params = [], []
    if len(filters) > settings.SEARCH_MAX_FILTER_FIELDS:
        raise invalid("filters", f"At most {settings.SEARCH_MAX_FILTER_FIELDS} fields.")
    for field, condition in filters.items():
        if field == "document_keys":
            if not isinstance(condition, list) or not all(isinstance(k, str) and "\x00" not in k for k in condition) or not condition:
                raise invalid("filters.document_keys", "Must be a non-empty list of document keys.")
            if len(condition) > settings.SEARCH_MAX_FILTER_VALUES:
                raise invalid("filters.document_keys", f"At most {settings.SEARCH_MAX_FILTER_VALUES} keys.")
            # Index document_org_agent_key_uniq through document_id.
            clauses.append(
                "c.document_id IN (SELECT d.id FROM knowledge_document d WHERE d.organization_id = {org} AND d.key = ANY(%s))"
            )
            params.append(condition)
            continue
        if not isinstance(field, str) or len(field) > 100 or "\x00" in field:
            raise invalid("filters", "Filter fields must be metadata field names.")
        if not isinstance(condition, dict):
            condition = {"$eq": condition}
        if not condition:
            raise invalid(f"filters.{field}", "Empty condition.")
        for op, value in condition.items():
            name = f"filters.{field}.{op}"
            if op not in FILTER_OPERATORS:
                raise invalid(name, f"Unknown operator; use one of {', '.join(FILTER_OPERATORS)}.")
            if op == "$eq":
                _scalar(name, value)
                # GIN chunk_metadata_gin (jsonb_path_ops) serves containment.
                clauses.append("c.metadata @> %s::jsonb")
                params.append(_json({field: value}))
            elif op == "$in":
                if not isinstance(value, list) or not value:
                    raise invalid(name, "Must be a non-empty list.")
                if len(value) > settings.SEARCH_MAX_FILTER_VALUES:
                    raise invalid(name, f"At most {settings.SEARCH_MAX_FILTER_VALUES} values.")
                for item in value:
                    _scalar(name, item)
                clauses.append("(" + " OR ".join(["c.metadata @> %s::jsonb"] * len(value)) + ")")
                params += [_json({field: item}) for item in value]
            else:
                sign = ">=" if op == "$gte" else "<="
                if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                    raise invalid(name, "Must be a number or an ISO date.")
                if isinstance(value, str):
                    value = value.upper()  # "t" and "z" are ISO 8601 too; stored dates use "T"
                    if len(value) > 40 or not _is_iso_date(value):
                        raise invalid(name, "Must be a number or an ISO date (YYYY-MM-DD[THH:MM:SS]).")
                    # ISO dates compare correctly as text.
                    clauses.append(f"(jsonb_typeof(c.metadata -> %s) = 'string' AND c.metadata ->> %s {sign} %s)")
                    params += [field, field, value]
                else:
                    clauses.append(f"(jsonb_typeof(c.metadata -> %s) = 'number' AND (c.metadata -> %s)::numeric {sign} %s)")
                    params += [field, field, value]
    return (" AND " + " AND ".join(clauses) if clauses else ""), params


def _scalar(name, value):
    if not isinstance(value, (str, int, float, bool)) and value is not None:
        raise invalid(name, "Must be a string, number, boolean or null.")
    if isinstance(value, str) and len(value) > settings.SEARCH_MAX_FILTER_VALUE_CHARS:
        raise invalid(name, f"At most {settings.SEARCH_MAX_FILTER_VALUE_CHARS} characters.")
    if isinstance(value, str) and "\x00" in value:
        raise invalid(name, "Must not contain NUL characters.")


def _json(value) -> str:
    return json.dumps(value)


def _is_iso_date(value: str) -> bool:
    for parse in (date.fromisoformat, datetime.fromisoformat):
        try:
            parse(value)
            return True
        except ValueError:
            continue
    return False


def query_operators(query: str) -> int:
    """How many quoted phrases and -words the question holds: each is a condition of its
    own in the keyword statement."""
    return len(PHRASE.findall(query)) + len(EXCLUDED.findall(PHRASE.sub(" ", query)))


PHRASE = re.compile(r'"([^"]*)"?')
EXCLUDED = re.compile(r"(?:^|(?<=\s))-(\w\S*)")
