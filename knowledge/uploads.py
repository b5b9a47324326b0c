"""An uploaded file as a document's fields: the API's multipart upload and the console's
upload take files the same way (type by suffix, size, UTF-8 text without NUL)."""

from django.conf import settings

from knowledge.chunking import FILE_TYPES
from tenants.errors import invalid, too_large


def file_document(upload) -> dict:
    """{key, source, content_type, text} of an uploaded file (key and source: its name)."""
    suffix = "." + upload.name.rsplit(".", 1)[-1].lower() if "." in upload.name else ""
    if suffix not in FILE_TYPES:
        raise invalid("file", f"Unsupported file type '{suffix or upload.name}'; use {', '.join(FILE_TYPES)}.")
    if upload.size > settings.LORE_MAX_DOCUMENT_BYTES:
        raise too_large("file", f"File is larger than {settings.LORE_MAX_DOCUMENT_BYTES} bytes.")
    try:
        text = upload.read().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid("file", "File is not valid UTF-8 text.") from exc
    if "\\x00" in text:
        raise invalid("file", "File holds NUL characters: not text.")
    return {"key": upload.name, "source": upload.name, "content_type": FILE_TYPES[suffix], "text": text}
