"""hessop's modules import one way: no import circle, type-checking and function-level imports included.

Read from the source with ``ast`` (nothing is imported), so a circle hidden behind ``if TYPE_CHECKING:``
or a lazy import inside a function counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "hessop"


def _module_name(path: Path) -> str:
    parts = ["hessop", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The hessop modules ``name`` imports (``from pkg import sub`` counts ``pkg.sub`` when it is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in known else stem for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import hessop.solvers.eigsh.x` -> the deepest module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle through each strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def _graph() -> dict[str, set[str]]:
    known = _modules()
    graph = {name: _imports(name, path, known) for name, path in known.items()}
    return graph


def _without_parents(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop imports of a module's own parent packages (importing ``a.b.c`` runs ``a.b`` first anyway: not a
    dependency the code chose)."""
    return {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in graph.items()}


def test_no_import_circle_in_hessop():
    cycles = _cycles(_without_parents(_graph()))
    assert not cycles, f"import circles among hessop modules: {cycles}"


LAYERS = [  # bottom first; a module may import its own layer and those below it (docs/design.md, "Layers")
    ("hessop._array", "hessop.comm", "hessop._renamed", "hessop._warnings", "hessop._names"),
    ("hessop.distributed", "hessop._collective", "hessop.split"),
    ("hessop.backends",),
    ("hessop.operator", "hessop.factory"),
    ("hessop.solvers", "hessop.testing", "hessop.cupy"),
    ("hessop.models",),
    ("hessop.analysis",),
    ("hessop.cli",),
    ("hessop", "hessop.__main__"),
]


def _layer(module: str) -> int:
    for level, prefixes in enumerate(LAYERS):
        if any(module == p or (p != "hessop" and module.startswith(p + ".")) for p in prefixes):
            return level
    raise AssertionError(f"{module} is in no layer of LAYERS: add it where it belongs (docs/design.md)")


def test_imports_point_down_the_layers():
    upward = [f"{name} -> {target}" for name, targets in sorted(_without_parents(_graph()).items())
              for target in sorted(targets) if _layer(target) > _layer(name)]
    assert not upward, f"imports that point up a layer: {upward}"


def test_the_torch_backend_reads_no_private_attribute_of_another_module():
    """``backend._graphs``-style reads across modules: each module keeps its state behind its own methods."""
    offenders = []
    for path in (ROOT / "backends" / "torch").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
                    and node.attr not in _TORCH_PRIVATE):
                offenders.append(f"{path.name}:{node.lineno} .{node.attr}")
    assert not offenders, offenders


_TORCH_PRIVATE = {  # torch's own internals the backend reads on purpose (each documented where it is read)
    "_modules", "_parameters", "_buffers", "_version", "_saved_", "_engine_run_backward", "_BatchNorm",
    "_Loss", "_scaled_dot_product_flash_attention_for_cpu",
}
