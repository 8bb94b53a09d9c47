"""Stage 3a, rewrite: turn losses written the way papers write them into numerically stable forms.

Pure functions from expression to expression. `rewrite` applies every rule, bottom-up, until
nothing changes; `candidates` adds equivalent forms that only cancel after normalising signs
(`softplus(-x) = softplus(x) - x`, `sigmoid(-x) = 1 - sigmoid(x)`) and expanding, and the derive
stage keeps the cheapest. The derive stage calls them on the loss before differentiating and on
every derivative after simplifying, so each gradient is stable too.

The rules, in the order each pass applies them (each is a small function, unit-tested alone):

    tanh_from_exp          (exp(u) - exp(-u)) / (exp(u) + exp(-u))  ->  tanh(u)
    sigmoid_from_exp       1 / (1 + exp(-u))  ->  sigmoid(u);   exp(u) * sigmoid(-u)  ->  sigmoid(u)
    tanh_from_sigmoid      2 * sigmoid(2u) - 1  ->  tanh(u)        (also times any factor k)
    one_minus_sigmoid      1 - sigmoid(u)  ->  sigmoid(-u)       (also times any factor k)
    logsigmoid_from_log    log(sigmoid(u))  ->  logsigmoid(u)
    softplus_from_log      log(1 + exp(u))  ->  softplus(u)
                           log(exp(a) + exp(b) + ...)  ->  logsumexp(a, b, ...)
    softplus_from_max_shift  Max(u, 0) + softplus(-|u|)  ->  softplus(u)  (hand-stabilised)
    log1p_from_log         log(1 + x)  ->  log1p(x)
    expm1_from_exp         exp(x) - 1  ->  expm1(x)
    xlogy_from_mul         x * log(y)  ->  xlogy(x, y)           (0 at x = 0, not NaN)

Why rewrite before differentiating rather than only afterwards: the derivative of a naive form
is a naive form of the derivative (`exp(-x) / (1 + exp(-x))**2`), which overflows to inf/inf; the
derivative of the stable form is already stable (`softplus' = sigmoid`). Rewriting afterwards as
well catches what simplification re-creates.

Design notes, and where this departs from the first plan:
- The rules match SymPy's canonical trees structurally instead of using `Wild` patterns;
  matching an `Add` of exponentials with Wild is ambiguous and slow, and a structural rule is a
  few lines that say exactly what they accept.
- The stable functions live in `lossgen.functions` (not `vocabulary`), one family that
  differentiates into itself; `lossgen` exports them for specs.
- `logsigmoid` prints as `-softplus(-x)`, not `torch.nn.functional.logsigmoid`: that CPU kernel
  always goes through parallel_for and measured ~20 ms per call on a 12-element tensor on a
  loaded 2-core machine (softplus: ~3 us); the two are equally stable.
- Choosing the cheapest form is not enough: SymPy's simplify may factor `exp(a) - exp(b)` into
  `exp(b) * expm1(a - b)` or `sinh`, which overflow where the original does not. The derive
  stage keeps only forms that exponentiate nothing the original did not (`_no_new_overflow`).
"""

from __future__ import annotations

from collections.abc import Callable

import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p

from lossgen.functions import logsigmoid, logsumexp, sigmoid, softplus, xlogy
from lossgen.vocabulary import relu

Rule = Callable[[sp.Basic], "sp.Basic | None"]
MAX_PASSES = 10


# --- helpers ---------------------------------------------------------------------------------


def _exponent(term: sp.Basic) -> sp.Expr | None:
    """u if term is exp(u), 0 if term is 1, else None."""
    if term == sp.S.One:
        return sp.S.Zero
    if isinstance(term, sp.exp):
        return term.args[0]
    return None


def _positive_exp_exponent(term: sp.Basic) -> sp.Expr | None:
    """u + log(c) if term is c * exp(u) or a number c, with c > 0; else None."""
    if term.is_number:
        return sp.log(term) if term.is_positive else None
    coefficient, rest = term.as_coeff_Mul()
    if not isinstance(rest, sp.exp) or not coefficient.is_positive:
        return None
    return rest.args[0] + sp.log(coefficient)


