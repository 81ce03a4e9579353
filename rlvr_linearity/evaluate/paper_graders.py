"""The two papers' own graders, written from their descriptions in docs/methods.md (§D1, §D2).

``lin`` (LIN's evaluation): the FIRST ``\\boxed{}`` (then ``\\fbox``, the last fraction, the last
``$...$``, the last ``a/b``, the last line), graded like PRM800K's ``grade_answer``: equal after
the Hendrycks MATH normalisation, or after a second normalisation (text, units, scale words,
LaTeX to text) equal as strings or element by element, with sympy allowed only where an
unreduced fraction or an integer does not demand an exact match.

``relex`` (RELEX's evaluation): the text after the LAST "boxed", else after "the answer is", else
the last number; normalised (``_strip_string``) and compared with ``math_equal``: strings,
numbers within a relative 1e-4 (also the gold x100 and /100), tuples, intervals, matrices,
equations, then symbolic equality.

Both run inside the grading workers (``rlvr_linearity.evaluate.grading``), whose per-item
timeout replaces the papers' own (LIN: none; RELEX: 1 s per symbolic comparison). Model text is
never handed to Python's ``eval``: sympy's ``parse_expr`` (which evaluates Python) only sees
strings with at most two distinct letters and no ``^{``, as PRM800K guards it; symbolic LaTeX goes
through latex2sympy2_extended (math-verify's ANTLR parser). Behaviour docs/methods.md leaves open is
noted where it is decided.
"""

from __future__ import annotations

import math
import re

from rlvr_linearity.evaluate.answers import find_boxed

# --- shared: Hendrycks MATH normalisation --------------------------------------------------------


def _fix_fracs(s: str) -> str:
    """\\frac12 -> \\frac{1}{2}, \\frac1{72} -> \\frac{1}{72} (single-character arguments)."""
    parts = s.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if part.startswith("{") or len(part) < 2:
            out += part
            continue
        a, b, rest = part[0], part[1], part[2:]
        out += "{" + a + "}" + (b + rest if b == "{" else "{" + b + "}" + rest)
    return out


def _fix_a_slash_b(s: str) -> str:
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    return f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}" if m else s


def _fix_sqrt(s: str) -> str:
    """\\sqrt3 -> \\sqrt{3}."""
    return re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)


def _short_lhs(s: str) -> str:
    """``k = 3`` -> ``3``: an equation whose left side is at most two characters."""
    parts = s.split("=")
    return parts[1] if len(parts) == 2 and len(parts[0].strip()) <= 2 else s


def hendrycks_normalize(s: str) -> str:
    """The MATH dataset's answer normalisation ("mathd"), as PRM800K's grader applies it first."""
    s = s.strip()
    m = re.fullmatch(r"\\text\{(.+?)\}", s)
    if m:
        s = m.group(1)
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    if "\\text{ " in s:  # a unit written after the answer
        s = s.split("\\text{ ")[0]
    s = s.replace("\\%", "").replace("%", "").replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    s = _fix_sqrt(_short_lhs(s)).replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s)


# --- lin: LIN / PRM800K --------------------------------------------------------------------------

_UNITS = ("degree", "cm", "centimeter", "meter", "mile", "second", "minute", "hour", "day", "week", "month",
          "year", "foot", "feet", "inch", "yard", "liter")
_SCALES = (("million", "*10^6"), ("billion", "*10^9"), ("trillion", "*10^12"))
_THOUSANDS = re.compile(r"(\d),(\d\d\d)($|\D)")


