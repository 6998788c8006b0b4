"""The side-by-side benchmark harness: verdicts, repeats and doc sections (no other tool needed)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks._tools import Case, Run, interleaved, rel_err, replace_section, top_err
from benchmarks.compare import behind


def _case(tool, task, seconds, hvps, value=None):
    c = Case(tool, task, fn=None)
    c.runs.append(Run(value, seconds, 0, hvps))
    return c


def test_errors_against_truth():
    assert rel_err(1.1, 1.0) == pytest.approx(0.1)
    assert rel_err(-0.9, -1.0) == pytest.approx(0.1)
    # the largest relative error over the k largest, whatever order the tool returns them in
    assert top_err([1.0, 3.0], np.array([3.0, 2.0, 1.0])) == pytest.approx(0.5)


def test_behind_compares_speed_only_at_comparable_accuracy():
    mine, fast_bad = _case("hessop", "top1", 1.0, 10), _case("A", "top1", 0.1, 30)
    fast_good = _case("B", "top1", 0.5, 30)
    errors = {id(mine): 1e-6, id(fast_bad): 1e-3, id(fast_good): 1.5e-6}
    lines = behind([mine, fast_bad, fast_good], errors)
    assert len(lines) == 1 and lines[0].startswith("top1: B 2.0x faster")


def test_behind_flags_more_accurate_for_no_more_products():
    mine, other = _case("hessop", "top20", 1.0, 50), _case("A", "top20", 1.0, 40)
    assert behind([mine, other], {id(mine): 1e-4, id(other): 1e-6}) == [
        "top20: A more accurate (1.0e-06 vs 1.0e-04) with 40 HVPs vs 50"]
    more = _case("A", "top20", 1.0, 80)
    assert behind([mine, more], {id(mine): 1e-4, id(more): 1e-6}) == []


def test_behind_judges_traces_by_time_at_equal_products_only():
    mine = _case("hessop", "trace:hutchinson", 1.0, 96)
    lucky = _case("A", "trace:hutchinson", 1.0, 96)  # one draw closer to the truth: chance, not a verdict
    early = _case("B", "trace:hutchinson", 0.1, 12)  # faster because it made fewer products
    quick = _case("C", "trace:hutchinson", 0.5, 96)
    errors = {id(mine): 5e-2, id(lucky): 1e-4, id(early): 1e-2, id(quick): 9e-2}
    assert behind([mine, lucky, early, quick], errors) == [
        "trace:hutchinson: C 2.0x faster at the same 96 HVPs"]


def test_interleaved_repeats_short_cases_only():
    calls = []

    def make(name, seconds):
        def fn(counter):
            calls.append(name)
            counter.count = 1
            return seconds
        return Case(name, "t", fn)

    short, slow = make("short", 0.0), make("slow", 0.0)
    interleaved([short, slow], repeats=3, long=0.05, short=0.0)
    assert calls == ["short", "slow"] * 3  # round-robin
    slow.runs[0].seconds = 1.0  # as if its first run had been long
    calls.clear()
    interleaved([short, slow], repeats=2, long=0.05, short=0.0)
    assert calls == ["short", "slow", "short"]


def test_memory_in_the_first_round_times_from_the_others():
    runs = []

    def fn(counter):
        runs.append(1)
        counter.count = 3
        return None

    case = Case("t", "hvp", fn)
    interleaved([case], repeats=3)  # a fast case: timed 10 times in each later round
    assert len(runs) == 1 + 2 * 10
    assert [r.peak_bytes is None for r in case.runs] == [False, True, True]
    assert all(r.hvps == 3 for r in case.runs)
    case.runs[0].seconds = -1.0  # the memory run never sets the time when timing runs exist
    assert case.seconds == min(r.seconds for r in case.runs[1:])
    assert case.peak_mib == case.runs[0].peak_bytes / 2**20


def test_failing_tool_is_recorded_not_raised():
    def boom(counter):
        raise RuntimeError("no such solver\nsecond line")

    c = Case("X", "t", boom)
    interleaved([c], repeats=2)
    assert c.runs == [] and c.error == "RuntimeError: no such solver"


def test_replace_section_keeps_the_rest(tmp_path):
    path = tmp_path / "p.md"
    path.write_text("# T\n\n## A\n\nold a\n\n## B (cmd)\n\nold b\nmore\n\n## C\n\nc\n")
    replace_section(str(path), "## B", "new b")
    assert path.read_text() == "# T\n\n## A\n\nold a\n\n## B (cmd)\n\nnew b\n\n## C\n\nc\n"


def test_a_comparison_of_one_model_keeps_the_other_models_published_blocks(tmp_path, monkeypatch):
    import benchmarks.__main__ as bench

    page = tmp_path / "performance.md"
    page.write_text(f"# P\n\n{bench.SECTION}\n\nnotes\n\n### two-layer-15010 — n = 15,010\n\n"
                    "`python -m benchmarks compare two-layer --repeats 3` table\n\n### cnn-bn\n\n"
                    "Not run yet: `python -m benchmarks compare cnn-bn`.\n\n## Next\n\nrest\n")
    monkeypatch.setattr(bench, "PERFORMANCE", str(page))
    blocks = bench._published_blocks()
    assert list(blocks) == ["two-layer"]  # keyed by the command, not by the heading; placeholders dropped
    assert blocks["two-layer"].startswith("### two-layer-15010") and "## Next" not in blocks["two-layer"]


def test_quick_figures_do_not_overwrite_the_docs(tmp_path, monkeypatch):
    from benchmarks.reproduce._common import IMG, figure_path

    monkeypatch.setenv("HESSOP_BENCH_FIGURES", str(tmp_path))
    assert figure_path("x") == str(tmp_path / "repro_x.png")
    monkeypatch.delenv("HESSOP_BENCH_FIGURES")
    assert figure_path("x").startswith(IMG)


def test_peak_memory_sees_a_short_lived_allocation():
    from benchmarks._tools import PeakRSS

    with PeakRSS() as small:
        pass
    with PeakRSS() as big:
        block = np.ones(2**24)  # 128 MiB, touched, then freed before the block ends
        del block
    assert big.peak >= 120 * 2**20
    assert small.peak < 16 * 2**20


def test_threads_are_pinned_inside_and_restored_after():
    import torch

    from benchmarks._tools import threads

    original = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with threads(None):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(original)


def test_trace_draws_are_the_seeded_estimates_with_their_spread():
    pytest.importorskip("torch")
    from benchmarks.trace_draws import main, summary

    lines = []
    res = main(["--problem", "mlp-digits", "--seeds", "2", "--max-matvecs", "12", "--methods", "hutchinson"],
               log=lines.append)
    (a, sa), (b, sb) = res["hessop hutchinson"]
    assert a != b and sa > 0 and sb > 0  # two different draws, each with its own standard error
    assert lines[0].startswith("hessop hutchinson: ") and "spread between draws" in lines[0]
    assert summary([(1.0, 0.3), (3.0, 0.4)]).endswith(
        f"mean 2, spread between draws 1.41, reported standard error {np.sqrt(0.125):.3g}")
    with pytest.raises(SystemExit):
        main(["--seeds", "0"])
