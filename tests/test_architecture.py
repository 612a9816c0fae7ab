"""The import graph between longctx's parts keeps its layering, deferred imports included.

Parts: the core (`longctx` minus the face), the face (`longctx.cli`, `api`, `demo`, `compare`,
`eval`, and what only they use), the method packages (`burst`, `apb`, `spava`) and the
launchers (`launch`). The core imports no method package and no launcher (methods are found
by name through `longctx.registry`); only the face imports `launch`; the graph between parts
has no cycle. Run this file as a script to print the graph:

    python tests/test_architecture.py
"""

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("longctx", "burst", "apb", "spava", "launch")
FACE = ("longctx.cli", "longctx.api", "longctx.demo", "longctx.compare", "longctx.eval", "longctx.baseline",
        "longctx.simulate")
METHOD_PACKAGES = ("burst", "apb", "spava")


def module_name(path):
    """Dotted module name of a source file under ROOT."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path):
    """Every module `path` imports, at any depth of its code (function bodies included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            else:
                found.add(node.module)
    return found


def part_of(module):
    """The part a module belongs to: 'face', 'core', a method package, 'launch', or None (outside)."""
    top = module.split(".")[0]
    if top not in PACKAGES:
        return None
    if top == "longctx":
        return "face" if any(module == face or module.startswith(face + ".") for face in FACE) else "core"
    return top


def import_graph():
    """{(importer module, imported module)} over the project's packages."""
    edges = set()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            importer = module_name(path)
            edges.update((importer, target) for target in imported_modules(path) if part_of(target))
    return edges


def part_graph(edges):
    """{part: {parts it imports}} (a part importing itself is left out)."""
    graph = defaultdict(set)
    for importer, target in edges:
        if part_of(importer) != part_of(target):
            graph[part_of(importer)].add(part_of(target))
    return graph


def test_core_imports_no_method_package_and_no_launcher():
    bad = sorted((importer, target) for importer, target in import_graph()
                 if part_of(importer) == "core" and part_of(target) in (*METHOD_PACKAGES, "launch"))
    assert not bad, bad


def test_only_the_face_imports_launch():
    bad = sorted((importer, target) for importer, target in import_graph()
                 if part_of(target) == "launch" and part_of(importer) not in ("face", "launch"))
    assert not bad, bad


def test_launch_never_imports_the_face():
    bad = sorted((importer, target) for importer, target in import_graph()
                 if part_of(importer) == "launch" and part_of(target) == "face")
    assert not bad, bad


def test_parts_form_no_cycle():
    graph = part_graph(import_graph())
    state = {}

    def visit(part, trail):
        state[part] = "open"
        for target in sorted(graph.get(part, ())):
            assert state.get(target) != "open", " -> ".join([*trail, part, target])
            if target not in state:
                visit(target, [*trail, part])
        state[part] = "done"

    for part in sorted(graph):
        if part not in state:
            visit(part, [])


def test_the_checker_sees_deferred_imports(tmp_path, monkeypatch):
    """A function-level import counts: the rule cannot be dodged by deferring it."""
    source = tmp_path / "longctx" / "sneaky.py"
    source.parent.mkdir()
    source.write_text("def f():\n    from launch.local import LocalLauncher\n    return LocalLauncher\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert imported_modules(source) == {"launch.local"}


def main():
    """Print the part graph, then every cross-part edge."""
    edges = import_graph()
    for part, targets in sorted(part_graph(edges).items()):
        print(f"{part} -> {', '.join(sorted(targets))}")
    print()
    for importer, target in sorted(edges):
        if part_of(importer) != part_of(target):
            print(f"  {importer} ({part_of(importer)}) -> {target} ({part_of(target)})")


if __name__ == "__main__":
    main()
