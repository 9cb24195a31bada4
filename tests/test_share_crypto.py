"""Encryption at rest: sealing, the key ring, data keys (rotation, shredding) and blind indexes.

Data-key tests run against real databases, SQLite and PostgreSQL, each test on a fresh one (rewrap walks the
whole table, so tests must not see each other's keys). The schema comes from the models here; the migration
test checks that the migrations build the same one.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from services.kit.db import READER, TransactionRequired, make_engine
from services.kit.settings import Settings
from services.share.crypto.blind import _MAX_CACHED_VOCABULARY, PREFIX_CAP, BlindIndex, normalise
from services.share.crypto.datakeys import DataKeys, KeyDestroyed, UnknownDataKey
from services.share.crypto.envelope import TamperedCiphertext, open_sealed, resource_aad, seal, sealer
from services.share.crypto.keyring import KekRotationRefused, KeyRing, UnknownKek
from services.share.crypto.models import DataKey
from services.share.models import ShareBase

KEY = bytes(range(32))


def key_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"data_dir": tmp_path, "key_dir": None, "share_keks": None, "share_index_key": None}
    return Settings(**{**values, **overrides})


@pytest.fixture
def keyring(tmp_path: Path) -> KeyRing:
    return KeyRing.load(key_settings(tmp_path))


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    ShareBase.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def net() -> str:
    return f"net-{uuid.uuid4().hex[:8]}"


# Envelope ---------------------------------------------------------------------------------------------


def test_nonces_never_repeat_across_threads_or_a_fork() -> None:
    """Nonces come from a pool of OS randomness (envelope._Nonces): each one handed out once, by any thread, and
    a forked child draws fresh ones rather than the parent's next ones."""
    per_thread: list[list[bytes]] = [[] for _ in range(4)]

    def seal_many(out: list[bytes]) -> None:
        out.extend(seal(KEY, b"x", b"aad")[1:13] for _ in range(3000))  # past several pool refills

    threads = [threading.Thread(target=seal_many, args=(out,)) for out in per_thread]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    nonces = [nonce for out in per_thread for nonce in out]
    assert len(set(nonces)) == len(nonces) == 12000
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child: its next nonce, to the parent, then out without running anything else
        os.write(write_end, seal(KEY, b"x", b"aad")[1:13])
        os._exit(0)
    os.close(write_end)
    from_child = os.read(read_end, 12)
    os.waitpid(child, 0)
    os.close(read_end)
    assert len(from_child) == 12 and from_child != seal(KEY, b"x", b"aad")[1:13]


@pytest.mark.parametrize("size", [0, 1, 4096, 100_000])

def test_seal_round_trip(size: int) -> None:
    body = bytes(i % 251 for i in range(size))
    aad = resource_aad("Patient", "p1", 1)
    blob = seal(KEY, body, aad)
    assert open_sealed(KEY, blob, aad) == body
    assert seal(KEY, body, aad) != blob  # a fresh nonce every time


def test_a_sealer_interoperates_with_plain_bytes() -> None:
    ready, aad = sealer(KEY), resource_aad("Patient", "p1", 1)
    assert open_sealed(KEY, seal(ready, b"body", aad), aad) == b"body"
    assert open_sealed(ready, seal(KEY, b"body", aad), aad) == b"body"
    with pytest.raises(TamperedCiphertext):
        open_sealed(sealer(bytes(32)), seal(ready, b"body", aad), aad)
    with pytest.raises(ValueError):
        sealer(bytes(16))


def test_sealers_are_kept_for_a_few_keys_and_forgotten_with_the_key(keyring: KeyRing,
                                                                    sessions: sessionmaker[Session]) -> None:
    keys, network = DataKeys(keyring, sealer_cache_size=2), net()
    with sessions() as db:
        found = {p: keys.key_for(db, network, p) for p in ("p1", "p2", "p3")}
        db.commit()
    first = keys.sealer(*found["p1"])
    assert keys.sealer(*found["p1"]) is first  # kept
    keys.sealer(*found["p2"]), keys.sealer(*found["p3"])
    assert keys.sealer(*found["p1"]) is not first  # bounded: the oldest went
    again = keys.sealer(*found["p1"])
    with sessions() as db:
        keys.destroy(db, network, "p1")
        db.commit()
    assert keys.sealer(*found["p1"]) is not again  # evicted with its key


