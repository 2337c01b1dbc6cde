"""What is installed is the product: serving loads no benchmark code, and the wheel
carries no peer servers and no Node package."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def test_serving_imports_no_benchmark_module() -> None:
    probe = """
import sys
from chatroom import cli
from chatroom.app import create_app
from chatroom.config import Settings
args = cli.build_parser().parse_args(["serve", "--backend", "memory://"])
settings, _ = cli.settings_from(args, env={"CHATROOM_SECRET": "s" * 32})
create_app(settings)
print(sorted(m for m in sys.modules if m.startswith(("chatroom.bench", "bench"))))
"""
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd="/"
    ).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
def test_the_wheel_holds_the_product_only(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("chatroom-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "chatroom/web/static/chat.js" in names  # the pages' own scripts are the product
    static = "chatroom/web/static/"
    assert [n for n in names if n.endswith(".js") and not n.startswith(static)] == []
    assert [n for n in names if Path(n).name.startswith("package") and n.endswith(".json")] == []
    assert [n for n in names if "/peers/" in n or n.startswith("bench/")] == []
    assert "chatroom/web/openapi.json" in names
    assert "chatroom/core/data/confusables.txt" in names


# import name -> the distribution that provides it
_DISTRIBUTIONS = {"prometheus_client": "prometheus-client"}


def _imports_of_the_product() -> set[str]:
    import ast

    names: set[str] = set()
    for path in (ROOT / "src" / "chatroom").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "chatroom"}


def test_every_package_the_product_imports_is_a_declared_dependency() -> None:
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[ <>=!;\[]", r, maxsplit=1)[0].lower() for r in requirements}

    declared = names(project.get("dependencies", []))
    # the Redis client is the redis:// backend's, installed with the `redis` extra
    declared |= names(project["optional-dependencies"]["redis"])
    wanted = {_DISTRIBUTIONS.get(n, n).lower() for n in _imports_of_the_product()}
    assert wanted - declared == set()
    assert {"aiohttp", "itsdangerous", "orjson", "jinja2"} <= declared