def lin_extract(text: str) -> str | None:
    """LIN's answer extraction (docs/methods.md §D1), in its order.

    Open point: how LIN's "a/b" step delimits a and b is not specified; numbers are assumed.
    """
    for cmd in ("\\boxed", "\\fbox"):
        got = find_boxed(text, last=False, commands=(cmd,))
        if got is not None:
            return got
    for pattern in (r"\\d?frac\{[^{}]*\}\{[^{}]*\}", r"\$([^$]+)\$", r"-?\d+(?:\.\d+)?/\d+(?:\.\d+)?"):
        found = re.findall(pattern, text)
        if found:
            return found[-1].strip()
    lines = [ln.replace("$", "").replace(" ", "") for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    return lines[-1] if lines else None


def _str_is_int(s: str) -> bool:
    try:
        x = float(_strip_thousands(s))
    except (ValueError, OverflowError):
        return False
    return math.isfinite(x) and abs(x - round(x)) <= 1e-7


def _strip_thousands(s: str) -> str:
    """1,234,567 -> 1234567 without touching the commas of a tuple."""
    while True:
        nxt = _THOUSANDS.sub(r"\1\2\3", s)
        if nxt == s:
            return s
        s = nxt


def _latex_to_text(s: str) -> str:
    from pylatexenc.latex2text import LatexNodes2Text

    s = s.replace("\\tfrac", "\\frac").replace("\\dfrac", "\\frac").replace("\\frac", " \\frac")
    s = LatexNodes2Text().latex_to_text(s)
    for a, b in (("√", "sqrt"), ("π", "pi"), ("∞", "inf"), ("∪", "U"), ("·", "*"), ("×", "*")):
        s = s.replace(a, b)
    return s.strip()


def prm800k_normalize(s: str) -> str:
    """PRM800K's second normalisation: text, units, scale words and LaTeX removed; lower case."""
    m = re.fullmatch(r"\\text\{(.+?)\}", s)
    if m:
        s = m.group(1)
    s = s.replace("\\%", "").replace("\\$", "").replace("$", "").replace("%", "")
    s = s.replace(" or ", " , ").replace(" and ", " , ")
    for word, factor in _SCALES:
        s = s.replace(word, factor)
    for unit in _UNITS:
        s = re.sub(f"{unit}(es)?(s)? *(\\^[0-9]+)?", "", s)
    s = re.sub(r"\^ *\\circ", "", s)
    if s.startswith("{") and s.endswith("}"):
        s = s[1:-1]
    s = re.sub(r",\\! *", "", s)
    try:
        if math.isfinite(float(s)) and float(s) == round(float(s)):
            s = str(int(round(float(s))))
    except ValueError:
        pass
    if "\\" in s:
        try:
            s = _latex_to_text(s)
        except Exception:  # pylatexenc gives up on malformed LaTeX: keep the text
            pass
    s = re.sub("- *", "-", s)
    s = re.sub(r"([0-9]) +([0-9])", r"\1+\2", s)  # a mixed number 7 3/4 -> 7+3/4
    s = s.lower()
    if _str_is_int(s):
        s = str(int(float(_strip_thousands(s))))
    return s


def _may_use_sympy(expr: str) -> bool:
    """PRM800K's guard: no text of three or more letters, no braced or long exponents."""
    letters = {c for c in expr.replace("sqrt", "").replace("frac", "") if c.isalpha()}
    if len(letters) > 2 or "^{" in expr or "^(" in expr:
        return False
    return not re.search(r"\^[0-9]+\^|\^[0-9][0-9]+", expr)


def _sympy_equal(gold: str, given: str) -> bool:
    from sympy import simplify
    from sympy.parsing import sympy_parser

    expr = f"({gold})-({given})"
    if not _may_use_sympy(expr):
        return False
    try:
        transforms = sympy_parser.standard_transformations + (sympy_parser.implicit_multiplication_application,)
        return simplify(sympy_parser.parse_expr(expr.replace("^", "**"), transformations=transforms)) == 0
    except Exception:
        return False


def _split_tuple(s: str) -> list[str]:
    s = _strip_thousands(s)
    if len(s) > 2 and s[0] in "()[]" and s[-1] in "()[]" and not any(c in s[1:-1] for c in "()[]"):
        return [e.strip() for e in s[1:-1].split(",")]
    return [s] if s else []


def prm800k_equal(given: str | None, gold: str) -> bool:
    """PRM800K's grade_answer(given, gold) as docs/methods.md §D1 describes it."""
    if given is None:
        return False
    if hendrycks_normalize(gold) == hendrycks_normalize(given):
        return True
    g, p = prm800k_normalize(gold), prm800k_normalize(given)
    if g == p:
        return True
    if not p:
        return False
    g_elems, p_elems = _split_tuple(g), _split_tuple(p)
    if len(g_elems) != len(p_elems) or (len(g_elems) > 1 and (g[0] != p[0] or g[-1] != p[-1])):
        return False
    frac = re.compile(r"-?[0-9]+.?/0*[1-9][0-9]*.?")
    for ge, pe in zip(g_elems, p_elems):
        if frac.fullmatch(ge) and frac.fullmatch(pe):
            ok = ge == pe  # an unreduced fraction must be written as the gold writes it
        elif _str_is_int(ge) != _str_is_int(pe):
            ok = False  # an integer gold needs an integer answer, no simplification
        else:
            ok = _sympy_equal(ge, pe)
        if not ok:
            return False
    return True


def grade_lin(response: str, gold: str) -> tuple[bool, str | None, str | None]:
    got = lin_extract(response)
    return prm800k_equal(got, gold), got, gold


# --- relex: RELEX / math_equal ---------------------------------------------------------------------

_UNIT_TEXT = re.compile(r"\\text\{.*?\}$")
_NUMBER = re.compile(r"-?\d*\.?\d+")


def relex_extract(text: str) -> str | None:
    """RELEX's answer extraction (docs/methods.md §D2); None when nothing is found."""
    if "boxed" in text:
        after = text.split("boxed")[-1]
        if after.startswith("{"):
            got = find_boxed("\\boxed" + after, last=False, commands=("\\boxed",))
            ans = got if got is not None else after[1:]
        else:
            ans = after.split("$")[0].strip()
    elif "he answer is" in text:
        ans = text.split("he answer is")[-1].strip()
    else:
        numbers = _NUMBER.findall(text.replace(",", ""))
        if not numbers:
            return None
        ans = numbers[-1]
    ans = (ans.strip().split("\n")[0] if ans.strip() else "").lstrip(":").strip()
    while ans and ans[-1] in "./":
        ans = ans[:-1]
    return ans


def relex_normalize(s: str) -> str:
    """RELEX's strip_string, as docs/methods.md §D2 lists it (word numbers are not converted)."""
    s = str(s).strip().replace("\n", "").rstrip(".").replace("\\!", "")
    s = re.sub(r"\\begin\{(?:array\}\{[^}]*|bmatrix)\}", r"\\begin{pmatrix}", s)
    s = re.sub(r"\\end\{(?:array|bmatrix)\}", r"\\end{pmatrix}", s)
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("\\{", "{").replace("\\}", "}")
    unitless = _UNIT_TEXT.sub("", s).strip()
    if unitless and unitless != s:
        s = unitless
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "").replace("$", "")
    s = s.replace("\\(", "").replace("\\)", "")
    s = re.sub(r"\\text\{(.*?)\}", r"\1", s)
    for key in ("x=", "y=", "z=", "x\\in", "y\\in", "z\\in", "x\\to", "y\\to", "z\\to"):
        s = s.removeprefix(key)
    s = s.replace("\\emptyset", "{}").replace("(-\\infty,\\infty)", "\\mathbb{R}")
    s = s.replace("\\%", "").replace("%", "").replace(" .", " 0.").replace("{.", "{0.")
    s = s.replace("\\cdot", "")
    s = re.sub(r"\\inf(?!ty)", r"\\infty", s.replace("infinity", "\\infty")).replace("+\\infty", "\\infty")
    s = s.replace("and", "").replace("\\mathbf", "")
    s = re.sub(r"\\mbox\{.*?\}", "", s)
    s = s.replace("'", "").replace('"', "")
    if "j" in s and "i" not in s:
        s = s.replace("j", "i")
    s = re.sub(r"(\d+)\.0+([^\d])", r"\1\2", s)
    s = re.sub(r"(\d+)\.0+$", r"\1", s)
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    s = _fix_sqrt(_short_lhs(s)).replace(" ", "")
    return _fix_a_slash_b(_fix_fracs(s))


