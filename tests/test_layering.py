"""The package's import graph: no cycle between modules, no lower layer importing a higher one.

Layers, lowest first: io / data (leaves; may use ops) < ops < modules < models < adapt <
everything else (training, evaluation, recipes, generate, ...) < bench < cli. A module may import
its own layer or lower ones; benches are imported only by the CLI."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "transmamba"
RANK = {"io": 0, "data": 0, "ops": 0, "modules": 1, "models": 2, "adapt": 3, "bench": 9, "cli": 10}
LEAVES = {"io", "data"}


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _imports(name: str, path: Path, known: dict) -> set[str]:
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t != "transmamba":
                found.add(t)
    return found


def _layer(mod: str) -> tuple[str, int]:
    top = mod.split(".")[1] if "." in mod else ""
    return top, RANK.get(top, 5)


def test_no_cycles_and_no_upward_imports():
    mods = _modules()
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}
    bad = []
    for a, targets in graph.items():
        la, ra = _layer(a)
        for b in targets:
            lb, rb = _layer(b)
            if lb == "bench" and la not in ("bench", "cli"):
                bad.append(f"{a} imports the benchmark {b}")
            elif la in LEAVES and lb not in LEAVES | {"ops"}:
                bad.append(f"leaf {a} imports {b}")
            elif la != lb and rb > ra and lb not in LEAVES and rb <= 5:
                bad.append(f"{a} ({la}) imports the higher layer {b} ({lb})")
    # cycles: depth-first search with colours
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                bad.append("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not bad, "\n".join(bad)


def test_one_training_loop():
    """Only the engine calls backward() (ops' autograd Functions define backward, they do not call it)."""
    callers = sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
                     if not {"ops", "modules", "bench"} & set(p.relative_to(ROOT).parts)
                     and any("backward(" in line and "def backward" not in line for line in p.read_text().splitlines()))
    assert callers == ["training/engine.py"], callers
