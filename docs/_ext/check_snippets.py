"""Run the ```python blocks of documentation pages to check that they still work.

Each page's blocks run in order in one namespace (later blocks use earlier names), in a
temporary working directory, with matplotlib's Agg backend. A block containing the comment
``# doc: skip`` is not run. Exit status 1 if any block fails.

Usage (slow: some pages train models or run LIME; run under the CPU lock on shared machines)::

    python docs/_ext/check_snippets.py docs/getting-started.md docs/howto/*.md
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
import traceback

_BLOCK = re.compile(r"^```python\n(.*?)^```", flags=re.S | re.M)


def run_page(page: str) -> bool:
    """Run every Python block of ``page``; stop at the first failure."""
    with open(page, encoding="utf-8") as handle:
        blocks = _BLOCK.findall(handle.read())
    namespace: dict[str, object] = {"__name__": "__doc_snippet__"}
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            for i, code in enumerate(blocks):
                if "# doc: skip" in code:
                    print(f"{page} block {i}: skipped")
                    continue
                start = time.perf_counter()
                try:
                    exec(compile(code, f"{page}#block{i}", "exec"), namespace)
                except Exception:
                    print(f"{page} block {i}: FAILED")
                    traceback.print_exc()
                    return False
                print(f"{page} block {i}: ok ({time.perf_counter() - start:.1f} s)")
        finally:
            os.chdir(cwd)
    return True


def main(pages: list[str]) -> int:
    os.environ.setdefault("MPLBACKEND", "Agg")
    results = [run_page(page) for page in pages]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
