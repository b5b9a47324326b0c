"""Bounds on free-form JSON from tenants (document metadata)."""

import json


def json_shape(value) -> tuple[int, int]:
    """(depth, keys) of a JSON value: how deeply its objects and arrays nest, and how many
    object keys it holds in all. Iterative: a value nested deeper than Python's recursion
    limit is measured, not crashed on."""
    depth, keys, stack = 0, 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            depth, keys = max(depth, level), keys + len(item)
            stack.extend((child, level + 1) for child in item.values())
        elif isinstance(item, list):
            depth = max(depth, level)
            stack.extend((child, level + 1) for child in item)
    return depth, keys


def json_size(value) -> int:
    """Bytes of the value as Lore stores it (compact JSON, UTF-8)."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def contains_nul(value) -> bool:
    """Whether a JSON value holds U+0000 in a string or a key: PostgreSQL stores it in
    neither text nor jsonb, so it is refused at the door (a 400, not a 500 from the
    database). Iterative, like json_shape."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            if any("\x00" in key for key in item):
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
