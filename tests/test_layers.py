"""The layers of DESIGN.md, held: each knows only the ones below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src" / "chatroom"


def imports_of(folder: str) -> dict[str, set[str]]:
    """module file -> the chatroom modules it imports."""
    found: dict[str, set[str]] = {}
    for path in sorted((SRC / folder).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        found[str(path.relative_to(SRC))] = {n for n in names if n.startswith("chatroom")}
    return found


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("core", ("chatroom.broker", "chatroom.web", "chatroom.transports", "chatroom.app")),
        ("broker", ("chatroom.web", "chatroom.transports", "chatroom.app")),
        # transports are thin adapters: never the page module
        ("transports", ("chatroom.web.pages", "chatroom.app", "chatroom.cli")),
    ],
)
def test_a_layer_imports_nothing_above_it(layer: str, forbidden: tuple[str, ...]) -> None:
    wrong = {
        module: sorted(n for n in names if n.startswith(forbidden))
        for module, names in imports_of(layer).items()
    }
    assert {m: n for m, n in wrong.items() if n} == {}
