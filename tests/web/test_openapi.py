"""The JSON API against its OpenAPI document, by Schemathesis, over a real socket.

The document is loaded from the running server (GET /api/openapi.json). Every operation
in it gets generated requests, valid ones (positive) and, where it takes parameters,
ones that break its schema (negative); every answer must pass Schemathesis's checks:
no 5xx, a documented status code and content type, a body that matches its schema,
valid data accepted and invalid data refused with a 4xx. Seeded and bounded: the same
requests every run, well under a minute.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import positive_data_acceptance

from chatroom.web.api import openapi_document
from tests.support import Server, login, new_client, publish, serving

# examples per operation and generation mode
EXAMPLES = 40
# the rooms the seeded server holds events in, also used as fixed path parameters
SEEDED = ("lobby", "den")
# a valid value of each parameter, to hold the others still while one is broken
VALID: dict[str, Any] = {"room": "lobby", "limit": 10, "before": "", "cursor": ""}


@schemathesis.deserializer("text/plain")
def plain_text(ctx: schemathesis.DeserializationContext, response: schemathesis.Response) -> str:
    """Text answers (health, metrics) are checked against their schemas too (UTF-8)."""
    return response.content.decode("utf-8")


@dataclass
class Tally:
    examples: Counter[str] = field(default_factory=Counter)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)


def _run(
    operation: Any,
    mode: schemathesis.GenerationMode,
    base_url: str,
    session: requests.Session,
    tally: Tally,
    key: str,
    examples: int = EXAMPLES,
    excluded: Sequence[Any] = (),
    **fixed: Any,
) -> None:
    """Send `examples` generated requests of `operation` and check every answer."""

    @given(case=operation.as_strategy(generation_mode=mode, **fixed))
    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case[Any]) -> None:
        response = case.call_and_validate(
            base_url=base_url, session=session, excluded_checks=list(excluded), timeout=10
        )
        tally.examples[key] += 1
        tally.statuses[(operation.label, response.status_code)] += 1

    check()


def load_operations(base_url: str) -> list[schemathesis.APIOperation[Any, Any, Any, Any]]:
    """The operations of the document the server serves, which must be valid OpenAPI."""
    schema = schemathesis.openapi.from_url(f"{base_url}/api/openapi.json", timeout=10)
    schema.validate()
    operations = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        operations.append(result.ok())
    return operations


def fuzz(base_url: str) -> tuple[set[str], Tally]:
    """Run Schemathesis over every operation the served document describes.

    Per operation: valid requests; invalid ones; invalid ones that break one parameter
    only, the others held valid (so a lenient parser cannot hide behind another's 400);
    and valid ones in the seeded rooms, whose answers hold events.
    """
    operations = load_operations(base_url)
    tally = Tally()
    positive, negative = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE
    with requests.Session() as session:

        def run(operation: Any, mode: schemathesis.GenerationMode, key: str, **fixed: Any) -> None:
            _run(operation, mode, base_url, session, tally, f"{operation.label}{key}", **fixed)

        for operation in operations:
            run(operation, positive, "")
            params = {p.name: p.location for p in operation.iter_parameters()}
            if params:
                run(operation, negative, " (negative)")
            if len(params) > 1:
                for name in params:
                    held = {other: VALID[other] for other in params if other != name}
                    run(
                        operation, negative, f" (negative {name} only)",
                        path_parameters={k: v for k, v in held.items() if params[k] == "path"},
                        query={k: v for k, v in held.items() if params[k] == "query"},
                    )
            if "room" in params:
                # generated room names almost never hold anything: ask the seeded ones too
                for room in SEEDED:
                    run(operation, positive, f" (room={room})", path_parameters={"room": room})
    return {op.label for op in operations}, tally


def fuzz_outage(base_url: str) -> Tally:
    """With the backend gone, valid requests get the documented 503s (and only those)."""
    tally = Tally()
    with requests.Session() as session:
        for operation in load_operations(base_url):
            _run(
                operation, schemathesis.GenerationMode.POSITIVE, base_url, session, tally,
                operation.label, examples=10,
                # a 503 is the right answer now, to valid requests too
                excluded=[not_a_server_error, positive_data_acceptance],
            )
    return tally


async def seed(server: Server) -> None:
    """Rooms with history (hostile text included), members, and more rooms than a page."""
    await publish(server, "lobby", [f"m{i}" for i in range(60)])
    await publish(server, "lobby", ["<script>alert(1)</script>", "😀 مرحبا \u2028 \"q\" \\"])
    await publish(server, "den", ["hello"])
    for i in range(70):
        await publish(server, f"room{i:02}", ["hi"])
    async with new_client() as alice, new_client() as bob:
        await login(alice, server, "alice", room="lobby")
        await login(bob, server, "Zoë", room="den")


async def test_the_served_document_is_the_packaged_file(tmp_path: Path) -> None:
    async with (
        serving(tmp_path) as server,
        new_client() as client,
        client.get(f"{server.url}/api/openapi.json") as response,
    ):
        assert response.status == 200
        assert response.content_type == "application/json"
        body = await response.read()
    assert body == openapi_document()
    document = orjson.loads(body)
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) == {
        "/api/openapi.json",
        "/api/rooms",
        "/api/rooms/{room}/history",
        "/api/rooms/{room}/presence",
        "/healthz",
        "/readyz",
        "/metrics",
    }


@pytest.mark.slow
async def test_every_operation_conforms_to_the_document(tmp_path: Path) -> None:
    async with serving(tmp_path) as server:
        await seed(server)
        covered, tally = await asyncio.to_thread(fuzz, server.url)
        await server.broker.backend.close()
        outage = await asyncio.to_thread(fuzz_outage, server.url)
    print(f"\nschemathesis: {sum(tally.examples.values())} examples, {len(covered)} operations")
    for key, n in sorted(tally.examples.items()):
        print(f"  {n:4} {key}")
    print("  statuses:", dict(sorted(tally.statuses.items())))
    # Schemathesis leaves out the operation that serves the document it was loaded from
    # (GET /api/openapi.json): test_the_served_document_is_the_packaged_file has it.
    assert covered == {
        "GET /api/rooms",
        "GET /api/rooms/{room}/history",
        "GET /api/rooms/{room}/presence",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
    }
    # every operation answered, and the checks saw both sides of the edge
    assert {label for label, _ in tally.statuses} == covered
    for label in ("GET /api/rooms", "GET /api/rooms/{room}/history"):
        assert tally.statuses[(label, 200)] > 0
        assert tally.statuses[(label, 400)] > 0
    # the backend gone: what needs it answers 503 as documented, the rest carries on
    # (presence over SQLite is kept in the process)
    print(f"  outage: {sum(outage.examples.values())} examples,", dict(outage.statuses))
    assert {status for (label, status) in outage.statuses if label.startswith("GET /api")} == {
        200, 503
    }
    assert {status for (label, status) in outage.statuses if "presence" in label} == {200}
    assert outage.statuses[("GET /readyz", 503)] > 0
    assert outage.statuses[("GET /healthz", 200)] > 0
    assert not {label for label, status in outage.statuses if status != 503} - {
        "GET /healthz", "GET /metrics", "GET /api/rooms/{room}/presence"
    }
