"""Every fenced ```python block of README.md and docs/ runs as written (one test per page).

The runner is ``docs/_ext/check_snippets.py``; pages are found by glob, so a new page is tested
without being listed here. The page tests take minutes, so they carry the ``docs`` marker and
the default run leaves them out (``addopts`` in pyproject.toml); ``.ci/run`` runs them with
``python -m pytest -q -m docs``.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "check_snippets", ROOT / "docs" / "_ext" / "check_snippets.py"
)
assert _spec is not None and _spec.loader is not None
check_snippets = importlib.util.module_from_spec(_spec)
sys.modules["check_snippets"] = check_snippets
_spec.loader.exec_module(check_snippets)

PAGES = [p for p in check_snippets.documentation_pages() if check_snippets.python_blocks(p)]


@pytest.mark.docs
@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_snippets_run(page: Path) -> None:
    import torch

    grad_enabled = torch.is_grad_enabled()
    start = time.perf_counter()
    try:
        results = check_snippets.run_page(page)
    finally:
        torch.set_grad_enabled(grad_enabled)
    ran = [r for r in results if r.skipped_because is None]
    assert ran, f"{page}: every block is skipped"
    print(f"{page.relative_to(ROOT)}: {len(ran)} blocks in {time.perf_counter() - start:.1f} s")


def test_the_pages_include_readme_and_every_docs_page() -> None:
    pages = {str(p.relative_to(ROOT)) for p in check_snippets.documentation_pages()}
    assert "README.md" in pages
    on_disk = {str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md")}
    assert on_disk <= pages
    assert "README.md" in {str(p.relative_to(ROOT)) for p in PAGES}


# ---- the runner itself, on small pages written here ------------------------------------------


def _page(tmp_path: Path, *blocks: str) -> Path:
    text = "# page\n\n" + "\n".join(f"```python\n{b}\n```\ntext\n" for b in blocks)
    page = tmp_path / "page.md"
    page.write_text(text, encoding="utf-8")
    return page


def test_blocks_share_one_namespace_and_run_in_a_temporary_directory(tmp_path: Path) -> None:
    page = _page(
        tmp_path,
        "value = 41\nopen('out.txt', 'w').write('x')",
        "import os\nassert value + 1 == 42 and os.path.exists('out.txt')",
        "result = value",
    )
    results = check_snippets.run_page(page)
    assert [r.index for r in results] == [0, 1, 2]
    assert not (tmp_path / "out.txt").exists() and not Path("out.txt").exists()


def test_a_failing_block_names_the_page_block_and_error(tmp_path: Path) -> None:
    page = _page(tmp_path, "a = 1", "b = a + undefined_name")
    with pytest.raises(check_snippets.SnippetError, match=r"block 1 failed(.|\n)*NameError"):
        check_snippets.run_page(page)


def test_skip_needs_a_reason(tmp_path: Path) -> None:
    skipped = _page(tmp_path, "raise RuntimeError  # doc: skip (needs a CUDA GPU)", "x = 1")
    results = check_snippets.run_page(skipped)
    assert results[0].skipped_because == "needs a CUDA GPU"
    assert results[1].skipped_because is None
    bare = _page(tmp_path, "raise RuntimeError  # doc: skip")
    with pytest.raises(check_snippets.SnippetError, match="without a reason"):
        check_snippets.run_page(bare)


def test_a_single_segment_on_a_non_constant_image_fails_the_page(tmp_path: Path) -> None:
    page = _page(
        tmp_path,
        "import torch\nfrom captum_secam import segment\n"
        "segment(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))",
    )
    with pytest.raises(check_snippets.SnippetError, match="single segment"):
        check_snippets.run_page(page)
