"""Run the ```python blocks of documentation pages to check that they still work.

Each page's blocks run in order in one namespace (later blocks use earlier names), in a
temporary working directory, with matplotlib's Agg backend. A block containing the comment
``# doc: skip`` is not run; the comment must give the reason on the same line, e.g.
``# doc: skip (needs a CUDA GPU)``. A segmentation that yields a single segment for a
non-constant image is an error here, not a warning: the docs must not show degenerate maps.

``tests/test_doc_snippets.py`` runs every page of :func:`documentation_pages` this way under
pytest, so the test command checks the docs. From the command line (exit status 1 if any block
fails)::

    python docs/_ext/check_snippets.py                      # every page
    python docs/_ext/check_snippets.py docs/howto/own-model.md README.md
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_BLOCK = re.compile(r"^```python\n(.*?)^```", flags=re.S | re.M)
_SKIP = re.compile(r"#\s*doc:\s*skip\b(.*)$", flags=re.M)


class SnippetError(Exception):
    """A block of a page failed (the message holds the page, block number and traceback)."""


@dataclass
class BlockResult:
    page: str
    index: int
    seconds: float
    skipped_because: str | None = None


def documentation_pages(root: Path = ROOT) -> list[Path]:
    """README.md and every Markdown page under docs/ (new pages are picked up automatically)."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def python_blocks(page: Path | str) -> list[str]:
    return _BLOCK.findall(Path(page).read_text(encoding="utf-8"))


def skip_reason(code: str) -> str | None:
    """The stated reason of a ``# doc: skip`` block, None if the block runs.

    Raises:
        SnippetError: The block is skipped without a reason.
    """
    match = _SKIP.search(code)
    if match is None:
        return None
    reason = match.group(1).strip(" :-—()")
    if not reason:
        raise SnippetError(
            "a block is marked '# doc: skip' without a reason; write it on the same line, "
            "e.g. '# doc: skip (needs a CUDA GPU)', or make the block run"
        )
    return reason


def run_page(page: Path | str) -> list[BlockResult]:
    """Run every Python block of ``page`` in one namespace; raise at the first failure."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    name = _display_name(page)
    blocks = python_blocks(page)
    namespace: dict[str, object] = {"__name__": "__doc_snippet__"}
    results: list[BlockResult] = []
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.filterwarnings(
            "error", message=".*returned a single segment", category=UserWarning
        )
        os.chdir(tmp)
        try:
            for index, code in enumerate(blocks):
                results.append(_run_block(name, index, code, namespace))
        finally:
            os.chdir(cwd)
            _close_figures()
    return results


def _run_block(name: str, index: int, code: str, namespace: dict[str, object]) -> BlockResult:
    try:
        reason = skip_reason(code)
    except SnippetError as err:
        raise SnippetError(f"{name} block {index}: {err}") from None
    if reason is not None:
        return BlockResult(name, index, 0.0, skipped_because=reason)
    start = time.perf_counter()
    try:
        exec(compile(code, f"{name}#block{index}", "exec"), namespace)
    except Exception:
        raise SnippetError(
            f"{name} block {index} failed:\n{_numbered(code)}\n{traceback.format_exc()}"
        ) from None  # the message already holds the traceback
    return BlockResult(name, index, time.perf_counter() - start)


def _numbered(code: str) -> str:
    return "\n".join(f"{i + 1:4d} | {line}" for i, line in enumerate(code.splitlines()))


def _display_name(page: Path | str) -> str:
    path = Path(page).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(page)


def _close_figures() -> None:
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


def main(pages: list[str]) -> int:
    paths = [Path(p) for p in pages] or documentation_pages()
    failed = 0
    for page in paths:
        try:
            for result in run_page(page):
                status = (
                    f"skipped ({result.skipped_because})"
                    if result.skipped_because
                    else f"ok ({result.seconds:.1f} s)"
                )
                print(f"{result.page} block {result.index}: {status}")
        except SnippetError as err:
            failed += 1
            print(f"FAILED {err}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
