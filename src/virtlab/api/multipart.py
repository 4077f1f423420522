"""Streaming one file field out of a ``multipart/form-data`` body, without spooling it.

Starlette's form parser writes every file to a temporary file first; an image would then be
written twice. This hands the bytes of the named field on as they arrive instead, using the
same push parser (``python-multipart``) underneath.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from virtlab.errors import InvalidRequest
from virtlab.names import UPLOAD

__all__ = ["FilePart", "stream_file_field"]


@dataclass
class FilePart:
    """The named file field: its file name, then its bytes as an async iterator."""

    filename: str
    chunks: AsyncIterator[bytes]


@dataclass
class _State:
    want: bytes
    headers: dict[bytes, bytes] = field(default_factory=dict)
    header_field: bytes = b""
    header_value: bytes = b""
    in_target: bool = False
    seen_target: bool = False
    done_target: bool = False
    filename: str | None = None
    out: list[bytes] = field(default_factory=list)


def _boundary(content_type: str) -> bytes:
    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not params.get(b"boundary"):
        raise InvalidRequest(
            "send the image as multipart/form-data with a field named 'image' "
            '(curl -F "image=@router.vmdk"), or as the raw body of PUT /api/images/{name}'
        )
    return params[b"boundary"]


async def stream_file_field(
    body: AsyncIterator[bytes], content_type: str, field_name: str
) -> FilePart:
    """Parse until the field's headers are read, then return it with a stream of its bytes."""
    state = _State(want=field_name.encode())
    parser = MultipartParser(_boundary(content_type), _callbacks(state))
    source = body.__aiter__()

    def feed(chunk: bytes) -> None:
        try:
            parser.write(chunk)
        except MultipartParseError as exc:
            if "header size" in str(exc):  # a part's headers past 4 KiB: a file name, surely
                raise InvalidRequest(
                    f"the form's part headers are longer than 4 KiB: is its file name that "
                    f"long? {UPLOAD.sentence}; rename the file"
                ) from exc
            raise InvalidRequest(
                f"the multipart/form-data body is malformed ({exc}); "
                f'send the file as -F "{field_name}=@FILE"'
            ) from exc

    while state.filename is None:
        try:
            chunk = await source.__anext__()
        except StopAsyncIteration:
            raise InvalidRequest(
                f"the form has no file field named '{field_name}'; "
                f'send it as -F "{field_name}=@FILE"'
            ) from None
        feed(chunk)

    async def chunks() -> AsyncIterator[bytes]:
        while True:
            if state.out:
                data, state.out = state.out, []
                for piece in data:
                    yield piece
            if state.done_target:
                return
            try:
                chunk = await source.__anext__()
            except StopAsyncIteration:
                raise InvalidRequest(
                    f"the upload of {state.filename} ended before its form field was complete; "
                    "the connection was probably cut: upload it again"
                ) from None
            feed(chunk)

    return FilePart(state.filename, chunks())


def _callbacks(state: _State) -> dict:
    def on_part_begin() -> None:
        state.headers = {}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state.header_field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state.header_value += data[start:end]

    def on_header_end() -> None:
        state.headers[state.header_field.lower()] = state.header_value
        state.header_field = state.header_value = b""

    def on_headers_finished() -> None:
        _, options = parse_options_header(state.headers.get(b"content-disposition", b""))
        if options.get(b"name") == state.want and not state.seen_target:
            state.in_target = state.seen_target = True
            raw = options.get(b"filename", b"")
            state.filename = raw.decode("utf-8", errors="replace") or "upload"

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state.in_target:
            state.out.append(bytes(data[start:end]))

    def on_part_end() -> None:
        if state.in_target:
            state.in_target = False
            state.done_target = True

    return {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