def _to_number(s) -> float | None:
    s = str(s).replace(",", "").replace("{,}", "").strip()
    pct = s.endswith("%") or s.endswith("\\%")
    s = s.rstrip("%").removesuffix("\\")
    try:
        x = float(s)
    except (ValueError, OverflowError):
        return None
    return x / 100 if pct else x


def _latex_sympy(s: str):
    from latex2sympy2_extended import latex2sympy

    return latex2sympy(s)


def _symbolic_equal(a: str, b: str) -> bool:
    """Equal as sympy expressions: simplify(a - b) == 0, .equals, or numerically (rel 1e-4)."""
    from sympy import N, simplify

    try:
        x, y = _latex_sympy(a), _latex_sympy(b)
    except Exception:
        return False
    for check in (lambda: x == y, lambda: simplify(x - y) == 0, lambda: x.equals(y) is True,
                  lambda: math.isclose(complex(N(x)).real, complex(N(y)).real, rel_tol=1e-4)
                  and math.isclose(complex(N(x)).imag, complex(N(y)).imag, rel_tol=1e-4, abs_tol=1e-12)):
        try:
            if check():
                return True
        except Exception:
            continue
    return False


def _cells(s: str) -> list[str] | None:
    m = re.fullmatch(r"\\begin\{pmatrix\}(.*)\\end\{pmatrix\}", s)
    if not m:
        return None
    return [c.strip() for row in m.group(1).split("\\\\") for c in row.split("&") if c.strip()]