def test_resource_aad_names_type_id_and_version() -> None:
    assert resource_aad("Patient", "123", 4) == b"renkei:v1:Patient/123/_history/4"
    with pytest.raises(ValueError):
        resource_aad("Patient", "1/_history/2", 3)


@pytest.mark.parametrize(
    "moved_to", [("Observation", "p1", 1), ("Patient", "p2", 1), ("Patient", "p1", 2), ("Patient", "p10", 1)]
)
def test_a_moved_ciphertext_does_not_open(moved_to: tuple[str, str, int]) -> None:
    blob = seal(KEY, b'{"resourceType":"Patient"}', resource_aad("Patient", "p1", 1))
    with pytest.raises(TamperedCiphertext):
        open_sealed(KEY, blob, resource_aad(*moved_to))
    with pytest.raises(TamperedCiphertext):
        open_sealed(bytes(32), blob, resource_aad("Patient", "p1", 1))


def test_flipping_any_byte_fails() -> None:
    aad = resource_aad("Patient", "p1", 1)
    blob = seal(KEY, b"wound photo note", aad)
    for index in range(len(blob)):
        altered = bytearray(blob)
        altered[index] ^= 0x01
        with pytest.raises(TamperedCiphertext):
            open_sealed(KEY, bytes(altered), aad)
    for cut in (0, 1, 13, 28, len(blob) - 1):
        with pytest.raises(TamperedCiphertext):
            open_sealed(KEY, blob[:cut], aad)


def test_only_256_bit_keys() -> None:
    with pytest.raises(ValueError):
        seal(bytes(16), b"x", b"")


# Key ring ---------------------------------------------------------------------------------------------


def test_key_files_are_private_and_rotation_adds_a_version(tmp_path: Path) -> None:
    ring = KeyRing.load(key_settings(tmp_path))
    assert ring.current_version == 1 and not ring.from_environment
    assert ring.rotate() == 2
    assert ring.current_version == 2 and ring.versions == [1, 2]
    key_dir = tmp_path / "keys"
    for name in ("share-kek-1.key", "share-kek-2.key", "share-index.key"):
        assert stat.S_IMODE((key_dir / name).stat().st_mode) == 0o600, name
    again = KeyRing.load(key_settings(tmp_path))
    assert again.key(1) == ring.key(1) and again.key(2) == ring.key(2) and again.key(1) != again.key(2)
    assert again.index_key == ring.index_key


def test_rotation_leaves_the_index_key_and_blind_tokens_alone(keyring: KeyRing) -> None:
    before = BlindIndex(keyring.index_key).token("net-a", "山田太郎")
    keyring.rotate()
    assert BlindIndex(keyring.index_key).token("net-a", "山田太郎") == before
    assert keyring.index_key not in (keyring.key(1), keyring.key(2))


def test_a_ring_sees_versions_another_process_added(tmp_path: Path) -> None:
    server = KeyRing.load(key_settings(tmp_path))
    cli = KeyRing.load(key_settings(tmp_path))
    assert cli.rotate() == 2
    assert server.key(2) == cli.key(2)  # an unknown version rescans the directory
    assert server.current_version == 2


def test_unknown_version(keyring: KeyRing) -> None:
    with pytest.raises(UnknownKek, match="version 7"):
        keyring.key(7)


def test_keys_from_the_environment(tmp_path: Path) -> None:
    keks = {"1": base64.b64encode(bytes(32)).decode(), "2": base64.b64encode(bytes([1]) * 32).decode()}
    index = base64.b64encode(bytes([2]) * 32).decode()
    ring = KeyRing.load(key_settings(tmp_path, share_keks=json.dumps(keks), share_index_key=index))
    assert ring.from_environment and ring.current_version == 2 and ring.key(1) == bytes(32)
    assert ring.index_key == bytes([2]) * 32
    assert not (tmp_path / "keys" / "share-kek-1.key").exists()
    with pytest.raises(KekRotationRefused):
        ring.rotate()
    with pytest.raises(ValueError, match="INDEX_KEY"):
        KeyRing.load(key_settings(tmp_path, share_keks=json.dumps(keks)))