def _variable(expr: sp.Basic) -> bool:
    return bool(expr.free_symbols)


# --- the rules -------------------------------------------------------------------------------


def tanh_from_exp(node: sp.Basic) -> sp.Basic | None:
    """(exp(a) - exp(b)) / (exp(a) + exp(b)) -> tanh((a - b) / 2); 1 counts as exp(0)."""
    if not isinstance(node, sp.Mul):
        return None
    factors = list(node.args)
    for i, denominator in enumerate(factors):
        if not (
            isinstance(denominator, sp.Pow)
            and denominator.exp == -1
            and isinstance(denominator.base, sp.Add)
            and len(denominator.base.args) == 2
        ):
            continue
        exponents = [_exponent(t) for t in denominator.base.args]
        if None in exponents:
            continue
        a, b = exponents
        for j, numerator in enumerate(factors):
            if j == i or not isinstance(numerator, sp.Add):
                continue
            if numerator == sp.exp(a) - sp.exp(b):
                value = sp.tanh((a - b) / 2)
            elif numerator == sp.exp(b) - sp.exp(a):
                value = sp.tanh((b - a) / 2)
            else:
                continue
            if not _variable(value):
                continue
            rest = [f for k, f in enumerate(factors) if k not in (i, j)]
            return sp.Mul(*rest) * value
    return None


def sigmoid_from_exp(node: sp.Basic) -> sp.Basic | None:
    """(1 + exp(-u))**-p -> sigmoid(u)**p; exp(u) * sigmoid(-u) -> sigmoid(u)."""
    if isinstance(node, sp.Pow):
        base, power = node.args
        # any negative-looking power: (1 + exp(b))**-p = sigmoid(-b)**p, as 1 + exp(b) > 0
        negative = power.is_negative or power.could_extract_minus_sign()
        if not (negative and isinstance(base, sp.Add)):
            return None
        if len(base.args) != 2 or sp.S.One not in base.args:
            return None
        (other,) = [t for t in base.args if t != sp.S.One]
        if isinstance(other, sp.exp) and _variable(other):
            return sigmoid(-other.args[0]) ** (-power)
        return None
    if isinstance(node, sp.Mul):
        exps = [f for f in node.args if isinstance(f, sp.exp)]
        sigmoids = [f for f in node.args if isinstance(f, sigmoid)]
        for e in exps:
            for s in sigmoids:
                if sp.expand(e.args[0] + s.args[0]) == 0:
                    rest = list(node.args)
                    rest.remove(e)
                    rest.remove(s)
                    return sp.Mul(*rest) * sigmoid(e.args[0])
    return None


def _sigmoid_terms(node: sp.Add) -> list[tuple[sp.Expr, sp.Expr, sp.Expr]]:
    """(term, k, u) for every term of `node` that is k * sigmoid(u)."""
    found = []
    for term in node.args:
        factors = sp.Mul.make_args(term)
        for factor in factors:
            if isinstance(factor, sigmoid):
                rest = list(factors)
                rest.remove(factor)
                found.append((term, sp.Mul(*rest), factor.args[0]))
    return found


def tanh_from_sigmoid(node: sp.Basic) -> sp.Basic | None:
    """k*(2*sigmoid(2u) - 1) -> k*tanh(u): no cancellation near u = 0."""
    if not isinstance(node, sp.Add):
        return None
    for term, k, u in _sigmoid_terms(node):
        half = k / 2
        if -half in node.args and half is not term:
            rest = [t for t in node.args if t is not term and t != -half]
            return sp.Add(*rest) + half * sp.tanh(u / 2)
    return None


