"""Final answers: pull the answer out of a solution, normalise it, decide equivalence.

Extraction tries explicit markers first ("#### 42", "\\boxed{42}", "The answer is 42"),
then the last number in the text; callers learn which, because a teacher solution with no
explicit answer is less trustworthy than one with a marker.
"""

from __future__ import annotations

import re
from fractions import Fraction

_NUM = r"-?\$?\s*\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?%?"
_MARKERS = [
    re.compile(r"####\s*(" + _NUM + ")"),
    re.compile(r"\\boxed\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}"),
    re.compile(r"(?:final answer|the answer)\s*(?:is|:|=)?\s*[:=]?\s*(" + _NUM + ")", re.IGNORECASE),
]
_LAST_NUMBER = re.compile(_NUM)


def extract_final(text: str | None) -> tuple[str | None, str]:
    """(answer, how): how is 'marker', 'last_number' or 'none'."""
    if not text:
        return None, "none"
    for pattern in _MARKERS:
        found = pattern.findall(text)
        if found:
            ans = found[-1].strip().splitlines()[0].strip() if found[-1].strip() else ""
            if ans:
                return ans.rstrip("."), "marker"
    numbers = _LAST_NUMBER.findall(text)
    if numbers:
        return numbers[-1].strip(), "last_number"
    return None, "none"


def gsm8k_gold(answer: str) -> str | None:
    """GSM8K answers end in '#### N'."""
    if "####" not in answer:
        return None
    return answer.rsplit("####", 1)[1].strip()


_CALC = re.compile(r"<<[^<>]*>>")


def gsm8k_worked_solution(answer: str) -> str | None:
    """GSM8K's human-written solution as a student should write it: the `<<48/2=24>>`
    calculator annotations removed, the final `#### N` line kept; None without one."""
    if gsm8k_gold(answer) is None:
        return None
    return _CALC.sub("", answer).strip()


def to_number(answer: str | None) -> Fraction | None:
    """'$1,234.50' -> 1234.5, '3/4' -> 0.75, '50%' -> 50; None if it is not a plain number."""
    if answer is None:
        return None
    s = answer.strip().replace(",", "").replace("$", "").replace(" ", "")
    s = re.sub(r"^\\?\(|\\?\)$", "", s)
    s = s.rstrip(".").rstrip("%")
    m = re.fullmatch(r"(-?\d+(?:\.\d+)?)(?:/(\d+))?", s)
    if not m:
        m2 = re.match(r"(-?\d+(?:\.\d+)?)", s)  # "18 dollars", "5 apples"
        if not m2 or not re.fullmatch(r"[A-Za-z\s.]*", s[m2.end():]):
            return None
        return Fraction(m2.group(1))
    value = Fraction(m.group(1))
    if m.group(2):
        if int(m.group(2)) == 0:
            return None
        value /= int(m.group(2))
    return value


def equivalent(a: str | None, b: str | None) -> bool | None:
    """True/False when it can be decided, None when neither numbers nor math-verify can tell."""
    if a is None or b is None:
        return None
    na, nb = to_number(a), to_number(b)
    if na is not None and nb is not None:
        return bool(abs(na - nb) <= Fraction(1, 10**6) * max(Fraction(1), Fraction(abs(nb))))
    if a.strip().lower() == b.strip().lower():
        return True
    try:
        from math_verify import parse, verify
    except ImportError:
        return None
    try:
        pa, pb = parse(a), parse(b)
        if not pa or not pb:
            return None
        return bool(verify(pb, pa))
    except Exception:  # math-verify raises on odd LaTeX; undecidable, not wrong
        return None


def solution_steps(answer: str, answer_format: str) -> int:
    """Steps in a reference solution: GSM8K's <<calc>> annotations, else non-empty lines."""
    if answer_format == "gsm8k":
        return max(1, answer.count("<<"))
    return max(1, sum(1 for line in answer.splitlines() if line.strip()))