@pytest.mark.parametrize(
    "raw", ["not json", "{}", '{"0": "AAAA"}', '{"x": "AAAA"}', '{"1": "AAAA"}', '{"1": "!!"}', '["a"]']
)
def test_malformed_environment_keys_are_refused(tmp_path: Path, raw: str) -> None:
    index = base64.b64encode(bytes(32)).decode()
    with pytest.raises(ValueError):
        KeyRing.load(key_settings(tmp_path, share_keks=raw, share_index_key=index))


# Data keys --------------------------------------------------------------------------------------------


def test_key_for_is_stable_and_distinct(keyring: KeyRing, sessions: sessionmaker[Session]) -> None:
    keys = DataKeys(keyring)
    network, other = net(), net()
    with sessions() as db:
        first = keys.key_for(db, network, "p1")
        assert keys.key_for(db, network, "p1") == first
        db.commit()
    with sessions() as db:
        assert DataKeys(keyring).key_for(db, network, "p1") == first  # from the database, not a cache
        ids = {first[0], keys.key_for(db, network, "p2")[0], keys.key_for(db, other, "p1")[0]}
        ids |= {keys.key_for(db, network, None)[0], keys.key_for(db, other, None)[0]}
        assert keys.key_for(db, network, "") == keys.key_for(db, network, None)
        db.commit()
    assert len(ids) == 5
    with sessions() as db:
        raws = {DataKeys(keyring).unwrap(db, key_id) for key_id in ids}
    assert len(raws) == 5 and all(len(raw) == 32 for raw in raws)


def test_concurrent_creators_end_with_one_key(keyring: KeyRing, sessions: sessionmaker[Session]) -> None:
    keys = DataKeys(keyring)
    network, workers = net(), 8
    barrier = threading.Barrier(workers)
    results: list[tuple[str, bytes]] = []
    errors: list[BaseException] = []

    def create() -> None:
        try:
            with sessions() as db:
                barrier.wait()
                results.append(keys.key_for(db, network, "p1"))
                db.commit()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=create) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(results) == workers and len(set(results)) == 1
    with sessions() as db:
        assert db.scalar(select(func.count()).select_from(DataKey).where(DataKey.network_id == network)) == 1


def test_a_rolled_back_key_is_not_handed_out(keyring: KeyRing, sessions: sessionmaker[Session]) -> None:
    keys = DataKeys(keyring)
    network = net()
    with sessions() as db:
        abandoned, _ = keys.key_for(db, network, "p1")
        db.rollback()
    with sessions() as db:
        kept, _ = keys.key_for(db, network, "p1")
        db.commit()
    assert kept != abandoned
    with sessions() as db, pytest.raises(UnknownDataKey):
        DataKeys(keyring).unwrap(db, abandoned)


def test_no_key_is_created_outside_a_transaction(keyring: KeyRing, engine: Engine) -> None:
    """A session of Database.reading() may use a committed key but not create one: the key must commit with the
    resource it seals, so the work is asked to run in a transaction instead."""
    reader = sessionmaker(make_engine(str(engine.url.render_as_string(hide_password=False)), reader=True),
                          info={READER: True})
    network, keys = net(), DataKeys(keyring)
    with reader() as db, pytest.raises(TransactionRequired):
        keys.key_for(db, network, "p1")
    with sessionmaker(engine)() as db:
        assert db.scalar(select(func.count()).select_from(DataKey).where(DataKey.network_id == network)) == 0
        created = keys.key_for(db, network, "p1")
        db.commit()
    with reader() as db:
        assert DataKeys(keyring).key_for(db, network, "p1") == created
    reader.kw["bind"].dispose()


