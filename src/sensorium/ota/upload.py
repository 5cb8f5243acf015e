"""Receiving a firmware upload: multipart/form-data streamed to a file, hashed on the way,
cut off at the size limit. Memory stays constant whatever the image size."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.multipart import MultipartParser, parse_options_header

from sensorium.errors import Invalid, PayloadTooLarge, UnsupportedMediaType

FILE_FIELD = "file"
MAX_FIELD_BYTES = 16 * 1024
MAX_PARTS = 16
# What the form fields and boundaries may add to the image in a Content-Length.
FORM_OVERHEAD_BYTES = 64 * 1024


@dataclass(slots=True)
class Upload:
    """A received upload: its text fields and the image, in a temporary file."""

    path: Path
    size: int = 0
    sha256: str = ""
    filename: str | None = None
    fields: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


class _Collector:
    """python-multipart callbacks: fields into memory (bounded), the file part hashed and
    queued for writing (the writes happen off the callbacks, which cannot await)."""

    def __init__(self, upload: Upload, max_bytes: int) -> None:
        self.upload = upload
        self.max_bytes = max_bytes
        self.hasher = hashlib.sha256()
        self.pending: list[bytes] = []
        self.parts = 0
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._name: str | None = None
        self._is_file = False
        self._value = bytearray()
        self._seen_file = False

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise Invalid(f"at most {MAX_PARTS} form fields", field="body")
        self._disposition = b""
        self._name = None
        self._is_file = False
        self._value = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        _kind, options = parse_options_header(self._disposition)
        name = options.get(b"name")
        if name is None:
            raise Invalid("a form part has no name", field="body")
        self._name = name.decode("utf-8", "replace")
        if self._name == FILE_FIELD:
            if self._seen_file:
                raise Invalid("only one image per upload", field=FILE_FIELD)
            self._seen_file = self._is_file = True
            filename = options.get(b"filename")
            self.upload.filename = filename.decode("utf-8", "replace") if filename else None

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._is_file:
            self.upload.size += len(chunk)
            if self.upload.size > self.max_bytes:
                raise PayloadTooLarge(
                    f"the image is larger than {self.max_bytes} bytes", field=FILE_FIELD
                )
            self.hasher.update(chunk)
            self.pending.append(chunk)
            return
        if len(self._value) + len(chunk) > MAX_FIELD_BYTES:
            raise PayloadTooLarge(
                f"'{self._name}' is longer than {MAX_FIELD_BYTES} bytes", field=self._name
            )
        self._value += chunk

    def on_part_end(self) -> None:
        if not self._is_file and self._name is not None:
            if self._name in self.upload.fields:
                raise Invalid(f"'{self._name}' is given twice", field=self._name)
            try:
                self.upload.fields[self._name] = self._value.decode("utf-8")
            except UnicodeDecodeError:
                raise Invalid(f"'{self._name}' is not UTF-8 text", field=self._name) from None
        if self._is_file:
            self.upload.sha256 = self.hasher.hexdigest()

    @property
    def got_file(self) -> bool:
        return self._seen_file


def _boundary(content_type: str) -> bytes:
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        raise UnsupportedMediaType("Content-Type must be multipart/form-data", field="content-type")
    boundary = options.get(b"boundary")
    if not boundary:
        raise UnsupportedMediaType("the multipart boundary is missing", field="content-type")
    return boundary


async def receive_upload(
    stream: AsyncIterator[bytes],
    *,
    content_type: str,
    content_length: str | None,
    directory: Path,
    max_bytes: int,
) -> Upload:
    """Stream a multipart body into a temporary file in `directory`. The caller owns the
    file afterwards (`Upload.discard()`); on any error it is already gone."""
    boundary = _boundary(content_type)
    declared = int(content_length) if content_length and content_length.isdigit() else None
    if declared is not None and declared > max_bytes + FORM_OVERHEAD_BYTES:
        raise PayloadTooLarge(f"the image is larger than {max_bytes} bytes", field=FILE_FIELD)
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    upload = Upload(path=directory / f"upload-{secrets.token_hex(8)}.part")
    collector = _Collector(upload, max_bytes)
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": collector.on_part_begin,
            "on_part_data": collector.on_part_data,
            "on_part_end": collector.on_part_end,
            "on_header_field": collector.on_header_field,
            "on_header_value": collector.on_header_value,
            "on_header_end": collector.on_header_end,
            "on_headers_finished": collector.on_headers_finished,
        },
    )
    out: BinaryIO = await asyncio.to_thread(upload.path.open, "wb")
    try:
        async for chunk in stream:
            try:
                parser.write(chunk)
            except (Invalid, PayloadTooLarge):
                raise
            except Exception:
                raise Invalid("the multipart body is malformed", field="body") from None
            if collector.pending:
                data = b"".join(collector.pending)
                collector.pending.clear()
                await asyncio.to_thread(out.write, data)
        try:
            parser.finalize()
        except Exception:
            raise Invalid("the multipart body is malformed", field="body") from None
        if not collector.got_file:
            raise Invalid("the image is missing (form field 'file')", field=FILE_FIELD)
        if not upload.sha256:
            raise Invalid("the multipart body ended inside the image", field="body")
        if upload.size == 0:
            raise Invalid("the image is empty", field=FILE_FIELD)
        await asyncio.to_thread(out.flush)
        await asyncio.to_thread(_fsync, out)
    except BaseException:
        with contextlib.suppress(OSError):
            out.close()
        upload.discard()
        raise
    out.close()
    return upload


def _fsync(out: BinaryIO) -> None:
    os.fsync(out.fileno())
