"""The layering rules (docs/architecture.md, "Layers") hold, and the checks can fail.

Two kinds of check read the real import graph (grimp, the graph builder import-linter uses; imports
under ``if TYPE_CHECKING:`` are left out, they never run):

* the import-linter contracts in pyproject.toml (``lint-imports``, also run by ``make lint``);
* this module's own: no cycle between top-level packages, no cycle between the modules inside any
  package, and the same rules fed a graph with one bad import added, which they must report.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parent.parent
KERNEL = "kernel"
COMPOSITION = "printfleet"
PARTS = ("broker", "cloud", "device_agent", "phone_bridge")
PACKAGES = (KERNEL, COMPOSITION, *PARTS)
#: The one allowed exception between parts: the controller uses the broker's credential/ACL interface.
ALLOWED_BETWEEN_PARTS = {
    ("cloud", "broker.credentials"),
    ("cloud", "broker.passwords"),
    ("cloud", "broker.acl"),
}


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True, cache_dir=None)


def _edges(graph: grimp.ImportGraph) -> dict[str, set[str]]:
    return {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}


def _cycles(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(edges.get(root, ())))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, todo = work[-1]
            if todo:
                nxt = todo.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(edges.get(nxt, ()))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def _top(module: str) -> str:
    return module.split(".", 1)[0]


def package_cycles(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    tops: dict[str, set[str]] = {}
    for src, dsts in edges.items():
        tops.setdefault(_top(src), set()).update(_top(d) for d in dsts if _top(d) != _top(src))
    return _cycles(tops)


def module_cycles(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    return _cycles(edges)


def layer_violations(edges: Mapping[str, Iterable[str]]) -> list[str]:
    """Imports that break the layers: kernel -> part, part -> part (bar one), anything -> composition."""
    bad = []
    for src, dsts in sorted(edges.items()):
        for dst in sorted(dsts):
            s, d = _top(src), _top(dst)
            if s == d:
                continue
            if d == COMPOSITION:
                bad.append(f"{src} -> {dst}: nothing imports the composition layer")
            elif s == KERNEL:
                bad.append(f"{src} -> {dst}: the kernel imports no part")
            elif s in PARTS and d in PARTS and (s, dst) not in ALLOWED_BETWEEN_PARTS:
                bad.append(f"{src} -> {dst}: the parts do not know each other")
    return bad


def test_no_cycle_between_top_level_packages(graph: grimp.ImportGraph) -> None:
    assert package_cycles(_edges(graph)) == []


def test_no_cycle_between_the_modules_of_a_package(graph: grimp.ImportGraph) -> None:
    assert module_cycles(_edges(graph)) == []


def test_parts_import_only_the_kernel(graph: grimp.ImportGraph) -> None:
    assert layer_violations(_edges(graph)) == []


@pytest.mark.parametrize(
    ("importer", "imported", "expect"),
    [
        ("device_agent.agent", "cloud.jobs", "the parts do not know each other"),
        ("phone_bridge.bridge", "device_agent.config", "the parts do not know each other"),
        ("kernel.wire", "cloud.jobs", "the kernel imports no part"),
        ("cloud.jobs", "printfleet.cli", "nothing imports the composition layer"),
        ("cloud.jobs", "broker.embedded", "the parts do not know each other"),
    ],
)
def test_the_rules_report_a_bad_import(
    graph: grimp.ImportGraph, importer: str, imported: str, expect: str
) -> None:
    edges = _edges(graph)
    edges.setdefault(importer, set()).add(imported)
    assert any(expect in v and importer in v for v in layer_violations(edges))


def test_the_cycle_checks_report_a_cycle(graph: grimp.ImportGraph) -> None:
    edges = _edges(graph)
    edges["kernel.wire"] = {*edges.get("kernel.wire", ()), "cloud.jobs"}
    edges["cloud.jobs"] = {*edges.get("cloud.jobs", ()), "kernel.wire"}
    assert any({"cloud", "kernel"} <= set(c) for c in package_cycles(edges))
    edges["kernel.escpos.segment"] = {*edges.get("kernel.escpos.segment", ()), "kernel.escpos.status"}
    edges["kernel.escpos.status"] = {*edges.get("kernel.escpos.status", ()), "kernel.escpos.segment"}
    assert any({"kernel.escpos.segment", "kernel.escpos.status"} <= set(c) for c in module_cycles(edges))


def test_import_linter_contracts_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint), "--no-logo", "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"Contracts: \d+ kept, 0 broken", done.stdout), done.stdout


def test_every_package_says_what_lives_there_and_what_it_may_import() -> None:
    missing = []
    for init in sorted(REPO.glob("*/__init__.py")) + sorted(REPO.glob("*/*/__init__.py")):
        package = init.parent.relative_to(REPO).as_posix()
        if _top(package.replace("/", ".")) not in PACKAGES or "migrations" in package:
            continue
        text = init.read_text()
        if "May import" not in text:
            missing.append(package)
    assert missing == []
