"""House rules that a tool checks: ruff (configured in pyproject.toml) is clean over the repository,
and no module is far over the ~300-line budget. Both run in CI through the README's test command."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("moskd", "teacher", "students", "selector", "inference")


def test_ruff_is_clean():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)], capture_output=True,
                          text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_module_is_far_over_300_lines():
    long = {str(p.relative_to(ROOT)): n for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 330}
    assert not long, f"split these modules along their seams: {long}"
