"""The results tables of README.md and docs/RESULTS.md are what benchmarks/summarize_results.py computes from the
results files they cite."""

import subprocess
import sys

from helpers import REPO

SCRIPT = REPO / "benchmarks" / "summarize_results.py"


def check(*documents):
    return subprocess.run([sys.executable, str(SCRIPT), "--check", "--files", *map(str, documents)],
                          capture_output=True, text=True)


def test_readme_and_results_md_equal_the_files():
    result = check(REPO / "README.md", REPO / "docs" / "RESULTS.md")
    assert result.returncode == 0, result.stderr


def test_a_figure_typed_by_hand_fails_the_check(tmp_path):
    readme = (REPO / "README.md").read_text()
    begin = readme.index("<!-- results:")
    edited = tmp_path / "README.md"
    edited.write_text(readme[:begin] + readme[begin:].replace("0.60-1.00x naive + compile", "0.89-1.00x naive + "
                                                                                             "compile", 1))
    assert edited.read_text() != readme
    result = check(edited)
    assert result.returncode != 0 and "differs from the results files" in result.stderr


def test_every_cited_results_file_exists():
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index("<!-- results:"):readme.index("<!-- /results -->")]
    cited = [cell.strip("`") for line in block.splitlines() if line.startswith("| ") and "`" in line
             for cell in [line.rstrip(" |").rsplit("| ", 1)[-1].strip()]]
    assert len(cited) >= 10
    for name in cited:
        assert (REPO / "benchmarks" / "results" / name).exists(), name
