"""The export file format, version 1: gzip-compressed JSON Lines, one object a line.

    {"format": "lore-export", "version": 1, "lore_version": ..., "organization": slug,
     "created_at": ISO time, "embedding": {"provider", "model", "dimensions"},
     "vectors": bool, "vector_encoding": "float16-le-base64" | null}
    {"type": "agent", "slug", "name", "config": {chunk_size, ..., keyword_weight}}
    {"type": "document", "key", "title", "source", "content_type", "metadata", "status", "text"}
    {"type": "chunk", "document", "key", "ordinal", "text", "metadata", "vector"}   # with vectors
    ... more documents (each followed by its chunks), more agents ...
    {"type": "end", "agents": n, "documents": n, "chunks": n}

Grouped so an import streams it: a document's chunks follow it (ordinals 0, 1, ...), an
agent's documents follow it (by key), and a document is complete when the next line is
not one of its chunks. `vector` is the chunk's stored halfvec, exactly: its float16 values,
little-endian, base64 (a quarter of the size of a list of decimal floats). `text` is the
document's normalized text; `"text_rebuilt": true` marks one ingested before Lore kept
texts, rebuilt from its sections or chunks (its chunks may come out differently). The
gzip stream may have several members (the export writes one per committed batch); readers
of concatenated gzip (Python's gzip, zcat) see one stream. The `end` line tells a complete
file from a truncated one.

The reader checks every line as it goes and raises ExportFileError naming the line.
"""

import base64
import gzip
import json
import zlib
from dataclasses import dataclass, field

import numpy as np

FORMAT, VERSION = "lore-export", 1
VECTOR_ENCODING = "float16-le-base64"
DOCUMENT_FIELDS = ("key", "title", "source", "content_type", "metadata", "status", "text")
CHUNK_FIELDS = ("document", "key", "ordinal", "text", "metadata")


class ExportFileError(Exception):
    """A file that is not a complete, well-formed export; `line` is where reading stopped."""

    def __init__(self, line: int, message: str):
        super().__init__(f"line {line}: {message}")
        self.line, self.message = line, message


def line(obj: dict) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def vector_encode(halfvec: np.ndarray) -> str:
    return base64.b64encode(np.asarray(halfvec, dtype="<f2").tobytes()).decode("ascii")


def vector_decode(text, dimensions: int) -> np.ndarray:
    """float16 values of `dimensions` length; ValueError otherwise."""
    if not isinstance(text, str):
        raise ValueError("vector: must be a base64 string")
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as exc:
        raise ValueError("vector: not base64") from exc
    if len(raw) != 2 * dimensions:
        raise ValueError(f"vector: {len(raw) // 2} dimensions, the header says {dimensions}")
    values = np.frombuffer(raw, dtype="<f2")
    if not np.isfinite(values).all():
        raise ValueError("vector: holds a value that is not finite")
    return values


# --- Reading -----------------------------------------------------------------------------


@dataclass
class Header:
    organization: str
    provider: str
    model: str
    dimensions: int
    vectors: bool
    raw: dict


@dataclass
class AgentItem:
    line: int
    slug: str
    name: str
    config: dict


@dataclass
class DocumentItem:
    line: int
    agent: str
    fields: dict
    chunks: list[dict] = field(default_factory=list)  # text, vector (float16) each, in order


@dataclass
class End:
    line: int
    counts: dict


