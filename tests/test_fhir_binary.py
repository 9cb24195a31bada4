"""Binary attachments: content encrypted in the blob store, streamed, checked against its declared type.

Server tests run on SQLite and PostgreSQL; the chunked encryption, the filesystem blob store and the content
sniffing are also tested on their own.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.share.blobs import content as C
from services.share.blobs.crypto import HEADER_BYTES, TAG_BYTES, TamperedBlob, decrypt, encrypt, encrypted_size
from services.share.blobs.store import BlobNotFound, FilesystemBlobStore
from tests.fhir_helpers import FHIR_JSON, create, created_id, patient
from tests.infra import LiveServer, make_network

MB20 = 20 * 1024 * 1024
BLOB_URL = "urn:renkei:binary-blob"
SIZE_URL = "urn:renkei:binary-size"


# Real, tiny files ----------------------------------------------------------------------------------------


def tiny_png() -> bytes:
    """A valid 1×1 RGB PNG (one red pixel)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def tiny_jpeg() -> bytes:
    """A valid baseline 1×1 greyscale JPEG: one 8×8 block whose DC difference and AC coefficients are all zero."""

    def segment(marker: int, data: bytes) -> bytes:
        return struct.pack(">BBH", 0xFF, marker, len(data) + 2) + data

    jfif = b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    quantisation = b"\x00" + bytes([1] * 64)
    frame = struct.pack(">BHHB", 8, 1, 1, 1) + b"\x01\x11\x00"
    one_code = bytes([1] + [0] * 15) + b"\x00"  # a single Huffman code of length 1 for symbol 0
    scan = b"\x01\x01\x00\x00\x3f\x00"
    return (b"\xff\xd8" + segment(0xE0, jfif) + segment(0xDB, quantisation) + segment(0xC0, frame)
            + segment(0xC4, b"\x00" + one_code) + segment(0xC4, b"\x10" + one_code) + segment(0xDA, scan)
            + b"\x3f" + b"\xff\xd9")


PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


# Fixtures and helpers ------------------------------------------------------------------------------------


@pytest.fixture
def pid(http: httpx.Client, auth: dict[str, str]) -> str:
    return created_id(create(http, auth, patient()))


def upload(http: httpx.Client, auth: dict[str, str], content: Any, content_type: str, patient_id: str | None,
           **headers: str) -> httpx.Response:
    extra = {"Content-Type": content_type, **headers}
    if patient_id:
        extra["X-Security-Context"] = f"Patient/{patient_id}"
    return http.post("/fhir/Binary", content=content, headers={**auth, **extra})


def blob_of(resource: dict[str, Any]) -> tuple[str, int]:
    found = {e["url"]: e for e in resource["meta"]["extension"]}
    return found[BLOB_URL]["valueString"], found[SIZE_URL]["valueInteger"]


def blob_files(server: LiveServer) -> set[Path]:
    root = server.settings.resolved_blob_dir
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def blob_path(server: LiveServer, blob_id: str) -> Path:
    return FilesystemBlobStore(server.settings.resolved_blob_dir).path_of(blob_id)


def binary_count(http: httpx.Client, auth: dict[str, str]) -> int:
    answer = http.get("/fhir/Binary", params={"_summary": "count"}, headers=auth)
    assert answer.status_code == 200, answer.text
    return int(answer.json()["total"])


def assert_outcome(answer: httpx.Response, status: int, code: str | None = None) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/fhir+json")
    outcome = answer.json()
    assert outcome["resourceType"] == "OperationOutcome"
    if code:
        assert outcome["issue"][0]["details"]["coding"][0]["code"] == code, outcome


