"""The benchmarks' README writers: a section between its markers is replaced and nothing else,
a file without them is refused, and benchmarks/README.md has the sections the scripts write
(so `--update-readme` cannot fail at the end of a long run)."""
from pathlib import Path

import pytest

from benchmarks import common

ROOT = Path(__file__).resolve().parents[1]


def test_replace_section_replaces_only_between_its_markers(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("head\n<!-- a:start -->\nold a\n<!-- a:end -->\nmiddle\n<!-- b:start -->\nold b\n<!-- b:end -->\n")
    common.replace_section(path, "a", "new a")
    assert path.read_text() == ("head\n<!-- a:start -->\nnew a\n<!-- a:end -->\nmiddle\n"
                                "<!-- b:start -->\nold b\n<!-- b:end -->\n")
    with pytest.raises(ValueError, match="lacks the <!-- c:start -->"):
        common.replace_section(path, "c", "x")


@pytest.mark.parametrize("name", ["results", "compare_torch"])
def test_the_benchmark_readme_has_the_written_sections(name):
    text = (ROOT / "benchmarks" / "README.md").read_text()
    assert text.count(f"<!-- {name}:start -->") == text.count(f"<!-- {name}:end -->") == 1
