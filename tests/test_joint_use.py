"""The public joint-use notice: no login, generated from live data, HTML for people and JSON for machines."""

from __future__ import annotations

import httpx

from tests.infra import LiveServer, Network


def test_the_notice_names_the_items_partners_purpose_and_responsible_party(server: LiveServer,
                                                                          network: Network) -> None:
    http = server.client()
    page = http.get(f"/auth/networks/{network.id}/joint-use")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    text = page.text
    for expected in ("個人データの共同利用について", "服薬情報", "退院時情報共有シート", "テスト訪問看護ステーション",
                     "訪問看護ステーション", "利用目的", "未登録"):
        assert expected in text, expected
    data = http.get(f"/auth/networks/{network.id}/joint-use", headers={"Accept": "application/json"}).json()
    assert {o["id"] for o in data["organizations"]} == set(network.orgs.values())
    assert {i["code"] for i in data["items"]} >= {"general", "medical", "medication", "acp"}
    assert data["responsible_party"] is None and data["purpose"]
    for user in network.users.values():  # organisations only, never a person
        assert user["name"] not in text and user["username"] not in text


def test_the_notice_follows_the_live_directory_and_settings(server: LiveServer, network: Network) -> None:
    admin = network.login("admin")["access_token"]
    http, bearer = server.client(), {"Authorization": f"Bearer {admin}"}
    answer = http.patch("/auth/admin/network/settings", headers=bearer, json={
        "responsible_party": "みどり市医師会 在宅医療連携室", "contact": "03-0000-0000", "purpose": "在宅療養の支援"})
    assert answer.status_code == 200, answer.text
    added = http.post("/auth/admin/organizations", headers=bearer,
                      json={"name": "<script>alert(1)</script>薬局", "type": "pharmacy"})
    assert added.status_code == 201, added.text
    page = http.get(f"/auth/networks/{network.id}/joint-use").text
    assert "みどり市医師会 在宅医療連携室" in page and "03-0000-0000" in page and "在宅療養の支援" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;薬局" in page and "<script>" not in page


def test_an_unknown_network_is_not_found(server: LiveServer) -> None:
    answer = httpx.get(f"{server.base_url}/auth/networks/no-such-network/joint-use")
    assert answer.status_code == 404