def one_minus_sigmoid(node: sp.Basic) -> sp.Basic | None:
    """k*sigmoid(u) - k -> -k*sigmoid(-u): 1 - sigmoid(u) rounds to 0 for large u."""
    if not isinstance(node, sp.Add):
        return None
    for term, k, u in _sigmoid_terms(node):
        if -k in node.args and -k is not term:
            rest = [t for t in node.args if t is not term and t != -k]
            return sp.Add(*rest) - k * sigmoid(-u)
    return None


def logsigmoid_from_log(node: sp.Basic) -> sp.Basic | None:
    """log(sigmoid(u)) -> logsigmoid(u); log(sigmoid(u)**k) -> k * logsigmoid(u)."""
    if not isinstance(node, sp.log):
        return None
    (argument,) = node.args
    if isinstance(argument, sigmoid):
        return logsigmoid(argument.args[0])
    if isinstance(argument, sp.Pow) and isinstance(argument.base, sigmoid):
        if argument.exp.is_real:
            return argument.exp * logsigmoid(argument.base.args[0])
    return None


def softplus_from_log(node: sp.Basic) -> sp.Basic | None:
    """log(1 + exp(u)) -> softplus(u); log(c1*exp(a) + c2*exp(b) + ...) -> logsumexp(...)."""
    if not isinstance(node, sp.log) or not isinstance(node.args[0], sp.Add):
        return None
    terms = node.args[0].args
    exponents = [_positive_exp_exponent(t) for t in terms]
    if None in exponents or not _variable(node):
        return None
    if len(exponents) == 2 and sp.S.Zero in exponents:
        (other,) = [e for e in exponents if e != sp.S.Zero] or [sp.S.Zero]
        return softplus(other)
    return logsumexp(*sorted(exponents, key=sp.default_sort_key))


def softplus_from_max_shift(node: sp.Basic) -> sp.Basic | None:
    """Max(u, 0) + softplus(-|u|) -> softplus(u): the usual hand-stabilised softplus."""
    if not isinstance(node, sp.Add):
        return None
    terms = list(node.args)
    for shift in terms:
        if isinstance(shift, relu):
            u = shift.args[0]
        elif isinstance(shift, sp.Max) and len(shift.args) == 2 and 0 in shift.args:
            (u,) = [a for a in shift.args if a != 0]
        else:
            continue
        tail = softplus(-sp.Abs(u))
        if tail in terms:
            rest = [t for t in terms if t is not shift and t != tail]
            return sp.Add(*rest) + softplus(u)
    return None


def log1p_from_log(node: sp.Basic) -> sp.Basic | None:
    """log(1 + x) -> log1p(x): exact for small x, where 1 + x rounds x away."""
    if not isinstance(node, sp.log) or not isinstance(node.args[0], sp.Add):
        return None
    constant, rest = node.args[0].as_coeff_Add()
    if constant == sp.S.One and _variable(rest):
        return log1p(rest)
    return None


def expm1_from_exp(node: sp.Basic) -> sp.Basic | None:
    """exp(u) - 1 -> expm1(u) and 1 - exp(u) -> -expm1(u): exact for small u."""
    if not isinstance(node, sp.Add):
        return None
    constant, terms = node.as_coeff_Add()
    if constant not in (sp.S.One, sp.S.NegativeOne):
        return None
    for term in sp.Add.make_args(terms):
        coefficient, rest = term.as_coeff_Mul()
        if isinstance(rest, sp.exp) and coefficient == -constant and _variable(rest):
            others = [t for t in sp.Add.make_args(terms) if t is not term]
            return sp.Add(*others) + coefficient * expm1(rest.args[0])
    return None