def test_rotation_rewraps_every_key_and_old_bodies_still_open(
    tmp_path: Path, keyring: KeyRing, sessions: sessionmaker[Session]
) -> None:
    keys = DataKeys(keyring)
    network = net()
    bodies: dict[str, bytes] = {}
    with sessions() as db:
        for patient in [None, *(f"p{i}" for i in range(7))]:
            key_id, raw = keys.key_for(db, network, patient)
            bodies[key_id] = seal(raw, f"note for {patient}".encode(), resource_aad("Observation", key_id, 1))
        keys.destroy(db, network, "p6")
        db.commit()
    assert keyring.rotate() == 2
    progress: list[tuple[int, int]] = []
    with sessions() as db:
        assert keys.rewrap_all(db, lambda done, total: progress.append((done, total)), batch_size=3) == 7
        db.commit()
    assert progress[0] == (0, 7) and progress[-1] == (7, 7) and len(progress) == 4
    with sessions() as db:
        live = select(DataKey.id, DataKey.kek_version).where(DataKey.destroyed_at.is_(None))
        versions = {row.id: row.kek_version for row in db.execute(live)}
        assert set(versions.values()) == {2}
        assert keys.rewrap_all(db) == 0
        fresh = DataKeys(KeyRing.load(key_settings(tmp_path)))  # a restarted server: empty cache, keys from disk
        for key_id in versions:
            body = open_sealed(fresh.unwrap(db, key_id), bodies[key_id], resource_aad("Observation", key_id, 1))
            assert body.startswith(b"note for ")
        new_id, _ = fresh.key_for(db, network, "p-new")
        assert db.scalar(select(DataKey.kek_version).where(DataKey.id == new_id)) == 2


def test_destroy_shreds_the_key(keyring: KeyRing, sessions: sessionmaker[Session]) -> None:
    keys = DataKeys(keyring)
    network = net()
    with sessions() as db:
        key_id, raw = keys.key_for(db, network, "p1")
        other_id, _ = keys.key_for(db, network, "p2")
        db.commit()
    with sessions() as db:
        assert keys.unwrap(db, key_id) == raw  # now cached
        assert keys.destroy(db, network, "p1") is True
        db.commit()
    with sessions() as db:
        for reader in (keys, DataKeys(keyring)):
            with pytest.raises(KeyDestroyed):
                reader.unwrap(db, key_id)
        with pytest.raises(KeyDestroyed):
            keys.key_for(db, network, "p1")
        row = db.execute(select(DataKey.wrapped, DataKey.destroyed_at).where(DataKey.id == key_id)).one()
        assert row.wrapped == b"" and row.destroyed_at is not None
        assert keys.destroy(db, network, "p1") is False
        assert len(keys.unwrap(db, other_id)) == 32


def test_a_read_racing_an_uncommitted_destroy_is_evicted_at_commit(
    keyring: KeyRing, sessions: sessionmaker[Session]
) -> None:
    keys = DataKeys(keyring)
    network = net()
    with sessions() as db:
        key_id, raw = keys.key_for(db, network, "p1")
        db.commit()
    with sessions() as eraser, sessions() as reader:
        assert keys.destroy(eraser, network, "p1")
        assert keys.unwrap(reader, key_id) == raw  # the destroy is not committed yet: the key is cached again
        reader.rollback()
        eraser.commit()
    with sessions() as db, pytest.raises(KeyDestroyed):
        keys.unwrap(db, key_id)


def test_erasing_a_patient_without_a_key_leaves_a_tombstone(
    keyring: KeyRing, sessions: sessionmaker[Session]
) -> None:
    keys = DataKeys(keyring)
    network = net()
    with sessions() as db:
        assert keys.destroy(db, network, "never-written") is False
        db.commit()
    with sessions() as db, pytest.raises(KeyDestroyed):
        keys.key_for(db, network, "never-written")


def test_another_instance_sees_a_destroy_when_its_cache_expires(
    keyring: KeyRing, sessions: sessionmaker[Session]
) -> None:
    server, cli = DataKeys(keyring, cache_ttl_seconds=0), DataKeys(keyring)
    network = net()
    with sessions() as db:
        key_id, _ = server.key_for(db, network, "p1")
        db.commit()
    with sessions() as db:
        server.unwrap(db, key_id)
        cli.destroy(db, network, "p1")
        db.commit()
    with sessions() as db, pytest.raises(KeyDestroyed):
        server.unwrap(db, key_id)


def test_wrapped_keys_are_bound_to_their_rows(keyring: KeyRing, sessions: sessionmaker[Session]) -> None:
    keys = DataKeys(keyring)
    network = net()
    with sessions() as db:
        first, _ = keys.key_for(db, network, "p1")
        second, _ = keys.key_for(db, network, "p2")
        wrapped = {row.id: row.wrapped for row in db.execute(select(DataKey.id, DataKey.wrapped))}
        db.execute(update(DataKey).where(DataKey.id == first).values(wrapped=wrapped[second]))
        db.commit()
    with sessions() as db, pytest.raises(TamperedCiphertext):
        DataKeys(keyring).unwrap(db, first)


