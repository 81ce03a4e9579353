"""Boxed-answer extraction shared by the graders, the benchmark loaders and verl's data rows."""

from __future__ import annotations

import re

BOX_COMMANDS = ("\\boxed", "\\fbox")


def find_boxed(text: str, last: bool = True, commands: tuple[str, ...] = BOX_COMMANDS) -> str | None:
    """Content of the last (or first) ``\\boxed{...}`` / ``\\fbox{...}`` (braces matched), else None.

    Used for gold answers inside worked solutions and by the papers' graders (LIN takes the
    first box, RELEX and verl the last); the default grader lets math-verify find the answer.
    ``\\boxed 5`` (no braces) yields the token after the space, as models sometimes write it.
    """
    if not text:
        return None
    start, cmd_len = -1, 0
    for cmd in commands:
        pos = text.rfind(cmd) if last else text.find(cmd)
        while pos != -1:
            nxt = pos + len(cmd)
            # \boxed must not be a prefix of a longer command name (e.g. \boxedx)
            if nxt >= len(text) or not text[nxt].isalpha():
                break
            pos = text.rfind(cmd, 0, pos) if last else text.find(cmd, nxt)
        if pos != -1 and (start == -1 or (pos > start if last else pos < start)):
            start, cmd_len = pos, len(cmd)
    if start == -1:
        return None
    i = start + cmd_len
    n = len(text)
    while i < n and text[i] in " \t":
        i += 1
    if i >= n:
        return None
    if text[i] != "{":
        if start + cmd_len < i:  # "\boxed 5": a bare token after whitespace
            m = re.match(r"[^\s$]+", text[i:])
            return m.group(0).rstrip(".") if m else None
        return None
    depth = 0
    j = i
    while j < n:
        c = text[j]
        if c == "\\":
            j += 2  # skip escaped characters such as \{ and \}
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
        j += 1
    return None  # unbalanced: the answer was cut off


def extract_boxed(text: str) -> str | None:
    """Content of the LAST ``\\boxed{...}`` / ``\\fbox{...}`` (see `find_boxed`)."""
    return find_boxed(text, last=True)
