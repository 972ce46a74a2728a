"""An import-linter contract written as an allow-list: a layer imports only what it names.

import-linter's own contracts say what may NOT be imported (forbidden, layers); a new
dependency then passes until someone thinks to forbid it. Here each layer names everything it
may import, project modules and third-party packages alike (the standard library is always
allowed), so any new dependency of a layer is a decision someone writes down in
pyproject.toml. Used by `make lint` (`lint-imports`, with the repository on PYTHONPATH).

    [[tool.importlinter.contracts]]
    name = "..."
    type = "allowlist"
    source_modules = ["app.api"]
    allowed_modules = ["app.api", "app.schemas", "flask", ...]

A module is allowed when it is one of `allowed_modules` or inside one of them.
"""

from __future__ import annotations

import sys

import grimp
from importlinter import Contract, ContractCheck, fields, output


class AllowListContract(Contract):
    type_name = "allowlist"

    source_modules = fields.ListField(subfield=fields.ModuleField())
    allowed_modules = fields.ListField(subfield=fields.StringField())

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        allowed = [str(m) for m in self.allowed_modules]  # type: ignore[attr-defined]
        violations: list[dict[str, object]] = []
        for source in self.source_modules:  # type: ignore[attr-defined]
            modules = {source.name} | graph.find_descendants(source.name)
            for importer in sorted(modules):
                for imported in sorted(graph.find_modules_directly_imported_by(importer)):
                    if _permitted(imported, allowed):
                        continue
                    details = graph.get_import_details(importer=importer, imported=imported)
                    violations.append(
                        {
                            "importer": importer,
                            "imported": imported,
                            "lines": [d["line_number"] for d in details],
                        }
                    )
        return ContractCheck(kept=not violations, metadata={"violations": violations})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for violation in check.metadata["violations"]:
            lines = ", ".join(f"l.{n}" for n in violation["lines"])
            output.print_error(
                f"{violation['importer']} imports {violation['imported']} ({lines}), "
                "which is not on this layer's list",
                bold=False,
            )
        output.new_line()


def _permitted(module: str, allowed: list[str]) -> bool:
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top == "__future__":
        return True
    return any(module == name or module.startswith(name + ".") for name in allowed)