# Upload and read back ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "content_type"), [(tiny_png(), "image/png"), (tiny_jpeg(), "image/jpeg")])
def test_upload_then_read_back_byte_identical(server: LiveServer, http: httpx.Client, auth: dict[str, str],
                                              pid: str, content: bytes, content_type: str) -> None:
    answer = upload(http, auth, content, content_type, pid)
    assert answer.status_code == 201, answer.text
    resource = answer.json()
    assert resource["resourceType"] == "Binary" and resource["contentType"] == content_type
    assert resource["securityContext"] == {"reference": f"Patient/{pid}"}
    assert "data" not in resource
    blob_id, size = blob_of(resource)
    assert size == len(content) and blob_path(server, blob_id).is_file()
    assert answer.headers["location"].endswith(f"/fhir/Binary/{resource['id']}/_history/1")

    url = f"/fhir/Binary/{resource['id']}"
    for accept in (content_type, "*/*", None):
        headers = {**auth, **({"Accept": accept} if accept else {})}
        raw = http.get(url, headers=headers)
        assert raw.status_code == 200, raw.text
        assert raw.content == content
        assert raw.headers["content-type"] == content_type
        assert raw.headers["x-content-type-options"] == "nosniff"
        assert raw.headers["etag"] == 'W/"1"'
    assert http.get(f"{url}/_history/1", headers={**auth, "Accept": content_type}).content == content

    as_json = http.get(url, headers={**auth, "Accept": "application/fhir+json"})
    assert as_json.status_code == 200 and as_json.headers["content-type"].startswith("application/fhir+json")
    assert base64.b64decode(as_json.json()["data"]) == content
    assert http.get(url, params={"_format": "json"}, headers=auth).json()["data"] == as_json.json()["data"]


def test_json_binary_round_trip(http: httpx.Client, auth: dict[str, str], pid: str) -> None:
    png = tiny_png()
    body = {"resourceType": "Binary", "contentType": "image/png", "securityContext": {"reference": f"Patient/{pid}"},
            "data": base64.b64encode(png).decode()}
    answer = create(http, auth, body)
    assert answer.status_code == 201, answer.text
    created = answer.json()
    assert "data" not in created and blob_of(created)[1] == len(png)
    url = f"/fhir/Binary/{created['id']}"
    read = http.get(url, headers={**auth, "Accept": "application/fhir+json"}).json()
    assert read["data"] == body["data"]
    assert {k: v for k, v in read.items() if k != "data"} == created
    assert http.get(url, headers={**auth, "Accept": "image/png"}).content == png
    # Search and history serve the stored rows: they never hold the content.
    found = http.get("/fhir/Binary", params={"_id": created["id"]}, headers=auth).json()
    assert found["entry"][0]["resource"] == created
    assert "data" not in http.get(f"{url}/_history", headers=auth).json()["entry"][0]["resource"]


def test_blob_extension_sent_by_a_client_is_ignored(http: httpx.Client, auth: dict[str, str], pid: str) -> None:
    first = upload(http, auth, tiny_png(), "image/png", pid).json()
    forged = {"resourceType": "Binary", "contentType": "text/plain",
              "meta": {"extension": [{"url": BLOB_URL, "valueString": blob_of(first)[0]},
                                     {"url": SIZE_URL, "valueInteger": 1}]},
              "data": base64.b64encode(b"mine").decode()}
    created = create(http, auth, forged).json()
    assert blob_of(created) != blob_of(first) and blob_of(created)[1] == 4
    assert http.get(f"/fhir/Binary/{created['id']}", headers=auth).content == b"mine"


def test_content_on_disk_is_encrypted(server: LiveServer, http: httpx.Client, auth: dict[str, str],
                                      pid: str) -> None:
    marker = "WOUND-NOTE-褥瘡ステージ3-7f3a9c"
    text = (f"{marker}\n" * 50).encode()
    answer = upload(http, auth, text, "text/plain; charset=utf-8", pid)
    assert answer.status_code == 201, answer.text
    path = blob_path(server, blob_of(answer.json())[0])
    stored = path.read_bytes()
    assert marker.encode() not in stored and b"WOUND-NOTE" not in stored
    assert len(stored) == encrypted_size(len(text))
    assert path.stat().st_mode & 0o777 == 0o600
    served = http.get(f"/fhir/Binary/{answer.json()['id']}", headers=auth)
    assert served.content == text and served.headers["content-type"] == "text/plain; charset=utf-8"


def test_network_level_binary_without_security_context(http: httpx.Client, auth: dict[str, str]) -> None:
    answer = upload(http, auth, PDF, "application/pdf", None)
    assert answer.status_code == 201, answer.text
    assert "securityContext" not in answer.json()
    assert http.get(f"/fhir/Binary/{answer.json()['id']}", headers=auth).content == PDF


# Refusals ------------------------------------------------------------------------------------------------


