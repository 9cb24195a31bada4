"""FHIR search: parsing the query, building one SQL statement over the index, keyset paging.

Paging is by keyset (sort value, id), so ``next``/``previous`` links stay correct while data changes — a page
never repeats or skips a resource because something was inserted in front of it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson
from sqlalchemy import ColumnElement, and_, exists, func, not_, or_, select
from sqlalchemy.orm import Session

from services.kit.db import READER
from services.kit.errors import BadRequest
from services.share.crypto.blind import BlindIndex, normalise
from services.share.store import params as P
from services.share.store.models import ResourceHead, ResourceVersion, SearchEntry
from services.share.store.statements import VERSION_COLUMNS, VersionRow, statements

# ``_totalMethod=count`` is the Aidbox spelling some clients (fhirpy's ``count()``) send for ``_total=accurate``.
CONTROL = {
    "_count",
    "_sort",
    "_include",
    "_revinclude",
    "_summary",
    "_format",
    "_cursor",
    "_before",
    "_total",
    "_totalMethod",
}
DATE_PREFIXES = ("eq", "ne", "lt", "le", "gt", "ge")
STRING_MODES = {None: "prefix", "exact": "exact", "contains": "contains"}
MAX_COUNT = 200
DEFAULT_COUNT = 20
_EPOCH = datetime(1, 1, 1, tzinfo=UTC)


@dataclass
class Filter:
    name: str
    kind: str
    modifier: str | None
    values: list[str]


@dataclass
class SearchQuery:
    resource_type: str
    filters: list[Filter] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    sort: str = "_lastUpdated"
    descending: bool = True
    after: tuple[datetime, str] | None = None
    before: tuple[datetime, str] | None = None
    summary_count: bool = False
    want_total: bool = False
    includes: list[tuple[str, str]] = field(default_factory=list)
    revincludes: list[tuple[str, str]] = field(default_factory=list)
    echo: list[tuple[str, str]] = field(default_factory=list)  # the query as given, for paging links
    # Set by the access gate for a search across patients: only resources of patients the caller may see.
    visible: ColumnElement[bool] | None = None


def bad(message: str, parameter: str) -> BadRequest:
    """A refused search; ``parameter`` is named in ``message`` (HTTP headers cannot carry arbitrary text)."""
    return BadRequest(message, code="invalid_search")


def parse(resource_type: str, items: list[tuple[str, str]]) -> SearchQuery:
    query = SearchQuery(resource_type)
    known = P.PARAMS.get(resource_type, {})
    for raw_name, value in items:
        name, _, modifier = raw_name.partition(":")
        if name in CONTROL:
            _control(query, name, value, known)
            if name not in ("_cursor", "_before"):
                query.echo.append((raw_name, value))
            continue
        query.echo.append((raw_name, value))
        if name == "_id":
            kind = "id"
        elif name == "_lastUpdated":
            kind = "date"
        elif name in known:
            kind = known[name].kind
        else:
            raise bad(f"unknown search parameter {raw_name!r} for {resource_type}; see /fhir/metadata", raw_name)
        if modifier and not (kind == "string" and modifier in ("exact", "contains")):
            raise bad(f"modifier :{modifier} is not supported on {name}", raw_name)
        values = [v for v in value.split(",") if v != ""]
        if not values:
            raise bad(f"search parameter {raw_name} has no value", raw_name)
        if kind == "date":
            for item in values:
                _date_value(item, raw_name)
        query.filters.append(Filter(name, kind, modifier or None, values))
    return query


def _control(query: SearchQuery, name: str, value: str, known: dict[str, P.Param]) -> None:
    if name == "_count":
        if not value.isdigit():
            raise bad("_count must be a non-negative integer", name)
        query.count = min(int(value), MAX_COUNT)
    elif name == "_sort":
        key = value.removeprefix("-")
        if key != "_lastUpdated" and (key not in known or known[key].kind != "date"):
            raise bad(f"_sort supports _lastUpdated and date parameters, not {value!r}", name)
        query.sort, query.descending = key, value.startswith("-")
    elif name == "_summary":
        if value != "count":
            raise bad("only _summary=count is supported", name)
        query.summary_count = True
    elif name in ("_total", "_totalMethod"):
        if value not in ("none", "estimate", "accurate", "count"):
            raise bad(f"{name} must be none, estimate or accurate", name)
        query.want_total = value != "none"
    elif name in ("_cursor", "_before"):
        position = _decode_cursor(value)
        if name == "_cursor":
            query.after = position
        else:
            query.before = position
    elif name in ("_include", "_revinclude"):
        _include(query, name, value)


def _include(query: SearchQuery, name: str, value: str) -> None:
    parts = value.split(":")
    if len(parts) < 2:
        raise bad(f"{name} must be Type:parameter", name)
    source, param_name = parts[0], parts[1]
    param = P.PARAMS.get(source, {}).get(param_name)
    if param is None or param.kind != "reference":
        raise bad(f"{value!r} is not a reference search parameter", name)
    if name == "_include":
        if source != query.resource_type:
            raise bad(f"_include must start with {query.resource_type}", name)
        query.includes.append((source, param_name))
    else:
        query.revincludes.append((source, param_name))


def encode_cursor(sort_value: datetime | None, resource_id: str) -> str:
    raw = orjson.dumps([(sort_value or _EPOCH).isoformat(), resource_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(value: str) -> tuple[datetime, str]:
    try:
        stamp, resource_id = orjson.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
        return datetime.fromisoformat(stamp), str(resource_id)
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise bad("the paging cursor is malformed; start the search again", "_cursor") from None


def _date_value(value: str, parameter: str) -> tuple[str, datetime, datetime]:
    prefix = value[:2] if value[:2] in DATE_PREFIXES else "eq"
    text = value[2:] if value[:2] in DATE_PREFIXES else value
    found = P.date_range(text)
    if found is None:
        raise bad(f"{parameter}: {value!r} is not a FHIR date (YYYY, YYYY-MM, YYYY-MM-DD or a dateTime)", parameter)
    return prefix, found[0], found[1]


def token_query_key(value: str) -> str:
    """The index key a token query looks up (the forms that ``indexing.token_keys`` writes)."""
    system, bar, code = value.rpartition("|")
    if not bar:
        return f"*|{code}"
    if not code:
        return f"{system}|*"
    return f"|{code}" if not system else f"{system}|{code}"


def _date_condition(low: Any, high: Any, prefix: str, qlow: datetime, qhigh: datetime) -> ColumnElement[bool]:
    within = and_(low >= qlow, high <= qhigh)
    conditions: dict[str, ColumnElement[bool]] = {
        "eq": within,
        "ne": not_(within),
        "lt": low < qlow,
        "le": low < qhigh,
        "gt": high > qhigh,
        "ge": high > qlow,
    }
    return conditions[prefix]


def one_patient(query: SearchQuery) -> bool:
    """True when the search is confined to one patient's resources (the patient parameter, one value)."""
    return any(f.name == "patient" and f.kind == "reference" and len(f.values) == 1 and not f.modifier
               for f in query.filters)


