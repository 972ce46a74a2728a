"""What the import contracts of `make lint` cannot see: deploy.py and the inventories are not
packages, so their imports are read here."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_deploy_imports_nothing_of_the_service():
    files = [ROOT / "deploy.py", *sorted((ROOT / "inventories").rglob("*.py"))]
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found += [(path.name, n) for n in names if n.split(".")[0] in ("app", "workers")]
    assert len(files) > 3
    assert found == []
