"""No argument name a spec may use can shadow a name the generated code itself binds or reads."""

from __future__ import annotations

import ast
import builtins
import re

from conftest import ROOT
from lossgen.model import GENERATED_CODE_NAMES


def names_in(tree: ast.AST) -> set[str]:
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)} | {
        node.arg for node in ast.walk(tree) if isinstance(node, ast.arg)
    }


def test_every_name_of_the_generated_code_is_reserved() -> None:
    # A param named like a local of the template (e.g. `scale`) silently broke backward once.
    generated = ROOT / "generated"
    arguments: set[str] = set()
    used: set[str] = set()
    for path in generated.glob("*.py"):
        if path.name == "__init__.py":
            continue
        module = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(module):
            if isinstance(node, ast.FunctionDef) and node.name == "forward":
                arguments |= {a.arg for a in node.args.args} - {
                    "self",
                    "ctx",
                    "reduction",
                }
    for path in generated.glob("*.py"):
        module = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(module):
            # Only scopes where spec arguments live can be shadowed by them.
            if isinstance(node, ast.FunctionDef) and names_in(node) & arguments:
                used |= names_in(node)
    template_names = used - arguments
    unreserved = {
        name
        for name in template_names
        if name not in GENERATED_CODE_NAMES
        and not name.startswith(("_", "grad_"))
        and not name.endswith("_ptr")
        and not re.fullmatch(r"tmp\d+", name)
        and not hasattr(builtins, name)
        and not name[0].isupper()  # class names: loss names are checked separately
        and not any(path.stem == name for path in generated.glob("*.py"))
    }
    assert unreserved == set()
