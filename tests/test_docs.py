"""The numbers of README.md and docs/ are rendered from the committed results
(`scripts/render-docs.py`): the docs agree with them, and a planted wrong number is caught."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "render-docs.py"


def check(*files: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--check", *map(str, files)],
                          capture_output=True, text=True, cwd=ROOT)  # fmt: skip


def test_the_docs_agree_with_the_results():
    done = check()
    assert done.returncode == 0, done.stderr
    assert "marked numbers and tables" in done.stdout


def test_a_planted_wrong_number_or_a_stale_table_fails_the_check(tmp_path):
    readme = (ROOT / "README.md").read_text()
    marker = "<!--cell results/study-pydocs/table.md#Perplexity; mdlm; test NELBO (nats/token)-->"
    right = readme[readme.index(marker) + len(marker) :].split("<!--/cell-->")[0]
    planted = tmp_path / "README.md"
    planted.write_text(readme.replace(marker + right, marker + "4.600 ± 0.014"))
    done = check(planted)
    assert done.returncode == 1 and "'4.600 ± 0.014' but cell" in done.stderr
    assert f"says '{right}'" in done.stderr
    table = "<!--include results/bench/train.md-->"
    stale = readme.replace(table + "\n| family", table + "\n| familyX")
    planted.write_text(stale)
    assert check(planted).returncode == 1
    (tmp_path / "bad.md").write_text(
        "<!--value results/bench/data.json; no/such/key-->1<!--/value-->"
    )
    done = check(tmp_path / "bad.md")
    assert done.returncode == 1 and "has no no/such/key" in done.stderr