def math_equal(pred: str | None, gold: str) -> bool:
    """RELEX's math_equal(pred, gold) as docs/methods.md §D2 describes it."""
    if pred is None:
        return False
    if pred.strip().lower() == gold.strip().lower():
        return True
    x, y = _to_number(pred), _to_number(gold)
    if x is not None and y is not None:
        return any(math.isclose(x, g, rel_tol=1e-4) for g in (y, y / 100, y * 100))
    if not pred:
        return False
    # bracket-insensitive string comparison: outer brackets go when the gold does not open with the
    # other kind ([0,1] matches [0,1) this way, as in RELEX's grader), then every ( ) { }
    p, g = pred, gold
    if (pred[0] == "[" and pred[-1] == "]" and not gold.startswith("(")) or \
            (pred[0] == "(" and pred[-1] == ")" and not gold.startswith("[")):
        p, g = p.strip("[]()"), g.strip("[]()")
    if re.sub(r"[{}()]", "", p).lower() == re.sub(r"[{}()]", "", g).lower():
        return True
    # tuples and intervals element by element (same brackets), matrices cell by cell
    if pred[0] in "([" and pred[-1] in ")]" and pred[0] == gold[:1] and pred[-1] == gold[-1:]:
        ps, gs = pred[1:-1].split(","), gold[1:-1].split(",")
        if len(ps) == len(gs) > 1 and all(math_equal(p.strip(), g.strip()) for p, g in zip(ps, gs)):
            return True
    pc, gc = _cells(pred), _cells(gold)
    if pc is not None and gc is not None:
        return len(pc) == len(gc) and all(math_equal(p, g) for p, g in zip(pc, gc))
    # equations: lhs - rhs, up to sign; "x = v" against a bare value
    if pred.count("=") == 1 and gold.count("=") == 1:
        (pl, pr), (gl, gr) = pred.split("="), gold.split("=")
        p, g = f"{pl}-({pr})", f"{gl}-({gr})"
        return _symbolic_equal(p, g) or _symbolic_equal(f"-({p})", g)
    if pred.count("=") == 1 and "=" not in gold and len(pred.split("=")[0].strip()) <= 2:
        return math_equal(pred.split("=")[1].strip(), gold)
    if gold.count("=") == 1 and "=" not in pred and len(gold.split("=")[0].strip()) <= 2:
        return math_equal(pred, gold.split("=")[1].strip())
    return _symbolic_equal(pred, gold)


def grade_relex(response: str, gold: str) -> tuple[bool, str | None, str | None]:
    got = relex_extract(response)
    if got is None:
        return False, None, relex_normalize(gold)
    pred, want = relex_normalize(got), relex_normalize(gold)
    return math_equal(pred, want), pred, want


GRADE = {"lin": grade_lin, "relex": grade_relex}
