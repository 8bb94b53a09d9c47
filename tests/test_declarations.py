"""Each Tensor/Param declaration is its own symbol, even with a name another spec also uses."""

from __future__ import annotations

from pathlib import Path

from lossgen import Tensor
from lossgen.api import derive_all

SPEC = """
import sympy as sp
from lossgen import Loss, Tensor
{first} = Tensor("{first}")
{second} = Tensor("{second}")
loss = Loss("{name}", (input - target) ** 2 * sp.exp(input))
"""


def test_argument_order_does_not_leak_between_specs(tmp_path: Path) -> None:
    # SymPy caches results by equality: if two Tensor("input") compared equal, the second
    # spec got expressions holding the first spec's symbols, and with them its declaration
    # order (this build came out as (target, input)).
    swapped = tmp_path / "swapped.py"
    swapped.write_text(SPEC.format(first="target", second="input", name="Swapped"))
    ordered = tmp_path / "ordered.py"
    ordered.write_text(SPEC.format(first="input", second="target", name="Ordered"))
    assert [a.name for a in derive_all([swapped])[0].model.arguments] == [
        "target",
        "input",
    ]
    assert [a.name for a in derive_all([ordered])[0].model.arguments] == [
        "input",
        "target",
    ]


def test_two_declarations_of_one_name_are_different_symbols() -> None:
    a, b = Tensor("x"), Tensor("x")
    assert a != b and a == a and len({a, b}) == 2
