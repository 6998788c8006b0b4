"""The documentation's examples run, and the command-line page documents options that exist.

Each ```` ```python ```` block of the pages below runs in order, the blocks of a
page sharing one namespace, in a fresh temporary folder. A block whose first
line is ``# not run: <reason>`` is skipped (the convention is stated in
``docs/index.md``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = ("index.md", "guide.md", "cli.md", "numerics.md", "transformers.md")
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
SKIP = "# not run:"


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, code)`` of every python block of a Markdown text."""
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in FENCE.finditer(text)]


def test_block_extraction_sees_every_fence():
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\n# not run: gpu\ny = 2\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (9, "# not run: gpu\ny = 2\n")]


@pytest.fixture
def one_thread():
    """The examples' models are tiny: more torch threads only contend with each other (and with xdist)."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("page", PAGES)
def test_examples_run(page, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    blocks = python_blocks((DOCS / page).read_text())
    runnable = [(line, code) for line, code in blocks if not code.lstrip().startswith(SKIP)]
    assert runnable, f"{page} has no runnable python example"
    namespace: dict = {"__name__": f"docs_{page.removesuffix('.md')}"}
    for line, code in runnable:
        exec(compile(code, f"docs/{page}:{line}", "exec"), namespace)  # noqa: S102 - the docs are ours


def test_cli_page_documents_real_options():
    from hessop.cli.main import build_parser

    parser = build_parser()
    known = {opt for a in parser._actions for opt in a.option_strings}
    for action in parser._subparsers._group_actions[0].choices.values():  # each subcommand's options
        known |= {opt for a in action._actions for opt in a.option_strings}
    mentioned = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", (DOCS / "cli.md").read_text()))
    assert mentioned - known == set(), f"docs/cli.md mentions options the parser lacks: {mentioned - known}"
    assert known - mentioned - {"-h", "--help"} == set(), f"options missing from docs/cli.md: {known - mentioned}"
