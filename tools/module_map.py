"""Print gaal_cli's module map from the sources: lines per module and the gaal_cli modules each
imports, counting imports inside functions. Usage: python tools/module_map.py [ROOT]."""
import ast
import sys
from pathlib import Path


def module_files(root: Path, package: str = "gaal_cli") -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package."""
    files = {}
    for path in sorted((root / package).rglob("*.py")):
        name = ".".join(path.relative_to(root).with_suffix("").parts)
        files[name.removesuffix(".__init__")] = path
    return files


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that one module imports anywhere (top level or inside a function)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {module for module in found if module in known and module != name}


def import_graph(root: Path, package: str = "gaal_cli") -> dict[str, set[str]]:
    files = module_files(root, package)
    return {name: imported_modules(name, path, set(files)) for name, path in files.items()}


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    files = module_files(root)
    graph = import_graph(root)
    for name, path in files.items():
        lines = len(path.read_text().splitlines())
        short = sorted(target.removeprefix("gaal_cli.") for target in graph[name])
        print(f"{name.removeprefix('gaal_cli.'):28} {lines:5}  -> {', '.join(short) or '-'}")
    print(f"{'total':28} {sum(len(p.read_text().splitlines()) for p in files.values()):5}")


if __name__ == "__main__":
    main()