def test_declared_type_must_match_the_bytes(server: LiveServer, http: httpx.Client, auth: dict[str, str],
                                            pid: str) -> None:
    before = blob_files(server)
    assert_outcome(upload(http, auth, PDF, "image/png", pid), 415, "content_mismatch")
    assert_outcome(upload(http, auth, tiny_png(), "text/plain", pid), 415, "content_mismatch")
    assert_outcome(upload(http, auth, b"\xff\xfe not utf-8", "text/plain", pid), 415, "content_mismatch")
    assert_outcome(upload(http, auth, b"", "image/jpeg", pid), 415, "content_mismatch")
    assert_outcome(upload(http, auth, b"PK\x03\x04", "application/zip", pid), 415, "unsupported_media_type")
    assert_outcome(upload(http, auth, b"<html></html>", "text/html", pid), 415)
    as_json = {"resourceType": "Binary", "contentType": "image/png", "data": base64.b64encode(PDF).decode()}
    refused = create(http, auth, as_json)
    assert_outcome(refused, 415, "content_mismatch")
    assert "Binary.data" in refused.json()["issue"][0]["expression"]
    assert blob_files(server) == before
    assert binary_count(http, auth) == 0


def test_malformed_json_binaries(http: httpx.Client, auth: dict[str, str]) -> None:
    missing = create(http, auth, {"resourceType": "Binary", "contentType": "image/png"})
    assert_outcome(missing, 400, "missing_content")
    bad = create(http, auth, {"resourceType": "Binary", "contentType": "image/png", "data": "%%%not base64"})
    assert_outcome(bad, 400)
    assert bad.json()["issue"][0]["expression"] == ["Binary.data"]
    assert_outcome(create(http, auth, {"resourceType": "Binary", "data": "AA=="}), 400)  # contentType is required
    wrong = http.post("/fhir/Binary", content=b'{"resourceType": "Patient"}', headers={**auth, **FHIR_JSON})
    assert_outcome(wrong, 400)
    assert binary_count(http, auth) == 0


def test_security_context_must_be_a_known_patient(server: LiveServer, http: httpx.Client,
                                                  auth: dict[str, str]) -> None:
    before = blob_files(server)
    unknown = upload(http, auth, tiny_png(), "image/png", "no-such-patient")
    assert_outcome(unknown, 400, "unknown_patient")
    assert "Patient/no-such-patient" in unknown.json()["issue"][0]["diagnostics"]
    elsewhere = created_id(create(http, make_network(server).bearer("physician"), patient()))
    assert_outcome(upload(http, auth, tiny_png(), "image/png", elsewhere), 400, "unknown_patient")
    garbage = http.post("/fhir/Binary", content=tiny_png(),
                        headers={**auth, "Content-Type": "image/png", "X-Security-Context": "not a reference"})
    assert_outcome(garbage, 400, "invalid_security_context")
    not_a_patient = http.post("/fhir/Binary", content=tiny_png(), headers={
        **auth, "Content-Type": "image/png", "X-Security-Context": "Organization/clinic"})
    assert_outcome(not_a_patient, 400, "invalid_security_context")
    as_json = {"resourceType": "Binary", "contentType": "image/png", "data": base64.b64encode(tiny_png()).decode(),
               "securityContext": {"reference": "Organization/clinic"}}
    assert_outcome(create(http, auth, as_json), 400, "unknown_patient")
    assert blob_files(server) == before
    assert binary_count(http, auth) == 0


def test_over_20_mb_is_refused_and_leaves_nothing(server: LiveServer, http: httpx.Client, auth: dict[str, str],
                                                  pid: str) -> None:
    before = blob_files(server)
    piece = b"a" * (1024 * 1024)

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while counting the stream
        for _ in range(20):
            yield piece
        yield b"b"

    too_large = upload(http, auth, chunked(), "text/plain", pid)
    assert_outcome(too_large, 413, "too_large")
    assert blob_files(server) == before  # no blob, no temporary file
    assert binary_count(http, auth) == 0

    # A declared Content-Length over the limit is refused before a byte of the body is read.
    token = auth["Authorization"]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"POST /fhir/Binary HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {token}\r\n"
                     f"Content-Type: image/png\r\nContent-Length: {MB20 + 1}\r\n\r\n".encode())
        reply = b""
        while b"\r\n" not in reply and (piece := sock.recv(65536)):
            reply += piece
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert blob_files(server) == before


