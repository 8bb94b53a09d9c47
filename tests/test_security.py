"""Nothing from a spec can inject code into the generated files: names are validated to plain
identifiers, docs go verbatim into a raw docstring that they cannot end, and spec paths in the
header cannot start a new line."""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from lossgen.api import build
from lossgen.emit import header
from lossgen.errors import SpecError
from lossgen.model import build_model
from lossgen.vocabulary import Loss, Tensor

X = Tensor("x")


def import_file(path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"security_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_with_doc(root: Path, doc: str) -> types.ModuleType:
    # The doc is written into the spec as a Python literal, exactly as a user's file holds it.
    (root / "spec.py").write_text(
        "from lossgen import Loss, Tensor\n"
        'x = Tensor("x")\n'
        f'documented = Loss("Documented", x**2, doc={doc!r})\n'
    )
    build(["spec.py"], root / "out")
    return import_file(root / "out" / "documented.py")


@pytest.mark.parametrize(
    "doc",
    [
        r"backslashes: C:\new\table and \t \n \\ \x41",
        "Jinja-looking text: {{ model.name }} {% if x %}y{% endif %} {# c #}",
        r"a named escape \N{BULLET} that a non-raw string would expand",
        "ends with a backslash \\",
        'ends with a quote "',
        'ends with two quotes ""',
        'an escaped quote \\" and \\"" near the end\\',
        "f-string braces {x!r} and %s and $HOME",
        "several lines\n  indented\nand unicode: \u03c3\u00b2 \u2264 \u221e",
        "r'''single triple quotes''' are fine",
    ],
)
def test_doc_text_arrives_verbatim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, doc: str
) -> None:
    monkeypatch.chdir(tmp_path)
    module = build_with_doc(tmp_path, doc)
    assert module.__doc__ is not None
    assert doc in module.__doc__
    assert (
        module.documented.__name__ == "documented"
    )  # and the rest of the file is intact


def test_doc_whitespace_is_normalized_as_black_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    module = build_with_doc(tmp_path, "\tleading tab  \ninner\ttab \n\n")
    assert "\n\n    leading tab\ninner\ttab\n\n" in module.__doc__


@settings(max_examples=60, deadline=None)
@given(doc=st.text(max_size=40))
def test_any_doc_is_either_refused_or_arrives_verbatim(doc: str) -> None:
    try:
        model = build_model(Loss("Documented", X**2, doc=doc), "spec.py")
    except SpecError as error:
        assert "doc" in str(error)
        return
    # Accepted: it must survive the real pipeline into an importable module.
    from lossgen.derive import derive
    from lossgen.emit import GeneratedFile
    from lossgen.format import format_source
    from lossgen.render import render_loss
    from lossgen.verify import load_generated

    source = format_source(header(["spec.py"]) + render_loss(derive(model)), origin="t")
    module = load_generated(GeneratedFile("documented.py", source))
    assert model.doc in module.__doc__
    if doc == doc.strip() and "\t" not in doc and " \n" not in doc:
        assert model.doc == doc
    assert set(module.__all__) == {"Documented", "DocumentedFunction", "documented"}


@settings(max_examples=300, deadline=None)
@given(
    loss_name=st.text(min_size=1, max_size=12),
    argument_name=st.text(min_size=1, max_size=12),
)
def test_only_plain_identifiers_are_accepted_as_names(
    loss_name: str, argument_name: str
) -> None:
    try:
        model = build_model(Loss(loss_name, Tensor(argument_name) ** 2), "spec.py")
    except SpecError:
        return
    for name in (model.name, model.snake_name, model.arguments[0].name):
        assert name.isascii() and name.isidentifier(), name
        assert all(c.isalnum() or c == "_" for c in name)


@pytest.mark.parametrize(
    "path", ["specs/a\nimport os.py", "specs/a\rb.py", "specs/\x1b[2Jx.py"]
)
def test_header_keeps_spec_paths_on_their_comment_line(path: str) -> None:
    text = header([path, "specs/ok.py"])
    assert text.count("\n") == 2 and all(
        line.startswith("# ") for line in text.splitlines()
    )


def test_spec_file_name_with_a_newline_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    name = "a\nimport os.py"
    (tmp_path / name).write_text(
        'from lossgen import Loss, Tensor\nLoss("A", Tensor("x"))\n'
    )
    with pytest.raises(SpecError, match="control characters"):
        build([name], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_sympy_printing_of_names_cannot_escape() -> None:
    # Every printed formula (docstring text and LaTeX) comes from validated symbol names and
    # SymPy's printers; a doc that looks like the end of the docstring is refused outright.
    with pytest.raises(SpecError, match="triple quotes"):
        build_model(Loss("A", X**2, doc='"""\nimport os\n"""'), "spec.py")
    assert sp.sstr(X**2) == "x**2"