def xlogy_from_mul(node: sp.Basic) -> sp.Basic | None:
    """x * log(y) -> xlogy(x, y): 0 where x = 0, where x * log(y) would be 0 * -inf = NaN.

    Also x * (log(y) + rest) -> xlogy(x, y) + x * rest (KL divergence's y * (log(y) - x)).
    """
    if not isinstance(node, sp.Mul):
        return None
    logs = [f for f in node.args if isinstance(f, sp.log)]
    if not logs:
        return _xlogy_through_sum(node)
    if len(logs) != 1:
        return None
    (log,) = logs
    if not _variable(log.args[0]):
        return None  # a constant factor, not a log of data
    others = [f for f in node.args if f is not log]
    coefficient, x = sp.Mul(*others).as_coeff_Mul()
    if not _variable(x) or x.has(sp.log):
        return None
    return coefficient * xlogy(x, log.args[0])


def _xlogy_through_sum(node: sp.Mul) -> sp.Basic | None:
    sums = [f for f in node.args if isinstance(f, sp.Add)]
    if len(sums) != 1:
        return None
    (total,) = sums
    coefficient, x = sp.Mul(*[f for f in node.args if f is not total]).as_coeff_Mul()
    if not _variable(x) or x.has(sp.log):
        return None
    for term in total.args:
        c, log = term.as_coeff_Mul()
        if isinstance(log, sp.log) and _variable(log):
            rest = sp.Add(*[t for t in total.args if t is not term])
            return coefficient * (c * xlogy(x, log.args[0]) + x * rest)
    return None


RULES: tuple[Rule, ...] = (
    tanh_from_exp,
    sigmoid_from_exp,
    tanh_from_sigmoid,
    one_minus_sigmoid,
    logsigmoid_from_log,
    softplus_from_log,
    softplus_from_max_shift,
    log1p_from_log,
    expm1_from_exp,
    xlogy_from_mul,
)


# --- applying them ---------------------------------------------------------------------------


def apply_rule(rule: Rule, expr: sp.Basic) -> sp.Basic:
    """Apply one rule everywhere, children first (a rule sees its arguments already rewritten)."""
    cache: dict[sp.Basic, sp.Basic] = {}

    def visit(node: sp.Basic) -> sp.Basic:
        if node in cache:
            return cache[node]
        result = node
        if node.args and not isinstance(node, sp.Symbol):
            args = tuple(visit(arg) for arg in node.args)
            if args != node.args:
                result = node.func(*args)
            replacement = rule(result)
            if replacement is not None:
                result = replacement
        cache[node] = result
        return result

    return visit(expr)


def rewrite(expr: sp.Expr) -> sp.Expr:
    """Every rule, repeatedly, until the expression stops changing."""
    for _ in range(MAX_PASSES):
        before = expr
        for rule in RULES:
            expr = apply_rule(rule, expr)
        if expr == before:
            break
    return expr


def normalize_signs(expr: sp.Expr) -> sp.Expr:
    """Stable functions of negated arguments in terms of the positive ones, so terms cancel.

    logsigmoid(u) = -softplus(-u), softplus(-u) = softplus(u) - u, sigmoid(-u) = 1 - sigmoid(u).
    Not stability rewrites (`1 - sigmoid(u)` loses precision): `candidates` re-runs `rewrite`
    on the result, which turns what did not cancel back.
    """

    def flip(node: sp.Basic) -> sp.Basic:
        (u,) = node.args
        if isinstance(node, logsigmoid):
            node, u = -softplus(-u), -u
            if not u.could_extract_minus_sign():
                return node
            return -(softplus(-u) + u)
        if not u.could_extract_minus_sign():
            return node
        if isinstance(node, softplus):
            return softplus(-u) + u
        return 1 - sigmoid(-u)

    return expr.replace(lambda e: isinstance(e, (softplus, sigmoid, logsigmoid)), flip)


def candidates(expr: sp.Expr) -> list[sp.Expr]:
    """Stable forms of `expr`: rewritten as it is, and with signs normalised and expanded."""
    stable = rewrite(expr)
    found = [stable]
    normal = normalize_signs(stable)
    if normal != stable:
        expanded = sp.expand(normal, power_exp=False)  # exp(a + b) stays whole
        for form in (expanded, sp.factor_terms(expanded)):
            form = rewrite(form)
            if form not in found:
                found.append(form)
    return found
