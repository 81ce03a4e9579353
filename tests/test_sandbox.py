"""Sandbox: verdicts, hostile programs (each fails within its limit, host intact), HumanEval."""

import os
import shutil
import time
from pathlib import Path

import pytest

from rlvr_linearity.evaluate.benchmarks import _humaneval_rows, _code_meta
from rlvr_linearity.evaluate.sandbox import Limits, check_humaneval, check_lcb

if shutil.which("bwrap") is None:
    if os.environ.get("CI"):
        pytest.fail("bubblewrap is required in CI (apt-get install -y bubblewrap)", pytrace=False)
    pytest.skip("bubblewrap not installed", allow_module_level=True)

LIM = Limits(timeout=3.0, memory_mb=512)


def stdin_meta(inp="", out=""):
    return {"kind": "lcb", "tests": [{"input": inp, "output": out, "testtype": "stdin"}], "func_name": None,
            "starter_code": ""}


def run(code, inp="", out="ok\n"):
    return check_lcb(stdin_meta(inp, out), f"```python\n{code}\n```", LIM)


def test_basic_verdicts():
    assert run("print(int(input()) * 2)", "21\n", "42\n") == "passed"
    assert run("print(int(input()) * 3)", "21\n", "42\n") == "wrong_answer"
    assert run("raise ValueError('x')") == "runtime_error"
    assert run("def f(:\n  pass") == "compile_error"
    assert run("while True: pass") == "timeout"
    assert run("x = bytearray(2 * 1024**3)") == "memory"


def test_functional_tests():
    meta = {"kind": "lcb", "func_name": "add", "starter_code": "",
            "tests": [{"input": "1\n2", "output": "3", "testtype": "functional"},
                      {"input": "[1]\n[2]", "output": "[1, 2]", "testtype": "functional"}]}
    good = "class Solution:\n    def add(self, a, b):\n        return a + b\n"
    assert check_lcb(meta, good, LIM) == "passed"
    assert check_lcb(meta, good.replace("a + b", "b + a"), LIM) == "wrong_answer"
    assert check_lcb(meta, good + "import sys\nsys.exit(0)\n", LIM) == "runtime_error"


HOSTILE = {
    "network": "import socket\ns=socket.create_connection(('1.1.1.1', 80), timeout=1)\nprint('ok')",
    "write_outside_tmp": "open('{marker}', 'w').write('x')\nprint('ok')",
    "env_secret": "import os\nassert os.environ.get('WANDB_API_KEY') is None\nprint('ok' if 0 else 'no')",
    "env_secret_print": "import os\nprint(os.environ['WANDB_API_KEY'])",
    "home_files": "print(open('{home_file}').read())",
    "fork_bomb": "import os\nwhile True:\n    os.fork()",
    "memory_bomb": "a = []\nwhile True:\n    a.append(' ' * 10**7)",
    "infinite_loop": "while True: pass",
    "kill_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.killpg(0, 9)",
    "fill_disk": "f = open('/tmp/big', 'wb')\nwhile True:\n    f.write(b'x' * 2**20)",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_programs(name, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "sekrit-123")
    marker = tmp_path / "pwned"
    home_file = Path.home() / f".rlvr-sandbox-test-{os.getpid()}"  # a secret in the host's $HOME
    home_file.write_text("sekrit-123")
    try:
        code = HOSTILE[name].format(marker=marker, home_file=home_file)
        start = time.monotonic()
        verdict = run(code, "", "sekrit-123\n" if "secret" in name or name == "home_files" else "ok\n")
    finally:
        home_file.unlink()
    assert verdict != "passed", name
    assert time.monotonic() - start < LIM.timeout + 5
    assert not marker.exists()
    assert os.getpid() > 0 and run("print('ok')") == "passed"  # the evaluator and sandbox still work


HE = _humaneval_rows()


def _he_meta(i):
    return _code_meta({"format": "humaneval"}, HE[i])


@pytest.mark.parametrize("i", [0, 1, 2, 10, 32, 100, 163])
def test_humaneval_canonical_passes(i):
    meta = _he_meta(i)
    assert check_humaneval(meta, meta["canonical_solution"], LIM) == "passed"


def test_humaneval_wrong_and_fenced():
    meta = _he_meta(0)
    assert check_humaneval(meta, "    return False\n", LIM) == "wrong_answer"
    fenced = "```python\n" + meta["code_prompt"] + meta["canonical_solution"] + "```"
    assert check_humaneval(meta, fenced, LIM) == "passed"
    assert check_humaneval(meta, "    import sys; sys.exit(0)\n", LIM) == "runtime_error"


@pytest.mark.slow
def test_humaneval_all_canonical():
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        verdicts = list(pool.map(lambda i: check_humaneval(_he_meta(i), _he_meta(i)["canonical_solution"],
                                                           Limits(timeout=10)), range(len(HE))))
    assert len(verdicts) == 164
    assert [i for i, v in enumerate(verdicts) if v != "passed"] == []


def _orphaned_bwrap_zombies() -> int:
    n = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            comm = stat.read_text().split("(", 1)[1].rsplit(")", 1)[0]
        except (OSError, IndexError):
            continue
        n += comm == "bwrap" and fields[0] == "Z" and fields[1] == "1"
    return n


def test_runs_leave_no_zombies_for_init():
    """Zombies count against the sandbox uid's process limit until PID 1 reaps them (late or never
    in containers): every run reaps its own."""
    before = _orphaned_bwrap_zombies()
    for _ in range(10):
        assert run("print('ok')") == "passed"
    assert run("while True: pass") == "timeout"
    assert _orphaned_bwrap_zombies() <= before