def test_the_database_holds_no_raw_key(keyring: KeyRing, sessions: sessionmaker[Session]) -> None:
    with sessions() as db:
        _, raw = DataKeys(keyring).key_for(db, net(), "p1")
        db.commit()
        stored = db.scalars(select(DataKey.wrapped)).one()
    assert raw not in stored and keyring.key(1) not in stored


# Blind indexes ----------------------------------------------------------------------------------------

BLIND = BlindIndex(bytes(range(100, 132)))


@pytest.mark.parametrize(
    "spellings",
    [
        ("山田 太郎", "山田　太郎", "山田太郎", " 山田・太郎 "),
        ("ﾔﾏﾀﾞ", "ヤマダ", "やまだ", "ヤ マ ダ"),
        ("ＡＢＣ", "abc", "ABC", "ａｂｃ"),
        ("ｶﾀｶﾅ", "カタカナ", "かたかな"),
        ("ヴァ", "ｳﾞｧ", "ゔぁ"),
        ("ＰＴ－００１２", "pt-0012"),
    ],
)
def test_spellings_of_one_value_share_a_token(spellings: tuple[str, ...]) -> None:
    assert len({BLIND.token("net-a", spelling) for spelling in spellings}) == 1
    assert len({frozenset(BLIND.string_tokens("net-a", spelling)) for spelling in spellings}) == 1


def test_different_values_and_networks_give_different_tokens() -> None:
    assert BLIND.token("net-a", "山田") != BLIND.token("net-a", "山中")
    assert BLIND.token("net-a", "山田") != BLIND.token("net-b", "山田")
    assert not BLIND.string_tokens("net-a", "やまだ") & BLIND.string_tokens("net-b", "やまだ")
    assert BLIND.token("net-a", "山田") != BlindIndex(bytes(32)).token("net-a", "山田")


def test_vocabulary_tokens_are_the_tokens_remembered_within_a_bound() -> None:
    blind = BlindIndex(bytes(range(32)))
    assert blind.vocabulary_token("net-a", "tok:*|completed") == blind.token("net-a", "tok:*|completed")
    assert blind.vocabulary_token("net-b", "tok:*|completed") == blind.token("net-b", "tok:*|completed")
    for n in range(_MAX_CACHED_VOCABULARY + 10):
        assert blind.vocabulary_token("net-a", f"tok:*|{n}") == blind.token("net-a", f"tok:*|{n}")
    assert len(blind._vocabulary) <= _MAX_CACHED_VOCABULARY


def test_identifiers_and_text_are_never_remembered() -> None:
    from services.share.store.params import PARAMS

    remembered = {(kind, p.name) for kind, ps in PARAMS.items() for p in ps.values() if p.vocabulary}
    assert {("QuestionnaireResponse", "status"), ("QuestionnaireResponse", "questionnaire")} <= remembered
    assert not {name for _, name in remembered} & {"identifier", "name", "family", "given", "address", "phone"}
    assert all(p.kind in ("token", "uri") for ps in PARAMS.values() for p in ps.values() if p.vocabulary)


def test_tokens_reveal_nothing_of_the_value() -> None:
    value = "Yamada 山田 ヤマダ 0012"
    tokens = BLIND.string_tokens("net-a", value) | {BLIND.token("net-a", value)}
    assert all(re.fullmatch("[0-9a-f]{32}", token) for token in tokens)
    text = " ".join(tokens)
    for piece in ("yamada", "0012", normalise(value), "山田".encode().hex(), "やまだ".encode().hex()):
        assert piece not in text


