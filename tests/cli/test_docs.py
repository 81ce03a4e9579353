"""The docs guide and every reference resolves: the README stays short, and no tracked file cites a
document, doc page, script or anchor that the repository does not contain (code comments once
cited notes that lived outside it)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import REPO_ROOT

ROOT = REPO_ROOT
TEXT_SUFFIXES = {".md", ".py", ".yaml", ".yml", ".toml", ".ipynb", ".sh", ".sbatch", ".txt", ".cfg"}
TEXT_NAMES = {"Makefile", "run"}
SKIP_DIRS = {".git", ".venv", "outputs", "logs", "__pycache__", ".pytest_cache"}
# Markdown files the code writes into output directories: a bare mention names an output, not a doc.
GENERATED_MD = {"report.md", ".report.md", "README.md", ".README.md", "lin_table1.md", "lin_table2.md",
                "lin_fig6_speedups.md", "relex_main_table.md", "relex_denoising.md", "lr_sweep.md"}
# First path components that name a place in an output directory, not in the repository.
OUTPUT_ROOTS = {"DIR", "OUT", "RUN", "outputs", "paper", "figures", "out_dir", "logs", "sweep"}
# Repository folders whose paths must exist wherever a file names them (`LIN:scripts/x.py`, a path in
# a paper's own repository, is not one of ours).
CHECKED_ROOTS = ("docs/", "scripts/", "notebooks/")

MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
MD_NAME = re.compile(r"(?<![\w.*{}<>$:-])((?:\.{1,2}/|/)?[\w.{}<>*/-]*[\w-]\.md)\b")
ROOT_PATH = re.compile(r"(?<![\w./:-])((?:docs|scripts|notebooks)/[\w./*-]*)")


def tracked_files() -> list[Path]:
    """Tracked text files (git ls-files in a checkout, else a walk that skips build outputs)."""
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.split("\n")
        paths = [ROOT / p for p in out if p]
    except (OSError, subprocess.CalledProcessError):  # an exported tree without git
        paths = []
        for d, dirs, files in os.walk(ROOT):
            dirs[:] = [x for x in dirs if x not in SKIP_DIRS]
            paths += [Path(d) / f for f in files]
    return [p for p in paths if p.is_file() and (p.suffix in TEXT_SUFFIXES or p.name in TEXT_NAMES)]


def text_of(path: Path) -> str:
    """The text to scan: a notebook's cells; Markdown links reduced to their targets."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".ipynb":
        cells = json.loads(text).get("cells", [])
        text = "\n".join("".join(c.get("source", [])) for c in cells)
    return re.sub(r"\[[^\]]*\]\(([^)\s]*)\)", r" \1 ", text) if path.suffix in {".md", ".ipynb"} else text


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(md: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in md.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        m = None if in_code else re.match(r"#{1,6} (.+)", line)
        if m:
            slug = github_slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def resolves(ref: str, src: Path) -> bool:
    """`ref` names a file inside the repository (from `src`'s folder or the root); a path that
    leaves the repository (`../shared/...`) does not count, even where it exists on this machine."""
    ref = ref.rstrip(".,;:")
    inside = [p.resolve() for base in (src.parent, ROOT)
              for p in (base.glob(ref) if "*" in ref else [base / ref]) if p.exists()]
    return any(p.is_relative_to(ROOT) for p in inside)


def test_readme_is_short():
    n = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= 500, f"README.md has {n} lines; reference material belongs in docs/"


def test_markdown_links_resolve():
    """Every relative Markdown link points at a file in the repository, and its #anchor at a heading."""
    bad = []
    for md in (p for p in tracked_files() if p.suffix == ".md"):
        body = re.sub(r"```.*?```", "", md.read_text(encoding="utf-8"), flags=re.S)
        for target in MD_LINK.findall(body):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (md.parent / path).resolve() if path else md
            if not dest.exists():
                bad.append(f"{md.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{md.relative_to(ROOT)}: {target} (no such heading)")
    assert not bad, "\n".join(bad)


def test_cited_documents_exist():
    """A file that names a Markdown document, or a path under docs/, scripts/ or notebooks/,
    names one the repository holds (output files the code writes are not documents)."""
    bad = []
    for src in tracked_files():
        if src == Path(__file__).resolve():  # its examples of bad references are meant to be absent
            continue
        text = text_of(src)
        for ref in MD_NAME.findall(text):
            first = ref.split("/", 1)[0]
            if "<" in ref or "{" in ref or ref.startswith("/") or first in OUTPUT_ROOTS:
                continue
            if "/" not in ref and ref in GENERATED_MD:
                continue
            if not resolves(ref, src):
                bad.append(f"{src.relative_to(ROOT)}: {ref}")
        for ref in ROOT_PATH.findall(text):
            if "<" in ref or "{" in ref or ref.rstrip(".,;:") in CHECKED_ROOTS:
                continue
            if not resolves(ref, src):
                bad.append(f"{src.relative_to(ROOT)}: {ref}")
    assert not bad, "references to files the repository does not contain:\n" + "\n".join(sorted(set(bad)))


@pytest.mark.parametrize("ref, ok", [
    ("docs/methods.md", True), ("methods.md", False), ("../shared/contract.md", False),
    ("spec/ecosystem.md", False), ("scripts/bench_linearity.py", True), ("scripts/bench_*.py", True),
    ("scripts/no_such_script.py", False),
])
def test_reference_check_itself(ref, ok):
    """The checker tells a present file from an absent one, as seen from the repository root."""
    assert resolves(ref, ROOT / "README.md") is ok
