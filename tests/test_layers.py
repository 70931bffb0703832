"""The package's folders are its layers: no module imports a layer above its own.

The order, bottom to top, is the one docs/design.md explains. Imports inside
``if TYPE_CHECKING:`` only name types and are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "klaviyo_middleware"

# Layer of each top-level name under klaviyo_middleware, bottom first.
# Layers on the same rank are siblings and do not import each other.
RANKS: dict[str, int] = {
    "errors": 0, "redact": 0, "notices": 0,
    "model": 1, "option": 1, "i18n": 1, "metrics": 1,
    "klaviyo": 2, "web": 2,
    "delivery": 3, "testing": 3,
    "settings": 4,
    "middleware": 5,
    "paste": 6, "contrib": 7, "__init__": 6,
    "demo": 7, "check": 7,
    "cli": 8,
}


def layer_of(module: str) -> str:
    parts = module.split(".")[1:]
    return parts[0] if parts else "__init__"


def imports(path: Path) -> list[str]:
    found: list[str] = []

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                return
            self.generic_visit(node)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level:
                found.append("relative")
            elif node.module == "klaviyo_middleware":
                # "from klaviyo_middleware import settings" imports a module.
                found.extend(
                    f"klaviyo_middleware.{alias.name}"
                    if (PACKAGE / f"{alias.name}.py").exists() or (PACKAGE / alias.name).is_dir()
                    else "klaviyo_middleware" for alias in node.names)
            elif node.module and node.module.startswith("klaviyo_middleware"):
                found.append(node.module)

        def visit_Import(self, node: ast.Import) -> None:
            found.extend(alias.name for alias in node.names
                         if alias.name.startswith("klaviyo_middleware"))

    Visitor().visit(ast.parse(path.read_text()))
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_folder_has_a_rank():
    names = {path.stem if path.is_file() else path.name
             for path in PACKAGE.iterdir()
             if (path.suffix == ".py" or (path.is_dir() and (path / "__init__.py").exists()))}
    assert names == set(RANKS)


def test_no_module_imports_a_layer_above_its_own():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        source = module_name(path)
        mine = layer_of(source) if source != "klaviyo_middleware" else "__init__"
        for target in imports(path):
            assert target != "relative", f"{source}: use absolute imports"
            theirs = layer_of(target)
            if theirs == mine:
                continue
            if RANKS[theirs] >= RANKS[mine]:
                wrong.append(f"{source} imports {target}")
    assert wrong == []


# Inside delivery/: what every backend shares, the one sending loop, the
# backends (siblings: the spool and Celery never import each other), and
# the factory that picks one.
DELIVERY = PACKAGE / "delivery"
DELIVERY_RANKS: dict[str, int] = {
    "__init__": 0, "protocol": 0, "hooks": 0, "identities": 0, "retention": 0,
    "import_jobs": 0, "dead_letters": 0,
    "courier": 1, "sync": 1,
    "spool": 2, "celery": 2,
    "factory": 3,
}


def delivery_part(module: str) -> str | None:
    parts = module.split(".")
    if parts[:2] != ["klaviyo_middleware", "delivery"]:
        return None
    return parts[2] if len(parts) > 2 else "__init__"


def test_every_part_of_delivery_has_a_rank():
    names = {path.stem if path.is_file() else path.name
             for path in DELIVERY.iterdir()
             if (path.suffix == ".py" or (path.is_dir() and (path / "__init__.py").exists()))}
    assert names == set(DELIVERY_RANKS)


def test_no_part_of_delivery_imports_one_above_its_own():
    wrong = []
    for path in DELIVERY.rglob("*.py"):
        source = module_name(path)
        mine = delivery_part(source)
        assert mine is not None
        for target in imports(path):
            theirs = delivery_part(target)
            if theirs is None or theirs == mine:
                continue
            if DELIVERY_RANKS[theirs] >= DELIVERY_RANKS[mine]:
                wrong.append(f"{source} imports {target}")
    assert wrong == []
