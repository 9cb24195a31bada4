"""Bundles assembled from stored bytes: entries are spliced in as they are, never re-serialised."""

from __future__ import annotations

from datetime import datetime

import orjson

from services.share.store.service import Stored


def http_date(moment: datetime) -> str:
    return moment.strftime("%a, %d %b %Y %H:%M:%S GMT")


def etag(version: int) -> str:
    return f'W/"{version}"'


def _entry(base: str, item: Stored, extra: dict[str, object]) -> bytes:
    full_url = f"{base}/{item.resource_type}/{item.resource_id}"
    head = orjson.dumps({"fullUrl": full_url, **extra})
    if not item.body:
        return head
    return head[:-1] + b',"resource":' + item.body + b"}"


def searchset(
    base: str, matches: list[Stored], included: list[Stored], links: dict[str, str], total: int | None = None
) -> bytes:
    entries = [_entry(base, m, {"search": {"mode": "match"}}) for m in matches]
    entries += [_entry(base, i, {"search": {"mode": "include"}}) for i in included]
    return _bundle("searchset", entries, links, total)


def history(base: str, versions: list[Stored], links: dict[str, str]) -> bytes:
    entries = []
    for item in versions:
        url = f"{item.resource_type}/{item.resource_id}"
        request = {"method": item.method, "url": url if item.method != "POST" else item.resource_type}
        response = {
            "status": "204" if item.deleted else ("201" if item.method == "POST" else "200"),
            "etag": etag(item.version),
            "lastModified": item.last_updated.isoformat(timespec="milliseconds"),
        }
        entries.append(_entry(base, item, {"request": request, "response": response}))
    return _bundle("history", entries, links, None)


def _bundle(kind: str, entries: list[bytes], links: dict[str, str], total: int | None) -> bytes:
    head: dict[str, object] = {"resourceType": "Bundle", "type": kind}
    if total is not None:
        head["total"] = total
    head["link"] = [{"relation": relation, "url": url} for relation, url in links.items()]
    return orjson.dumps(head)[:-1] + b',"entry":[' + b",".join(entries) + b"]}"
