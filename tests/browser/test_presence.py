"""Joins and leaves are shown as such, "who is here" follows, Leave goes back to /."""

from __future__ import annotations

import asyncio

import pytest

from tests.browser.people import People
from tests.support import Server

pytestmark = pytest.mark.browser


async def test_join_leave_and_members_on_every_technique(people: People, server: Server) -> None:
    server.broker.presence.linger = 1.0
    alice, bob, carol, dave = await people.enter_all(
        ("alice", "websocket"),
        ("bob", "sse"),
        ("carol", "longpolling"),
        ("dave", "refresh"),
        room="presence",
    )
    everyone = ["alice", "bob", "carol", "dave"]

    for person in (alice, bob, carol, dave):
        await person.sees_members(everyone)
    for name in everyone[1:]:
        await alice.sees_notice("join", name)
    for name in everyone:
        await dave.sees_notice("join", name)
    assert await alice.page.locator("#members li.me").all_text_contents() == ["alice"]
    # A join reads as a join, not as a message from that user.
    join = alice.page.locator("#thread .notice.join").filter(has_text="bob")
    assert (await join.text_content() or "").split() == ["bob", "joined"]
    assert await alice.page.locator("#thread .message").count() == 0

    for leaver in (bob, carol, dave):
        await leaver.page.get_by_role("button", name="Leave").click()
        await leaver.page.wait_for_url(f"{leaver.server.url}/?room=presence")
        assert await leaver.page.locator("#welcome").is_visible()
        everyone.remove(leaver.user)
        await alice.sees_notice("leave", leaver.user)
        await alice.sees_members(everyone)
        # A long poll still open when Leave was pressed is answered 410 "left" (so that
        # it cannot bring the member back); the browser reports that status, and only that.
        gone = [p for p in leaver.problems if "410" in p]
        assert all("/longpolling/room/messages" in p or "410 (Gone)" in p for p in gone), gone
        leaver.problems[:] = [p for p in leaver.problems if p not in gone]
    left = alice.page.locator("#thread .notice.leave").filter(has_text="bob")
    assert (await left.text_content() or "").split() == ["bob", "left"]

    # A closed connection lingers (5 s, 1 s here) before it counts as gone: wait past
    # that, then check nobody came back and nobody left twice.
    presence = alice.server.broker.presence
    await asyncio.sleep(presence.linger + presence.reap_interval + 0.5)
    await alice.sees_members(["alice"], wait_ms=1_000)
    for name in ("bob", "carol", "dave"):
        assert await alice.notices("join", name) == 1, name
        assert await alice.notices("leave", name) == 1, name
    assert await alice.server.broker.members("presence") == ["alice"]
