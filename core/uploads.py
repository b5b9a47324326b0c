"""Multipart uploads are refused as soon as they are larger than a document may be, while
they stream in: never written whole (to memory or a temporary file) and then refused."""

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler

from core.errors import too_large

# Room for the form's other fields (key, title, metadata) and the multipart framing.
FORM_OVERHEAD = 1024 * 1024


def _refuse():
    return too_large("file", f"File is larger than {settings.LORE_MAX_DOCUMENT_BYTES} bytes.")


class LimitedUploadHandler(FileUploadHandler):
    """First of FILE_UPLOAD_HANDLERS: passes each chunk on to the handlers that store it,
    until the file or the request outgrows the limit."""

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        if content_length and content_length > settings.LORE_MAX_DOCUMENT_BYTES + FORM_OVERHEAD:
            raise _refuse()

    def receive_data_chunk(self, raw_data, start):
        if start + len(raw_data) > settings.LORE_MAX_DOCUMENT_BYTES:
            raise _refuse()
        return raw_data

    def file_complete(self, file_size):
        return None
