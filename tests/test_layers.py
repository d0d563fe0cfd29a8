"""The layering rules of docs/architecture.md, checked on the source.

- `stt_worker.core` is sans-I/O: it imports no asyncio, no NATS client, no HTTP client or
  server, and nothing of the project outside the core.
- Only `stt_worker.runtime` imports nats.
- `stt_worker.integrations` (framework adapters) reach NATS through the runtime's connection
  and bus alone, and nothing else in the package imports them.
- No class over 300 lines and no function over 60 lines anywhere in the package: the
  layers, the edges (gateway, whisper_server, evaluation, tools, integrations) and config.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "stt_worker"
IO_MODULES = ("asyncio", "nats", "httpx", "starlette", "uvicorn", "websockets", "socket")
MAX_CLASS_LINES = 300
MAX_FUNCTION_LINES = 60


def sources(*layers: str) -> list[Path]:
    roots = [PACKAGE / layer for layer in layers] if layers else [PACKAGE]
    return sorted(path for root in roots for path in root.rglob("*.py"))


def imported(path: Path) -> Iterator[str]:
    """Every module `path` imports, at any depth (lazy imports inside functions too)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def top(module: str) -> str:
    return module.split(".", 1)[0]


def test_the_layers_exist():
    for layer in ("core", "engines", "runtime", "gateway", "tools", "evaluation"):
        assert (PACKAGE / layer / "__init__.py").is_file(), layer
    assert len(sources("core")) >= 10


@pytest.mark.parametrize("path", sources("core"), ids=lambda p: p.name)
def test_the_core_does_no_io_and_depends_on_nothing_above_it(path: Path):
    for module in imported(path):
        assert top(module) not in IO_MODULES, f"{path.name} imports {module}"
        if top(module) == "stt_worker":
            assert module.startswith("stt_worker.core"), f"{path.name} imports {module}"


def test_only_the_runtime_imports_nats():
    outside = [
        f"{path.relative_to(PACKAGE)} imports {module}"
        for path in sources()
        if "runtime" not in path.relative_to(PACKAGE).parts
        for module in imported(path)
        if top(module) == "nats"
    ]
    assert outside == []


def test_engines_depend_on_the_core_and_the_settings_only():
    for path in sources("engines"):
        for module in imported(path):
            if top(module) == "stt_worker":
                allowed = ("stt_worker.core", "stt_worker.engines", "stt_worker.config")
                assert module.startswith(allowed), f"{path.name} imports {module}"


# What a framework adapter may use of the project: the settings, the wire format and errors,
# and the runtime's NATS client; never the worker's sessions, engines or pipeline.
INTEGRATION_IMPORTS = (
    "stt_worker.config",
    "stt_worker.core.protocol",
    "stt_worker.core.errors",
    "stt_worker.runtime.connection",
    "stt_worker.runtime.bus",
)


def imported_names(path: Path) -> Iterator[str]:
    """As `imported`, with ``from a.b import c`` as ``a.b.c``: the module or the name in it."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_integrations_talk_to_the_worker_over_nats_only():
    assert sources("integrations"), "the integrations package is missing"
    for path in sources("integrations"):
        for name in imported_names(path):
            if top(name) == "stt_worker":
                allowed = (*INTEGRATION_IMPORTS, "stt_worker.integrations")
                assert name.startswith(allowed), f"{path.name} imports {name}"


def test_nothing_in_the_worker_imports_an_integration():
    outside = [
        f"{path.relative_to(PACKAGE)} imports {module}"
        for path in sources()
        if "integrations" not in path.relative_to(PACKAGE).parts
        for module in imported(path)
        if module.startswith("stt_worker.integrations")
    ]
    assert outside == []


def oversized(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
            if lines > limit:
                yield f"{path.relative_to(PACKAGE)}: {node.name} has {lines} lines (> {limit})"


def test_no_class_or_function_outgrows_its_limit():
    checked = sources()
    edges = ("gateway", "whisper_server", "evaluation", "tools", "integrations", "config")
    assert {path.relative_to(PACKAGE).parts[0] for path in checked} >= set(edges)
    assert [each for path in checked for each in oversized(path)] == []
