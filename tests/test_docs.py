"""The documentation's examples run, and the command-line page documents options that exist.

Each ```` ```python ```` block of the pages below runs in order, the blocks of a
page sharing one namespace, in a fresh temporary folder. A block whose first
line is ``# not run: <reason>`` is skipped (the convention is stated in
``docs/index.md``). The ``>>>`` examples of the package's docstrings run as
doctests (lines that need a GPU, MPI or a download say ``# doctest: +SKIP``);
``hessop/backends`` is left to the backend tests.
"""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
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


LAUNCHER_OPTIONS = {"--nproc-per-node"}
"""Options of the launchers the command line page shows (``torchrun``), not of ``hessop``."""


def test_cli_page_documents_real_options():
    from hessop.cli.main import build_parser

    parser = build_parser()
    known = {opt for a in parser._actions for opt in a.option_strings}
    for action in parser._subparsers._group_actions[0].choices.values():  # each subcommand's options
        known |= {opt for a in action._actions for opt in a.option_strings}
    mentioned = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", (DOCS / "cli.md").read_text()))
    mentioned -= LAUNCHER_OPTIONS
    assert mentioned - known == set(), f"docs/cli.md mentions options the parser lacks: {mentioned - known}"
    assert known - mentioned - {"-h", "--help"} == set(), f"options missing from docs/cli.md: {known - mentioned}"


def doctest_modules() -> list[str]:
    """The modules of ``hessop`` (outside ``hessop/backends``) whose docstrings hold ``>>>`` examples."""
    out = []
    for path in sorted((ROOT / "hessop").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        if rel.parts[:2] == ("hessop", "backends") or rel.name == "__main__" or ">>>" not in path.read_text():
            continue
        out.append(".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts))
    return out


def test_docstrings_with_examples_are_found():
    assert {"hessop.analysis.regularizer", "hessop.analysis.tracking", "hessop.cupy"} <= set(doctest_modules())


@pytest.mark.parametrize("name", doctest_modules())
def test_docstring_examples(name, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder().find(module)
    assert sum(len(t.examples) for t in tests) > 0, f"{name} has '>>>' in its source but no doctest was found"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out: list[str] = []
    for t in tests:
        runner.run(t, out=out.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(out)