def _require(obj: dict, names, n: int, what: str, types: dict) -> None:
    for name in names:
        if name not in obj:
            raise ExportFileError(n, f"{what} without the field '{name}'")
        kind = types.get(name, str)
        value = obj[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ExportFileError(n, f"{what}: '{name}' must be {_KIND_NAMES.get(kind, kind)}")


_KIND_NAMES = {str: "a string", int: "an integer", dict: "an object", bool: "true or false"}
_DOCUMENT_TYPES = {"metadata": dict}
_CHUNK_TYPES = {"ordinal": int, "metadata": dict}


class ExportReader:
    """Streams an export: `header`, then `items()` yields AgentItem, DocumentItem (each
    with all its chunks, once the next line shows it is complete) and finally End. Any
    defect raises ExportFileError with the line number; a document still being read when
    it is raised is never yielded."""

    def __init__(self, fileobj):
        self._gzip = gzip.GzipFile(fileobj=fileobj, mode="rb")
        self.n = 0
        first = self._next()
        if first is None:
            raise ExportFileError(1, "empty file: not a Lore export")
        self.header = self._header(first)

    def _next(self) -> dict | None:
        """The next line as an object, None at the end of the stream."""
        try:
            raw = self._gzip.readline()
        except (gzip.BadGzipFile, zlib.error, OSError) as exc:
            raise ExportFileError(self.n + 1, f"not a readable gzip file ({exc})") from exc
        except EOFError as exc:
            raise ExportFileError(self.n + 1, f"the file is truncated ({exc})") from exc
        if not raw:
            return None
        self.n += 1
        if not raw.endswith(b"\n"):
            raise ExportFileError(self.n, "the file is truncated (the last line is incomplete)")
        try:
            obj = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ExportFileError(self.n, f"not JSON ({exc})") from exc
        if not isinstance(obj, dict):
            raise ExportFileError(self.n, "not a JSON object")
        return obj

    def _header(self, obj: dict) -> Header:
        if obj.get("format") != FORMAT:
            raise ExportFileError(1, f"not a Lore export (format {obj.get('format')!r}, expected {FORMAT!r})")
        if obj.get("version") != VERSION:
            raise ExportFileError(1, f"export format version {obj.get('version')!r}; this Lore reads version {VERSION}")
        _require(obj, ("organization", "embedding", "vectors"), 1, "header", {"embedding": dict, "vectors": bool})
        embedding = obj["embedding"]
        _require(embedding, ("provider", "model", "dimensions"), 1, "header embedding", {"dimensions": int})
        if obj["vectors"] and obj.get("vector_encoding") != VECTOR_ENCODING:
            raise ExportFileError(1, f"vector_encoding {obj.get('vector_encoding')!r}; this Lore reads {VECTOR_ENCODING!r}")
        return Header(obj["organization"], embedding["provider"], embedding["model"], embedding["dimensions"], obj["vectors"], obj)

    def items(self):
        agent, document, seen = None, None, {"agents": 0, "documents": 0, "chunks": 0}
        while True:
            obj = self._next()
            if obj is None:
                raise ExportFileError(self.n + 1, "the file is truncated (no end line)")
            kind, n = obj.get("type"), self.n
            if kind == "chunk":
                if document is None:
                    raise ExportFileError(n, "a chunk outside any document")
                document.chunks.append(self._chunk(obj, n, document))
                seen["chunks"] += 1
                continue
            if document is not None:  # any other line ends the document before it
                yield document
                document = None
            if kind == "agent":
                _require(obj, ("slug", "name", "config"), n, "agent", {"config": dict})
                agent = obj["slug"]
                seen["agents"] += 1
                yield AgentItem(n, obj["slug"], obj["name"], obj["config"])
            elif kind == "document":
                if agent is None:
                    raise ExportFileError(n, "a document before any agent")
                _require(obj, DOCUMENT_FIELDS, n, "document", _DOCUMENT_TYPES)
                document = DocumentItem(n, agent, {name: obj[name] for name in DOCUMENT_FIELDS})
                seen["documents"] += 1
            elif kind == "end":
                counts = {name: obj.get(name) for name in seen}
                if counts != seen:
                    raise ExportFileError(n, f"the end line counts {counts}, the file holds {seen}")
                if self._next() is not None:
                    raise ExportFileError(self.n, "a line after the end line")
                yield End(n, counts)
                return
            else:
                raise ExportFileError(n, f"unknown line type {kind!r}")

    def _chunk(self, obj: dict, n: int, document: DocumentItem) -> dict:
        if not self.header.vectors:
            raise ExportFileError(n, "a chunk line in an export without vectors")
        _require(obj, (*CHUNK_FIELDS, "vector"), n, "chunk", _CHUNK_TYPES)
        if obj["document"] != document.fields["key"]:
            raise ExportFileError(n, f"a chunk of document {obj['document']!r} after document {document.fields['key']!r}")
        if obj["ordinal"] != len(document.chunks):
            raise ExportFileError(n, f"chunk ordinal {obj['ordinal']}, expected {len(document.chunks)}")
        try:
            vector = vector_decode(obj["vector"], self.header.dimensions)
        except ValueError as exc:
            raise ExportFileError(n, str(exc)) from exc
        return {"text": obj["text"], "vector": vector}

    @property
    def position(self) -> int:
        """Bytes of the compressed file read so far (for a progress bar)."""
        return self._gzip.fileobj.tell() if self._gzip.fileobj else 0
