"""Training text every machine already has: the running interpreter's standard library.

Files: the public top-level ``*.py`` modules of ``sysconfig.get_paths()["stdlib"]`` (no ``_private``
modules, packages, tests or site-packages).  The held-out split is by file: a module is held out
when the SHA-256 of its name falls in the held-out fraction, so the split does not depend on which
other modules this Python version ships.  Training modules are taken in the order of that hash
until ``max_train_bytes`` is reached (the whole standard library is more text than a one-minute
training run reads).  Besides the sources, every documented public function and
class becomes a chat exchange - "What does json.dumps do?" answered with the docstring's first
paragraph - so the model sees the chat template in use.

Pure logic here is :func:`split_names` and :func:`docstring_chats`; :func:`load_stdlib` reads files.
"""

from __future__ import annotations

import ast
import hashlib
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from bitnet_edge.sdk.errors import InputError

__all__ = ["Corpus", "load_stdlib", "split_names", "docstring_chats", "stdlib_dir"]

MAX_FILE_BYTES = 512 * 1024  # bytes; larger sources are skipped (none in CPython's top level is)
MAX_ANSWER_CHARS = 240
MIN_ANSWER_CHARS = 12


@dataclass
class Corpus:
    """Texts of the training and held-out modules; chats as (question, answer) pairs."""

    root: str
    train_files: list[str]
    heldout_files: list[str]
    train_texts: list[str] = field(repr=False)
    heldout_texts: list[str] = field(repr=False)
    train_chats: list[tuple[str, str]] = field(repr=False)
    heldout_chats: list[tuple[str, str]] = field(repr=False)

    @property
    def train_bytes(self) -> int:
        return sum(len(t.encode()) for t in self.train_texts)

    @property
    def heldout_bytes(self) -> int:
        return sum(len(t.encode()) for t in self.heldout_texts)


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _bucket(name: str) -> float:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64


def split_names(names: list[str], heldout_fraction: float) -> tuple[list[str], list[str]]:
    """(train, heldout), each in hash order, by a hash of each name: stable whatever else is in the list."""
    if not 0 < heldout_fraction < 1:
        raise InputError("heldout_fraction", f"must be in (0, 1), got {heldout_fraction}")
    train, held = [], []
    for n in sorted(names, key=lambda n: (_bucket(n), n)):
        (held if _bucket(n) < heldout_fraction else train).append(n)
    return train, held


def _first_paragraph(doc: str) -> str:
    para = " ".join(doc.strip().split("\n\n")[0].split())
    if len(para) > MAX_ANSWER_CHARS:
        para = para[:MAX_ANSWER_CHARS].rsplit(" ", 1)[0] + " ..."
    return para


def docstring_chats(module: str, source: str) -> list[tuple[str, str]]:
    """("What does module.name do?", first paragraph of its docstring) for public functions, classes
    and methods with a docstring, in source order."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    out: list[tuple[str, str]] = []

    def visit(node, prefix: str):
        for child in node.body:
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if child.name.startswith("_"):
                    continue
                qual = f"{prefix}.{child.name}"
                doc = ast.get_docstring(child)
                if doc and len(_first_paragraph(doc)) >= MIN_ANSWER_CHARS:
                    kind = "class" if isinstance(child, ast.ClassDef) else "function"
                    out.append((f"What does the {kind} {qual} do?", _first_paragraph(doc)))
                if isinstance(child, ast.ClassDef):
                    visit(child, qual)

    visit(tree, module)
    return out


def _take(names: list[str], sizes: dict[str, int], budget: int | None) -> list[str]:
    out, total = [], 0
    for n in names:
        if budget is not None and out and total + sizes[n] > budget:
            continue
        out.append(n)
        total += sizes[n]
    return out


def load_stdlib(heldout_fraction: float = 0.1, root: str | Path | None = None,
                max_train_bytes: int | None = 2_000_000, max_heldout_bytes: int | None = 400_000) -> Corpus:
    """Read public top-level modules of the standard library (``root`` overrides where it lives)."""
    base = Path(root) if root is not None else stdlib_dir()
    sizes = {p.name: p.stat().st_size for p in base.glob("*.py")
             if p.is_file() and not p.name.startswith("_") and p.stat().st_size <= MAX_FILE_BYTES}
    if not sizes:
        raise InputError("root", f"{base}: no public *.py modules to train on")
    train, held = split_names(list(sizes), heldout_fraction)
    train, held = _take(train, sizes, max_train_bytes), _take(held, sizes, max_heldout_bytes)
    if not train or not held:
        raise InputError("heldout_fraction", f"{len(sizes)} modules give an empty training or held-out split")

    def read(names: list[str]):
        texts, chats = [], []
        for n in names:
            text = (base / n).read_text(encoding="utf-8", errors="replace")
            texts.append(text)
            chats.extend(docstring_chats(n[:-3], text))
        return texts, chats

    tt, tc = read(train)
    ht, hc = read(held)
    return Corpus(str(base), train, held, tt, ht, tc, hc)