def test_exactly_20_mb_is_stored_and_streamed_back(server: LiveServer, http: httpx.Client, auth: dict[str, str],
                                                   pid: str) -> None:
    content = (b"0123456789abcdef" * (MB20 // 16))[:MB20]
    assert len(content) == MB20
    answer = upload(http, auth, content, "text/plain", pid)
    assert answer.status_code == 201, answer.text
    assert blob_of(answer.json())[1] == MB20
    digest, size = hashlib.sha256(), 0
    with http.stream("GET", f"/fhir/Binary/{answer.json()['id']}", headers={**auth, "Accept": "text/plain"}) as raw:
        assert raw.status_code == 200
        assert raw.headers["content-length"] == str(MB20)
        for chunk in raw.iter_bytes():
            digest.update(chunk)
            size += len(chunk)
    assert size == MB20 and digest.digest() == hashlib.sha256(content).digest()


# Integrity, isolation, versions --------------------------------------------------------------------------


def test_tampered_blob_is_refused(server: LiveServer, http: httpx.Client, auth: dict[str, str], pid: str) -> None:
    text = b"observation note " * 10_000  # several chunks
    first = upload(http, auth, text, "text/plain", pid).json()
    second = upload(http, auth, text, "text/plain", pid).json()
    path = blob_path(server, blob_of(first)[0])
    original = path.read_bytes()
    url = f"/fhir/Binary/{first['id']}"

    flipped = bytearray(original)
    flipped[len(flipped) * 3 // 4] ^= 0x01  # a late chunk: detected before the first byte is sent
    path.write_bytes(bytes(flipped))
    assert_outcome(http.get(url, headers=auth), 500, "integrity_failure")
    assert_outcome(http.get(url, headers={**auth, "Accept": "application/fhir+json"}), 500, "integrity_failure")

    path.write_bytes(original[:-(TAG_BYTES + 1)])  # cut
    assert_outcome(http.get(url, headers=auth), 500, "integrity_failure")

    path.write_bytes(blob_path(server, blob_of(second)[0]).read_bytes())  # another blob's file moved here
    assert_outcome(http.get(url, headers=auth), 500, "integrity_failure")

    path.unlink()
    assert_outcome(http.get(url, headers=auth), 500, "integrity_failure")

    path.write_bytes(original)
    assert http.get(url, headers=auth).content == text


def test_other_networks_cannot_read_it(server: LiveServer, http: httpx.Client, auth: dict[str, str],
                                       pid: str) -> None:
    created = upload(http, auth, tiny_png(), "image/png", pid).json()
    other = make_network(server).bearer("physician")
    url = f"/fhir/Binary/{created['id']}"
    assert_outcome(http.get(url, headers={**other, "Accept": "image/png"}), 404)
    assert_outcome(http.get(url, headers={**other, "Accept": "application/fhir+json"}), 404)
    assert_outcome(http.get(f"{url}/_history/1", headers=other), 404)
    replaced = http.put(url, content=tiny_png(), headers={**other, "Content-Type": "image/png"})
    assert_outcome(replaced, 404)


def test_update_delete_and_history_keep_each_versions_content(http: httpx.Client, auth: dict[str, str],
                                                              pid: str) -> None:
    created = upload(http, auth, tiny_png(), "image/png", pid).json()
    url = f"/fhir/Binary/{created['id']}"
    headers = {**auth, "Content-Type": "image/jpeg", "X-Security-Context": f"Patient/{pid}"}
    assert_outcome(http.put(url, content=tiny_jpeg(), headers={**headers, "If-Match": 'W/"7"'}), 412)
    updated = http.put(url, content=tiny_jpeg(), headers={**headers, "If-Match": 'W/"1"'})
    assert updated.status_code == 200, updated.text
    assert updated.json()["meta"]["versionId"] == "2" and blob_of(updated.json()) != blob_of(created)
    assert http.get(url, headers=auth).content == tiny_jpeg()
    assert http.get(url, headers=auth).headers["content-type"] == "image/jpeg"
    assert http.get(f"{url}/_history/1", headers=auth).content == tiny_png()

    as_json = {"resourceType": "Binary", "id": created["id"], "contentType": "text/plain",
               "securityContext": {"reference": f"Patient/{pid}"}, "data": base64.b64encode(b"v3").decode()}
    assert http.put(url, json=as_json, headers={**auth, **FHIR_JSON}).status_code == 200
    assert http.get(url, headers=auth).content == b"v3"
    moved = {**as_json, "securityContext": {"reference": f"Patient/{created_id(create(http, auth, patient()))}"}}
    assert_outcome(http.put(url, json=moved, headers={**auth, **FHIR_JSON}), 400, "compartment_change")

    assert http.delete(url, headers=auth).status_code == 204
    assert_outcome(http.get(url, headers=auth), 410)
    assert http.get(f"{url}/_history/2", headers=auth).content == tiny_jpeg()  # history keeps the content


def test_idempotent_upload(server: LiveServer, http: httpx.Client, auth: dict[str, str], pid: str) -> None:
    first = upload(http, auth, tiny_png(), "image/png", pid, **{"Idempotency-Key": "photo-1"})
    files = blob_files(server)
    again = upload(http, auth, tiny_png(), "image/png", pid, **{"Idempotency-Key": "photo-1"})
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert blob_files(server) == files  # the retry's copy was not kept
    other = upload(http, auth, tiny_jpeg(), "image/jpeg", pid, **{"Idempotency-Key": "photo-1"})
    assert_outcome(other, 422)
    assert blob_files(server) == files and binary_count(http, auth) == 1


def test_accept_negotiation(http: httpx.Client, auth: dict[str, str], pid: str) -> None:
    url = f"/fhir/Binary/{upload(http, auth, tiny_png(), 'image/png', pid).json()['id']}"
    assert_outcome(http.get(url, headers={**auth, "Accept": "image/jpeg"}), 406)
    assert_outcome(http.get(url, params={"_format": "xml"}, headers=auth), 406)
    assert http.get(url, headers={**auth, "Accept": "image/*"}).content == tiny_png()
    assert http.get(url, headers={**auth, "Accept": "image/png, application/fhir+json;q=0.5"}).content == tiny_png()
    assert "data" in http.get(url, headers={**auth, "Accept": "application/fhir+json, */*;q=0.1"}).json()
    # Everything else under /fhir still speaks only FHIR JSON.
    assert http.get("/fhir/Binary", headers={**auth, "Accept": "image/png"}).status_code == 406
    assert http.get(f"{url}/_history", headers={**auth, "Accept": "image/png"}).status_code == 406


# Chunked encryption --------------------------------------------------------------------------------------

KEY = bytes(range(32))
SMALL = 16  # a small chunk size makes multi-chunk blobs cheap


def sealed(data: bytes, blob_id: str = "blob-a", key: bytes = KEY) -> bytes:
    return b"".join(encrypt(key, blob_id, [data], chunk_size=SMALL))


def opened(blob: bytes, blob_id: str = "blob-a", key: bytes = KEY) -> bytes:
    return b"".join(decrypt(key, blob_id, [blob[i:i + 7] for i in range(0, len(blob), 7)]))


def frames(blob: bytes) -> list[bytes]:
    body = blob[HEADER_BYTES:]
    step = SMALL + TAG_BYTES
    return [body[i:i + step] for i in range(0, len(body), step)]


@pytest.mark.parametrize("size", [0, 1, SMALL - 1, SMALL, SMALL + 1, 3 * SMALL, 3 * SMALL + 5])
def test_round_trip_any_size_and_any_pieces(size: int) -> None:
    data = os.urandom(size)
    pieces = [data[i:i + 5] for i in range(0, size, 5)]
    blob = b"".join(encrypt(KEY, "blob-a", pieces, chunk_size=SMALL))
    assert len(blob) == encrypted_size(size, SMALL)
    assert opened(blob) == data


def test_every_flipped_byte_is_detected() -> None:
    blob = sealed(os.urandom(2 * SMALL + 3))
    for position in range(len(blob)):
        damaged = bytearray(blob)
        damaged[position] ^= 0x80
        with pytest.raises(TamperedBlob):
            opened(bytes(damaged))


def test_truncation_is_detected() -> None:
    blob = sealed(os.urandom(3 * SMALL + 5))
    parts = frames(blob)
    header = blob[:HEADER_BYTES]
    for keep in range(len(parts)):  # cut after any whole chunk
        with pytest.raises(TamperedBlob):
            opened(header + b"".join(parts[:keep]))
    for cut in (1, TAG_BYTES, len(blob) - HEADER_BYTES - 1):  # cut inside a chunk or the header
        with pytest.raises(TamperedBlob):
            opened(blob[:-cut])
    with pytest.raises(TamperedBlob):
        opened(blob[:HEADER_BYTES - 1])
    exact = sealed(os.urandom(2 * SMALL))  # the final chunk is full: dropping it must still be noticed
    with pytest.raises(TamperedBlob):
        opened(exact[:HEADER_BYTES] + b"".join(frames(exact)[:1]))


def test_reordering_duplication_and_extension_are_detected() -> None:
    blob = sealed(os.urandom(3 * SMALL + 5))
    header, parts = blob[:HEADER_BYTES], frames(blob)
    with pytest.raises(TamperedBlob):
        opened(header + parts[1] + parts[0] + parts[2] + parts[3])
    with pytest.raises(TamperedBlob):
        opened(header + parts[0] + parts[0] + parts[1] + parts[2] + parts[3])
    with pytest.raises(TamperedBlob):
        opened(blob + parts[0])
    full = sealed(os.urandom(2 * SMALL))
    with pytest.raises(TamperedBlob):
        opened(full + frames(full)[1])


def test_blob_is_bound_to_its_id_and_key() -> None:
    blob = sealed(b"wound photo")
    assert opened(blob) == b"wound photo"
    with pytest.raises(TamperedBlob):
        opened(blob, blob_id="blob-b")
    with pytest.raises(TamperedBlob):
        opened(blob, key=bytes(32))
    with pytest.raises(TamperedBlob):  # same content, same id, another blob's header and chunks mixed
        other = sealed(b"wound photo")
        opened(other[:HEADER_BYTES] + blob[HEADER_BYTES:])


# Filesystem blob store and content checks ----------------------------------------------------------------


def test_filesystem_blob_store(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path / "blobs")
    assert store.put("abcdef01", [b"hello ", b"world"]) == 11
    path = store.path_of("abcdef01")
    assert path == tmp_path / "blobs" / "ab" / "cd" / "abcdef01"
    assert path.stat().st_mode & 0o777 == 0o600
    assert b"".join(store.open("abcdef01")) == b"hello world"
    with pytest.raises(FileExistsError):
        store.put("abcdef01", [b"again"])
    assert b"".join(store.open("abcdef01")) == b"hello world"

    def failing() -> Iterator[bytes]:
        yield b"partial"
        raise C.TooLarge("stop")

    with pytest.raises(C.TooLarge):
        store.put("abcdef02", failing())
    assert sorted(p.name for p in (tmp_path / "blobs").rglob("*") if p.is_file()) == ["abcdef01"]
    store.delete("abcdef01")
    store.delete("abcdef01")
    with pytest.raises(BlobNotFound):
        store.open("abcdef01")
    with pytest.raises(ValueError):
        store.path_of("../../etc/passwd")


@pytest.mark.parametrize(
    ("head", "found"),
    [
        (tiny_png(), "image/png"),
        (tiny_jpeg(), "image/jpeg"),
        (PDF, "application/pdf"),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "image/heic"),
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00", "image/heic"),
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x00\x00", None),
        (b"plain text", None),
    ],
)
def test_sniffing(head: bytes, found: str | None) -> None:
    assert C.sniff(head) == found


def test_content_check_streams() -> None:
    check = C.ContentCheck(C.parse_media_type("text/plain; charset=Shift_JIS"), limit=100)
    encoded = "褥瘡".encode("shift_jis")
    check.feed(encoded[:1])  # a character split across pieces is fine
    check.feed(encoded[1:])
    check.finish()
    over = C.ContentCheck(C.parse_media_type("text/plain"), limit=4)
    with pytest.raises(C.TooLarge):
        over.feed(b"12345")
    with pytest.raises(C.ContentRefused):
        C.parse_media_type("text/plain; charset=utf-16")
    assert C.parse_media_type("IMAGE/PNG; foo=bar").header() == "image/png"
    assert C.parse_media_type("text/plain").header() == "text/plain; charset=utf-8"