def patient_of(query: SearchQuery) -> str | None:
    """The patient id a one-patient search is confined to (``patient=Patient/x``, ``patient=x``), else None."""
    if not one_patient(query):
        return None
    value = next(f.values[0] for f in query.filters if f.name == "patient" and f.kind == "reference")
    return value.split("/_history/")[0].rstrip("/").rsplit("/", 1)[-1]


def patient_timeline(query: SearchQuery) -> bool:
    """True for the first page of ``patient=<id>`` alone, newest first (by _lastUpdated)."""
    return (len(query.filters) == 1 and one_patient(query) and query.sort == "_lastUpdated" and query.descending
            and query.after is None and query.before is None)


class Match(NamedTuple):
    resource_type: str
    resource_id: str
    current: VersionRow  # its current version, read in the same statement as the page


class SearchRunner:
    def __init__(self, blind: BlindIndex) -> None:
        self.blind = blind

    def where(self, network_id: str, query: SearchQuery) -> list[ColumnElement[bool]]:
        conditions: list[ColumnElement[bool]] = [
            ResourceHead.network_id == network_id,
            ResourceHead.resource_type == query.resource_type,
            ResourceHead.deleted.is_(False),
        ]
        if query.visible is not None:
            conditions.append(query.visible)
        for item in query.filters:
            conditions.append(or_(*(self._one(network_id, query.resource_type, item, v) for v in item.values)))
        return conditions

    def _entry(
        self, network_id: str, resource_type: str, name: str, *conditions: ColumnElement[bool]
    ) -> ColumnElement[bool]:
        # network_id leads the lookup index; it is also one more guarantee that nothing crosses networks.
        return exists(
            select(SearchEntry.id).where(
                SearchEntry.network_id == network_id,
                SearchEntry.resource_type == resource_type,
                SearchEntry.resource_id == ResourceHead.resource_id,
                SearchEntry.param == name,
                *conditions,
            )
        )

    def _one(self, network_id: str, resource_type: str, item: Filter, value: str) -> ColumnElement[bool]:
        if item.kind == "id":
            return ResourceHead.resource_id == value
        if item.kind == "date":
            prefix, qlow, qhigh = _date_value(value, item.name)
            if item.name == "_lastUpdated":
                stamp = ResourceHead.last_updated
                return (
                    _date_condition(stamp, stamp, prefix, qlow, qhigh)
                    if prefix not in ("eq", "ne")
                    else (and_(stamp >= qlow, stamp < qhigh) if prefix == "eq" else or_(stamp < qlow, stamp >= qhigh))
                )
            # Date rows only, said outright: their index holds nothing else (models.py), and a condition on
            # date_high alone ("gt", "ne") would not tell the planner so.
            return self._entry(
                network_id,
                resource_type,
                item.name,
                and_(SearchEntry.date_low.is_not(None),
                     _date_condition(SearchEntry.date_low, SearchEntry.date_high, prefix, qlow, qhigh)),
            )
        if item.kind == "token":
            key = token_query_key(value)
            return self._entry(
                network_id, resource_type, item.name, SearchEntry.value == self.blind.token(network_id, f"tok:{key}")
            )
        if item.kind == "uri":
            return self._entry(
                network_id, resource_type, item.name, SearchEntry.value == self.blind.token(network_id, f"uri:{value}")
            )
        if item.kind == "reference":
            return self._entry(
                network_id,
                resource_type,
                item.name,
                SearchEntry.value.in_(self._references(resource_type, item.name, value)),
            )
        tokens = self.blind.query_tokens(network_id, value, STRING_MODES[item.modifier])  # type: ignore[arg-type]
        if not tokens:
            raise bad(f"{item.name}: the search text is empty after normalisation", item.name)
        return and_(*(self._entry(network_id, resource_type, item.name, SearchEntry.value == t) for t in tokens))

    @staticmethod
    def _references(resource_type: str, name: str, value: str) -> list[str]:
        parts = value.split("/_history/")[0].rstrip("/").split("/")
        if len(parts) >= 2:
            return [f"{parts[-2]}/{parts[-1]}"]
        targets = P.PARAMS[resource_type][name].targets
        return [f"{target}/{value}" for target in targets]

    def confirm(self, network_id: str, query: SearchQuery, body: bytes) -> bool:
        """Re-check ``:contains`` on the decrypted resource: bigram tokens can match text that does not contain
        the query (ab + bc in "ab…bc"), so the index narrows and this decides."""
        checks = [f for f in query.filters if f.kind == "string" and f.modifier == "contains"]
        if not checks:
            return True
        resource = orjson.loads(body)
        params = P.PARAMS[query.resource_type]
        for item in checks:
            texts = [
                normalise(text)
                for path in params[item.name].paths
                for value in P.values_at(resource, path)
                for text in P.string_values(value)
            ]
            wanted = [normalise(v) for v in item.values]
            if not any(w in text for w in wanted for text in texts):
                return False
        return True

    def sort_expression(self, query: SearchQuery) -> Any:
        if query.sort == "_lastUpdated":
            return ResourceHead.last_updated
        earliest = (
            select(func.min(SearchEntry.date_low))
            .where(
                SearchEntry.resource_type == query.resource_type,
                SearchEntry.resource_id == ResourceHead.resource_id,
                SearchEntry.param == query.sort,
            )
            .correlate(ResourceHead)
            .scalar_subquery()
        )
        return func.coalesce(earliest, _EPOCH)

    def page(self, db: Session, network_id: str, query: SearchQuery) -> tuple[list[tuple[Match, Any]], bool]:
        """One page of (match, sort value), and whether more lie beyond it in the paging direction."""
        if one_patient(query) and not db.info.get(READER) and db.get_bind().dialect.name == "postgresql":
            # One patient's resources are few whatever the patient: a generic plan fits every such search, and
            # PostgreSQL would otherwise plan each one afresh (measured: 40% of the database's time per search).
            statements(db).generic_plans(db)
        if patient_timeline(query):
            return self._timeline_page(db, network_id, query)
        sort = self.sort_expression(query)
        backwards = query.before is not None
        ascending = not query.descending if not backwards else query.descending
        # One statement for the page and its current versions; columns, not ORM entities (a page is read often).
        version_columns = [getattr(ResourceVersion, c) for c in VERSION_COLUMNS]
        statement = (
            select(sort, *version_columns)
            .select_from(ResourceHead)
            .join(ResourceVersion, and_(ResourceVersion.resource_type == ResourceHead.resource_type,
                                        ResourceVersion.resource_id == ResourceHead.resource_id,
                                        ResourceVersion.version == ResourceHead.version))
            .where(*self.where(network_id, query))
        )
        position = query.before if backwards else query.after
        if position is not None:
            value, resource_id = position
            later = or_(sort > value, and_(sort == value, ResourceHead.resource_id > resource_id))
            earlier = or_(sort < value, and_(sort == value, ResourceHead.resource_id < resource_id))
            statement = statement.where(later if ascending else earlier)
        order = (
            (sort.asc(), ResourceHead.resource_id.asc())
            if ascending
            else (sort.desc(), ResourceHead.resource_id.desc())
        )
        found = db.execute(statement.order_by(*order).limit(query.count + 1))
        rows = [(Match(row[1], row[2], VersionRow(*row[1:])), row[0]) for row in found]
        more = len(rows) > query.count
        rows = rows[: query.count]
        if backwards:
            rows.reverse()
        return rows, more

    def page_with_facts(self, db: Session, network_id: str, query: SearchQuery, patient_id: str, subject: str,
                        now: datetime) -> tuple[list[tuple[Match, Any]], bool, list[tuple[Any, ...]] | None]:
        """``page`` of a patient timeline (``patient_timeline(query)``) with its patient's access facts, read in the
        same statement where the database allows (Statements.timeline_with_facts); facts None otherwise."""
        (reference,) = self._references(query.resource_type, "patient", query.filters[0].values[0])
        found, facts = statements(db).timeline_with_facts(db, network_id, query.resource_type, reference,
                                                          query.count + 1, patient_id, subject, now)
        rows = [(Match(row.resource_type, row.resource_id, row), row.last_updated) for row in found]
        return rows[: query.count], len(rows) > query.count, facts

    def _timeline_page(self, db: Session, network_id: str, query: SearchQuery) -> tuple[list[tuple[Match, Any]], bool]:
        """The first page of one patient's resources of a type, newest first: what a tablet asks for most.

        The same answer as the general query (a test holds them equal), from one prepared plain statement —
        building the general query's expression tree costs more CPU than the database spends answering it.
        """
        (reference,) = self._references(query.resource_type, "patient", query.filters[0].values[0])
        found = statements(db).patient_timeline(db, network_id, query.resource_type, reference, query.count + 1)
        rows = [(Match(row.resource_type, row.resource_id, row), row.last_updated) for row in found]
        return rows[: query.count], len(rows) > query.count

    def total(self, db: Session, network_id: str, query: SearchQuery) -> int:
        statement = select(func.count()).select_from(ResourceHead).where(*self.where(network_id, query))
        return int(db.scalar(statement) or 0)

    def included(
        self, db: Session, network_id: str, query: SearchQuery, matches: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        """(type, id) of resources pulled in by _include and _revinclude, without duplicates or matches."""
        wanted: list[tuple[str, str]] = []
        seen = set(matches)
        ids = [resource_id for _, resource_id in matches]
        references = [f"{t}/{i}" for t, i in matches]
        for source, name in query.includes:
            rows = db.execute(
                select(SearchEntry.value).where(
                    SearchEntry.network_id == network_id,
                    SearchEntry.resource_type == source,
                    SearchEntry.param == name,
                    SearchEntry.resource_id.in_(ids),
                )
            )
            for (value,) in rows:
                target_type, _, target_id = str(value).partition("/")
                if target_id and (target_type, target_id) not in seen:
                    seen.add((target_type, target_id))
                    wanted.append((target_type, target_id))
        for source, name in query.revincludes:
            found = db.scalars(
                select(SearchEntry.resource_id).where(
                    SearchEntry.network_id == network_id,
                    SearchEntry.resource_type == source,
                    SearchEntry.param == name,
                    SearchEntry.value.in_(references),
                )
            )
            for resource_id in found:
                if (source, resource_id) not in seen:
                    seen.add((source, resource_id))
                    wanted.append((source, resource_id))
        return wanted
