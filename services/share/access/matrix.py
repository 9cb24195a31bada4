"""The permission matrix (``schemas/access/permissions.json``): per profession, which resource kinds and sheet
kinds it may read and write, and which sensitivity labels of sheet sections it may see.

Data, not code: a region changes the file, not a release. Loading checks it against the code systems (every
profession has a row, every label is a known one) and the resource kinds this server supports, and expands
``*`` and ``@group`` so that decisions are set lookups.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.kit.codes import CARE_TEAM_ROLE, PROFESSION, SENSITIVITY_LABEL, SHEET_KIND, code_system, load_code_systems
from services.share.store.types import READ_ONLY, SUPPORTED

Names = list[Annotated[str, Field(min_length=1)]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _ProfessionRow(_Strict):
    read: Names
    write: Names
    sheets_read: Names
    sheets_write: Names
    labels: Names


class _Team(_Strict):
    managers: Names  # care-team role codes whose holders may change the team
    network_admins_manage: bool = True
    # profession -> the care-team role its member takes in the team of a patient they register
    registrant_roles: dict[str, str] = {}
    registrant_default_role: str = "coordinator"


class _BreakGlass(_Strict):
    professions: Names
    hours: float = Field(gt=0, le=24)
    read: Names
    sheets: Names
    labels: Names


class _MatrixFile(_Strict):
    description: str = ""
    version: str
    groups: dict[str, Names] = {}
    professions: dict[str, _ProfessionRow]
    team: _Team
    break_glass: _BreakGlass


class MatrixError(ValueError):
    """The matrix file is not usable; the message names the entry."""


@dataclass(frozen=True)
class Permissions:
    """One profession's row, expanded."""

    read: frozenset[str]
    write: frozenset[str]
    sheets_read: frozenset[str]
    sheets_write: frozenset[str]
    labels: frozenset[str]


@dataclass(frozen=True)
class BreakGlassRule:
    professions: frozenset[str]
    hours: float
    read: frozenset[str]
    sheets: frozenset[str]
    labels: frozenset[str]


@dataclass(frozen=True)
class Matrix:
    version: str
    professions: dict[str, Permissions]
    team_managers: frozenset[str]
    network_admins_manage: bool
    registrant_roles: dict[str, str]
    break_glass: BreakGlassRule
    labels: frozenset[str]
    sheet_kinds: frozenset[str]

    def of(self, profession: str | None) -> Permissions:
        """A profession's permissions; one the matrix does not know gets none."""
        return self.professions.get(profession or "", _NOTHING)


_NOTHING = Permissions(frozenset(), frozenset(), frozenset(), frozenset(), frozenset())


def load_matrix(schemas_dir: Path) -> Matrix:
    path = schemas_dir / "access" / "permissions.json"
    try:
        raw = _MatrixFile.model_validate(orjson.loads(path.read_bytes()))
    except orjson.JSONDecodeError as error:
        raise MatrixError(f"{path} is not valid JSON: {error}") from None
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise MatrixError(f"{path}: {where}: {first['msg']}") from None
    return _expand(raw, schemas_dir)


def _expand(raw: _MatrixFile, schemas_dir: Path) -> Matrix:
    systems = load_code_systems(schemas_dir)
    labels = frozenset(systems[SENSITIVITY_LABEL].concepts)
    sheet_kinds = frozenset(systems[SHEET_KIND].concepts)
    professions = frozenset(code_system(schemas_dir, PROFESSION).concepts)
    roles = frozenset(systems[CARE_TEAM_ROLE].concepts)
    kinds = frozenset(SUPPORTED)
    _require(set(raw.professions) == professions,
             f"professions must be exactly the profession codes: missing {sorted(professions - set(raw.professions))}, "
             f"unknown {sorted(set(raw.professions) - professions)}")
    for name, members in raw.groups.items():
        _require(set(members) <= kinds, f"groups.{name}: unknown resource kinds {sorted(set(members) - kinds)}")

    def names(values: list[str], universe: frozenset[str], where: str) -> frozenset[str]:
        found: set[str] = set()
        for value in values:
            if value == "*":
                found |= universe
            elif value.startswith("@"):
                _require(value[1:] in raw.groups, f"{where}: unknown group {value!r}")
                found |= set(raw.groups[value[1:]])
            else:
                _require(value in universe, f"{where}: unknown {value!r}")
                found.add(value)
        return frozenset(found)

    writable = kinds - READ_ONLY
    expanded = {
        profession: Permissions(
            read=names(row.read, kinds, f"professions.{profession}.read"),
            write=names(row.write, kinds, f"professions.{profession}.write") & writable,
            sheets_read=names(row.sheets_read, sheet_kinds, f"professions.{profession}.sheets_read"),
            sheets_write=names(row.sheets_write, sheet_kinds, f"professions.{profession}.sheets_write"),
            labels=names(row.labels, labels, f"professions.{profession}.labels"),
        )
        for profession, row in raw.professions.items()
    }
    glass = raw.break_glass
    return Matrix(
        version=raw.version,
        professions=expanded,
        team_managers=names(raw.team.managers, roles, "team.managers"),
        network_admins_manage=raw.team.network_admins_manage,
        registrant_roles=_registrant_roles(raw.team, professions, roles),
        break_glass=BreakGlassRule(
            professions=names(glass.professions, professions, "break_glass.professions"),
            hours=glass.hours,
            read=names(glass.read, kinds, "break_glass.read"),
            sheets=names(glass.sheets, sheet_kinds, "break_glass.sheets"),
            labels=names(glass.labels, labels, "break_glass.labels"),
        ),
        labels=labels,
        sheet_kinds=sheet_kinds,
    )


def _registrant_roles(team: _Team, professions: frozenset[str], roles: frozenset[str]) -> dict[str, str]:
    """Every profession's role in the team of a patient they register (the default where none is named)."""
    _require(set(team.registrant_roles) <= professions,
             f"team.registrant_roles: unknown professions {sorted(set(team.registrant_roles) - professions)}")
    named = {**{p: team.registrant_default_role for p in professions}, **team.registrant_roles}
    unknown = sorted(set(named.values()) - roles)
    _require(not unknown, f"team.registrant_roles: unknown roles {unknown}")
    return named


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise MatrixError(message)
