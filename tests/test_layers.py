"""Apps import one way: core <- tenants <- knowledge <- search <- console. An app imports only the
apps below it (core none of them); a cycle coming back fails here."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["core", "tenants", "knowledge", "search", "console"]
# What is still to untangle, by file: each must go, none may be added.
KNOWN: set[tuple[str, str]] = set()


def _imported_apps(path: Path) -> set[str]:
    apps = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            apps |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            apps.add(node.module.split(".")[0])
    return apps & set(ORDER)


def test_apps_import_only_the_apps_below_them():
    wrong = set()
    for rank, app in enumerate(ORDER):
        for path in (ROOT / app).rglob("*.py"):
            relative = str(path.relative_to(ROOT))
            for imported in _imported_apps(path):
                if ORDER.index(imported) > rank and (relative, imported) not in KNOWN:
                    wrong.add((relative, imported))
    assert wrong == set()


def test_the_known_exceptions_are_still_there():
    # Once one is gone, it leaves the list (so it cannot come back unseen).
    for relative, imported in KNOWN:
        assert imported in _imported_apps(ROOT / relative), (relative, imported)


def test_search_registers_its_part_of_a_deletion():
    # knowledge deletes an agent without importing search: search's steps come registered.
    from core import cleanup
    from search import cleanup as search_cleanup

    assert search_cleanup.drop_agent_indexes in cleanup._steps["before_agent"]
    assert search_cleanup.drop_organization_index in cleanup._steps["before_organization"]
    assert search_cleanup.delete_agent_access in cleanup._steps["agent_rows"]