def test_string_search_modes() -> None:
    stored = BLIND.string_tokens("net-a", "ヤマダ タロウ")
    assert BLIND.query_tokens("net-a", "やま") <= stored  # prefix is FHIR's default
    assert BLIND.query_tokens("net-a", "ﾔﾏﾀﾞﾀﾛｳ", "exact") <= stored
    assert not BLIND.query_tokens("net-a", "やま", "exact") <= stored
    assert not BLIND.query_tokens("net-a", "たろう") <= stored  # not a prefix
    assert BLIND.query_tokens("net-a", "たろう", "contains") <= stored
    assert BLIND.query_tokens("net-a", "マダタ", "contains") <= BLIND.string_tokens("net-a", "ヤマダタロウ")
    assert BLIND.query_tokens("net-a", "ろ", "contains") <= stored
    assert not BLIND.query_tokens("net-a", "だや", "contains") <= stored
    assert BLIND.query_tokens("net-a", " ・ ") == set() == BLIND.string_tokens("net-a", "　")


def test_long_prefixes_are_capped() -> None:
    value = "あ" * 50 + "い" * 50
    assert BLIND.query_tokens("net-a", value[:80]) <= BLIND.string_tokens("net-a", value)
    assert len(BLIND.string_tokens("net-a", value)) == 1 + PREFIX_CAP + 2 + 3


JAPANESE = st.text(
    alphabet=st.sampled_from(list("山田太郎花子やまだヤマダｶﾀｶﾅﾞﾟｰ・ \u3000ＡＢａｂAb1１-゛゙ヷワうウ")), max_size=30
)
TEXT = JAPANESE | st.text(max_size=30)


@given(TEXT)
def test_normalise_is_idempotent(value: str) -> None:
    assert normalise(normalise(value)) == normalise(value)


@settings(max_examples=300)
@given(TEXT, st.data())
def test_every_substring_is_found_by_contains(value: str, data: st.DataObject) -> None:
    text = normalise(value)
    if not text:
        return
    start = data.draw(st.integers(0, len(text) - 1))
    end = data.draw(st.integers(start + 1, len(text)))
    assert BLIND.query_tokens("net-a", text[start:end], "contains") <= BLIND.string_tokens("net-a", value)


@settings(max_examples=300)
@given(TEXT, st.data())
def test_every_prefix_and_the_whole_value_are_found(value: str, data: st.DataObject) -> None:
    text = normalise(value)
    if not text:
        return
    stored = BLIND.string_tokens("net-a", value)
    end = data.draw(st.integers(1, len(text)))
    assert BLIND.query_tokens("net-a", text[:end], "prefix") <= stored
    assert BLIND.query_tokens("net-a", value, "exact") <= stored


# Keys read along with resources ---------------------------------------------------------------------------


def test_a_read_unwraps_a_cold_key_from_its_own_row_without_a_key_query(
    keyring: KeyRing, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.share.store.indexing import Indexer
    from services.share.store.service import Caller, Gone, ResourceStore

    network = net()
    caller = Caller(network, "user:x")
    writer = ResourceStore(DataKeys(keyring), Indexer(BlindIndex(keyring.index_key)))
    with sessions.begin() as db:
        pid = writer.create(db, caller, "Patient", {"resourceType": "Patient", "gender": "female"}).resource_id
    # A process that has never seen this patient's key (its cache is cold).
    keys = DataKeys(keyring)
    reader = ResourceStore(keys, Indexer(BlindIndex(keyring.index_key)))
    queries: list[object] = []
    real_execute = Session.execute
    reading: list[Session] = []

    def counting_execute(self: Session, statement: Any, *args: Any, **kwargs: Any) -> Any:
        # This read's session only: the patch is process-wide, and a server another test left running in this
        # worker (its audit chainer, its event hub) may query meanwhile in threads of its own.
        if self in reading:
            queries.append(statement)
        return real_execute(self, statement, *args, **kwargs)

    monkeypatch.setattr(Session, "execute", counting_execute)
    with sessions.begin() as db:
        reading.append(db)
        stored = reader.read(db, caller, "Patient", pid)
    assert json.loads(stored.body)["gender"] == "female"
    assert queries == [], "the key came with the resource's row; no separate key query"
    # Once destroyed (the patient erased), the same path refuses: the row says so.
    monkeypatch.setattr(Session, "execute", real_execute)
    with sessions.begin() as db:
        assert keys.destroy(db, network, pid)
    fresh = ResourceStore(DataKeys(keyring), Indexer(BlindIndex(keyring.index_key)))  # a cold cache again
    with sessions.begin() as db, pytest.raises(Gone):
        fresh.read(db, caller, "Patient", pid)
