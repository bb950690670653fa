"""Multipart uploads read into memory, never onto the disk, within their size limits.

The body is parsed as it streams in (python-multipart's streaming parser): each file of
the field `file` is collected in memory and refused with 413 as soon as it passes the
per-file limit, the body as soon as it passes the per-request limit. Starlette's own
`request.form()` is not used: it spools every file part over 1 MiB to a temporary file
and has no per-file limit for file parts.
"""

from dataclasses import dataclass

from fastapi import HTTPException, Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

MB = 2**20  # the limits' unit: --max-file-mb 20 is 20 MiB
FIELD = "file"


@dataclass(frozen=True)
class UploadLimits:
    max_files: int = 32  # per request
    max_file_mb: float = 20.0
    max_request_mb: float = 100.0


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes


class UploadCollector:
    """The files of the field `file` of a multipart body, kept in memory as it is fed."""

    def __init__(self, settings: UploadLimits) -> None:
        self.settings = settings
        self.files: list[Upload] = []
        self._header, self._value, self._disposition = b"", b"", b""
        self._name: str | None = None  # the current part's file name; None: not a file
        self._chunks: list[bytes] = []
        self._size = 0
        self.complete = False  # the closing boundary was seen

    def parser(self, boundary: bytes) -> MultipartParser:
        """A parser that feeds this collector. The collector keeps no reference to it:
        that cycle would hold the uploaded files until the garbage collector's next full
        pass, long after the answer."""
        return MultipartParser(boundary, {
            "on_part_begin": self._begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._data,
            "on_part_end": self._end, "on_end": self._finish})

    def _begin(self) -> None:
        self._disposition, self._name, self._chunks, self._size = b"", None, [], 0

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        self._header, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if options.get(b"name") != FIELD.encode() or b"filename" not in options:
            return  # another field: read past it, keep nothing
        if len(self.files) >= self.settings.max_files:
            raise HTTPException(400, f"too many files: at most {self.settings.max_files} "
                                     "per request")
        self._name = options[b"filename"].decode("utf-8", errors="replace")

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._name is None:
            return
        self._size += end - start
        if self._size > self.settings.max_file_mb * MB:
            raise HTTPException(413, f"{self._name}: larger than the "
                                     f"{self.settings.max_file_mb:g} MB limit per file")
        self._chunks.append(data[start:end])

    def _end(self) -> None:
        if self._name is not None:
            self.files.append(Upload(self._name, b"".join(self._chunks)))
        self._name, self._chunks = None, []

    def _finish(self) -> None:
        self.complete = True


async def read_uploads(request: Request, settings: UploadLimits) -> list[Upload]:
    """The uploaded files in order, or HTTPException 400/413 with a one-line reason."""
    limit = settings.max_request_mb * MB
    too_large = HTTPException(413, f"request body larger than the {settings.max_request_mb:g} "
                                   "MB limit per request")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    content_type, options = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        raise HTTPException(400, f"send the images as multipart/form-data in the field '{FIELD}'")
    collector, received = UploadCollector(settings), 0
    parser = collector.parser(options[b"boundary"])
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:  # a chunked body has no Content-Length to check first
                raise too_large
            parser.write(chunk)
        parser.finalize()
    except FormParserError as err:
        raise HTTPException(400, f"malformed multipart body: {err}") from err
    if not collector.complete:
        raise HTTPException(400, "malformed multipart body: it ends before its closing boundary")
    if not collector.files:
        raise HTTPException(400, f"no file: send the images in the multipart field '{FIELD}'")
    return collector.files
