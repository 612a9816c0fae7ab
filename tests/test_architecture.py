"""The import graph between longctx's parts keeps its layering, deferred imports included.

Parts: the core (`longctx` minus the face and the families), the face (`longctx.cli`, `api`,
`demo`, `compare`, `eval`, `serve`, and what only they use), the model-family adapters
(`longctx.families`), the method packages (`burst`, `apb`, `spava`) and the launchers
(`launch`). The core imports no method package, no launcher and no model-family module (all
three are found by name through `longctx.registry`; the engine, the request code and the
loader reach a family only through its adapter); only the face imports `launch`; a method
package imports another only through the names that package exports (its `__all__`); the
graph between parts has no cycle. Run this file as a script to print the graph:

    python tests/test_architecture.py
"""

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("longctx", "burst", "apb", "spava", "launch")
FACE = ("longctx.cli", "longctx.api", "longctx.demo", "longctx.compare", "longctx.eval", "longctx.baseline",
        "longctx.simulate", "longctx.serve")
FAMILIES = "longctx.families"
METHOD_PACKAGES = ("burst", "apb", "spava")
FAMILY_BLIND = ("longctx.engine", "longctx.request", "longctx.models.loading")  # named by the issue; the rule is the core's


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


def _within(module, prefix):
    return module == prefix or module.startswith(prefix + ".")


def part_of(module):
    """The part a module belongs to: 'face', 'core', 'family', a method package, 'launch', or
    None (outside)."""
    top = module.split(".")[0]
    if top not in PACKAGES:
        return None
    if top == "longctx":
        if _within(module, FAMILIES):
            return "family"
        return "face" if any(_within(module, face) for face in FACE) else "core"
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


def test_core_imports_no_model_family_module():
    """Engine, request code and loader (and the rest of the core) reach a model family only
    through its adapter, found by name in the registry."""
    bad = sorted((importer, target) for importer, target in import_graph()
                 if part_of(importer) == "core" and part_of(target) == "family")
    assert not bad, bad
    assert all(part_of(module) == "core" for module in FAMILY_BLIND)


def exported(package):
    """The names a method package exports: its `__init__.py`'s `__all__` (none without one)."""
    tree = ast.parse((ROOT / package / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(target, "id", None) == "__all__" for target in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


def cross_package_imports(path):
    """(imported module, [names]) of each import in `path` from a method package other than its own
    (`import x.y` as names [None])."""
    own = module_name(path).split(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            modules = [(node.module, [alias.name for alias in node.names])]
        elif isinstance(node, ast.Import):
            modules = [(alias.name, [None]) for alias in node.names]
        else:
            continue
        found += [(module, names) for module, names in modules
                  if module.split(".")[0] in METHOD_PACKAGES and module.split(".")[0] != own]
    return found


def test_method_packages_import_each_other_only_through_exported_names():
    """Spava uses APB's selection as `from apb import select_by_question`, never apb's modules."""
    bad = []
    for package in METHOD_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for module, names in cross_package_imports(path):
                if module != module.split(".")[0] or not set(names) <= exported(module):
                    bad.append((module_name(path), module, names))
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


def test_the_checker_sees_a_method_package_reaching_into_another(tmp_path, monkeypatch):
    """`from apb.compress import select` inside spava is caught; `from apb import <exported>` is not."""
    (tmp_path / "apb").mkdir()
    (tmp_path / "apb" / "__init__.py").write_text('__all__ = ["select_by_question"]\n')
    (tmp_path / "spava").mkdir()
    source = tmp_path / "spava" / "sneaky.py"
    source.write_text("from apb import select_by_question\nfrom apb.compress import select\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    found = cross_package_imports(source)
    assert found == [("apb", ["select_by_question"]), ("apb.compress", ["select"])]
    assert [module for module, names in found if module != "apb" or not set(names) <= exported("apb")] == \
        ["apb.compress"]


def main():
    """Print the part graph and every cross-part edge, then check every layering rule of this
    file (the `test_*` functions that take no fixture); exit status 1 when one is broken."""
    import inspect
    import sys

    edges = import_graph()
    for part, targets in sorted(part_graph(edges).items()):
        print(f"{part} -> {', '.join(sorted(targets))}")
    print()
    for importer, target in sorted(edges):
        if part_of(importer) != part_of(target):
            print(f"  {importer} ({part_of(importer)}) -> {target} ({part_of(target)})")
    print()
    broken = 0
    for name, rule in sorted(globals().items()):
        if name.startswith("test_") and not inspect.signature(rule).parameters:
            try:
                rule()
            except AssertionError as exc:
                broken += 1
                print(f"BROKEN {name}: {exc}")
            else:
                print(f"ok     {name}")
    sys.exit(1 if broken else 0)


if __name__ == "__main__":
    main()
