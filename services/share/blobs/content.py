"""Which attachment content we accept, and the check of the bytes against the type they are declared as.

An allow-list of media types, each recognised by its magic number; text is checked as text (decodes in its
declared charset, no NUL bytes) and must not look like one of the binary formats. The check runs on the stream
as it arrives (``ContentCheck.feed``), together with the size limit, so refusal never needs the whole content.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

MAX_BYTES = 20 * 1024 * 1024

BINARY_TYPES = ("image/jpeg", "image/png", "image/heic", "image/webp", "application/pdf")
TEXT_TYPE = "text/plain"
ALLOWED = (*BINARY_TYPES, TEXT_TYPE)
# Charsets a text/plain attachment may declare (Japanese legacy encodings included); UTF-8 when none is given.
CHARSETS = {"utf-8": "utf-8", "utf8": "utf-8", "us-ascii": "ascii", "shift_jis": "shift_jis",
            "sjis": "shift_jis", "windows-31j": "cp932", "cp932": "cp932", "euc-jp": "euc_jp",
            "iso-2022-jp": "iso2022_jp"}
_HEIC_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"mif1")
SNIFF_BYTES = 12


class ContentRefused(ValueError):
    """The content is not what it claims to be, or its type is not accepted."""


class TooLarge(ValueError):
    """The content exceeds the size limit."""


@dataclass(frozen=True)
class MediaType:
    essence: str  # "image/png"
    charset: str | None = None  # Python codec name, text/plain only

    def header(self) -> str:
        """The stored ``contentType`` and the ``Content-Type`` the content is served with."""
        if self.essence == TEXT_TYPE:
            return f"{TEXT_TYPE}; charset={_label(self.charset or 'utf-8')}"
        return self.essence


def parse_media_type(value: str | None) -> MediaType:
    """The accepted media type ``value`` names; :class:`ContentRefused` for anything off the allow-list."""
    parts = [p.strip() for p in (value or "").split(";")]
    essence = parts[0].lower()
    if essence not in ALLOWED:
        raise ContentRefused(f"content type {essence or '(none)'} is not accepted for attachments; "
                             f"use one of {', '.join(ALLOWED)}")
    if essence != TEXT_TYPE:
        return MediaType(essence)
    charset = "utf-8"
    for parameter in parts[1:]:
        name, _, raw = parameter.partition("=")
        if name.strip().lower() == "charset":
            charset = raw.strip().strip('"').lower()
    codec = CHARSETS.get(charset)
    if codec is None:
        raise ContentRefused(f"charset {charset} is not accepted for text attachments; "
                             f"use one of {', '.join(sorted(set(CHARSETS)))}")
    return MediaType(TEXT_TYPE, codec)


def sniff(head: bytes) -> str | None:
    """The binary format the first bytes announce, or None (maybe text)."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIC_BRANDS:
        return "image/heic"
    return None


@dataclass
class ContentCheck:
    """Feed the content piece by piece, then ``finish``; raises as soon as the content is refused."""

    media_type: MediaType
    limit: int = MAX_BYTES
    size: int = 0
    _head: bytes = b""
    _sniffed: bool = False
    _decoder: codecs.IncrementalDecoder | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.media_type.charset:
            self._decoder = codecs.getincrementaldecoder(self.media_type.charset)(errors="strict")

    def feed(self, piece: bytes) -> None:
        self.size += len(piece)
        if self.size > self.limit:
            raise TooLarge(f"the content exceeds {self.limit} bytes")
        if not self._sniffed:
            self._head += piece[:SNIFF_BYTES]
            if len(self._head) >= SNIFF_BYTES:
                self._judge()
        if self._decoder is not None:
            if b"\x00" in piece:
                raise ContentRefused("text/plain content must not contain NUL bytes")
            try:
                self._decoder.decode(piece)
            except UnicodeDecodeError as error:
                raise ContentRefused(f"the content is not valid {self.media_type.charset} text "
                                     f"(near byte {self.size - len(piece) + error.start})") from None

    def finish(self) -> None:
        if not self._sniffed:
            self._judge()
        if self._decoder is not None:
            try:
                self._decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                raise ContentRefused(f"the content is not valid {self.media_type.charset} text "
                                     "(it ends inside a character)") from None

    def _judge(self) -> None:
        self._sniffed = True
        found = sniff(self._head)
        declared = self.media_type.essence
        if declared == TEXT_TYPE:
            if found is not None:
                raise ContentRefused(f"declared {TEXT_TYPE} but the content is {found}")
        elif found != declared:
            what = found or ("empty" if not self._head else "not a recognised format")
            raise ContentRefused(f"declared {declared} but the content is {what}")


def checked(pieces: Iterable[bytes], check: ContentCheck) -> Iterator[bytes]:
    """Pass ``pieces`` through, checking each before it goes on; the last check runs after the last piece."""
    for piece in pieces:
        check.feed(piece)
        yield piece
    check.finish()


def _label(codec: str) -> str:
    return {"utf-8": "utf-8", "ascii": "us-ascii", "shift_jis": "shift_jis", "cp932": "windows-31j",
            "euc_jp": "euc-jp", "iso2022_jp": "iso-2022-jp"}[codec]
