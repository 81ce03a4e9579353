"""Sandbox: verdicts, hostile programs (each fails, later samples unharmed, no secret leaks),
HumanEval's canonical solutions and stubs."""

import os
import secrets
import shutil
from pathlib import Path

import pytest

from rlvr_linearity.errors import EvaluationError
from rlvr_linearity.evaluate import sandbox
from rlvr_linearity.evaluate.benchmarks import Problem, _code_meta, _humaneval_rows
from rlvr_linearity.evaluate.sandbox import Limits, check_humaneval, check_lcb, grade_code, run_sandboxed

if shutil.which("bwrap") is None:
    if os.environ.get("CI"):
        pytest.fail("bubblewrap is required in CI (apt-get install -y bubblewrap)", pytrace=False)
    pytest.skip("bubblewrap not installed", allow_module_level=True)

LIM = Limits(timeout=3.0, memory_mb=512)
HE = _humaneval_rows()


def stdin_meta(inp="", out=""):
    return {"kind": "lcb", "tests": [{"input": inp, "output": out, "testtype": "stdin"}], "func_name": None,
            "starter_code": ""}


def run(code, inp="", out="ok\n"):
    return check_lcb(stdin_meta(inp, out), f"```python\n{code}\n```", LIM)


def he_meta(i):
    return _code_meta({"format": "humaneval"}, HE[i])


def fenced(code):
    return f"```python\n{code}\n```"


def test_basic_verdicts():
    assert run("print(int(input()) * 2)", "21\n", "42\n") == "passed"
    assert run("print(int(input()) * 3)", "21\n", "42\n") == "wrong_answer"
    assert run("raise ValueError('x')") == "runtime_error"
    assert run("def f(:\n  pass") == "compile_error"
    assert run("while True: pass") == "timeout"
    assert run("import time\ntime.sleep(60)") == "timeout"  # wall clock, not CPU
    assert run("x = bytearray(2 * 1024**3)") == "memory"


def test_threads_run_processes_cannot_start():
    """Threads share the one address space the memory cap is on; a process would have its own."""
    threads = "import threading\nt = threading.Thread(target=print, args=('ok',))\nt.start()\nt.join()"
    assert run(threads) == "passed"
    for spawn in ("import os\nif os.fork() == 0: os._exit(0)\nprint('ok')",
                  "import subprocess\nsubprocess.run(['/bin/true'])\nprint('ok')",
                  "import os\nos.memfd_create('x')\nprint('ok')"):
        assert run(spawn) == "runtime_error", spawn


def test_thread_counts_are_per_sample():
    """RLIMIT_NPROC counts tasks per user namespace: two samples of one uid, at the same time, each
    get their 64 (one count per uid would stop the second at 64 - 56)."""
    hog = "import threading, time\nthreading.stack_size(1 << 18)  # 55 stacks of 8 MiB would not fit in 1 GiB\n" \
          "for _ in range(55):\n    threading.Thread(target=time.sleep, args=({},)).start()\nprint('ok')"
    metas = [stdin_meta("", "ok\n")] * 2
    got = grade_code([Problem(str(i), "", "", None, "code", m) for i, m in enumerate(metas)],
                     [fenced(hog.format(3)), fenced("import time\ntime.sleep(0.5)\n" + hog.format(0))],
                     workers=2, limits=Limits(timeout=8))
    assert [v.verdict for v in got] == ["passed", "passed"]


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86_64 syscall numbers")
def test_raw_syscalls_cannot_start_processes():
    """Past Python's wrappers: fork, vfork, clone(SIGCHLD), the x32 fork; clone3 says ENOSYS."""
    code = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "refused = [libc.syscall(n, 17, 0, 0, 0, 0) == -1 for n in (57, 58, 56, 0x40000000 | 57)]\n"
            "clone3 = libc.syscall(435, 0, 0) == -1 and ctypes.get_errno() == 38\n"
            "print('ok' if all(refused) and clone3 else 'started')")
    assert run(code) == "passed"


def test_functional_tests():
    meta = {"kind": "lcb", "func_name": "add", "starter_code": "",
            "tests": [{"input": "1\n2", "output": "3", "testtype": "functional"},
                      {"input": "[1]\n[2]", "output": "[1, 2]", "testtype": "functional"}]}
    good = "class Solution:\n    def add(self, a, b):\n        return a + b\n"
    assert check_lcb(meta, good, LIM) == "passed"
    assert check_lcb(meta, good.replace("a + b", "b + a"), LIM) == "wrong_answer"
    assert check_lcb(meta, good + "import sys\nsys.exit(0)\n", LIM) == "runtime_error"
    assert check_lcb(meta, good.replace("a + b", "tuple(a + b) if isinstance(a, list) else a + b"), LIM) == "passed"
    always_equal = "class Solution:\n    def add(self, a, b):\n        class E:\n            __eq__ = lambda s, o: True\n" \
                   "        return E()\n"
    assert check_lcb(meta, always_equal, LIM) == "wrong_answer"


_HE2 = {"prompt": "", "test": "def check(candidate):\n    assert candidate() == {'a': [1, (2, 3)]}\n"}


@pytest.mark.parametrize("body, verdict", [
    ("return {'a': [1, (2, 3)]}", "passed"),
    # builtin subclasses arrive as their base type (HumanEval's harness accepts them too)
    ("import collections\n    return collections.defaultdict(list, a=[1, collections.namedtuple('P', 'x y')(2, 3)])",
     "passed"),
    ("return {'a': [1, [2, 3]]}", "wrong_answer"),  # exact types: a list is not the tuple
    ("class E:\n        __eq__ = lambda s, o: True\n    return E()", "wrong_answer"),
    ("class E(dict):\n        __eq__ = lambda s, o: True\n    return E()", "wrong_answer"),
    ("class E(int):\n        __eq__ = lambda s, o: True\n    return E(7)", "wrong_answer"),
    ("import sys\n    sys.exit(0)", "runtime_error"),
    ("return bytearray(900 * 2**20)", "memory"),
])
def test_results_cross_as_plain_values(body, verdict):
    program = f"def f():\n    {body}\n"
    assert run_sandboxed(program, "humaneval", entry="f", tests=_HE2, limits=LIM).verdict == verdict


HOSTILE = {
    "network": "import socket\ns=socket.create_connection(('1.1.1.1', 80), timeout=1)\nprint('ok')",
    "write_outside_tmp": "open('{marker}', 'w').write('x')\nprint('ok')",
    "env_secret": "import os\nassert os.environ.get('WANDB_API_KEY') is None\nprint('ok' if 0 else 'no')",
    "env_secret_print": "import os\nprint(os.environ['WANDB_API_KEY'])",
    "init_environ": "print(open('/proc/1/environ').read())",
    "home_files": "print(open('{home_file}').read())",
    "fork_bomb": "import os\nwhile True:\n    os.fork()",
    "memory_bomb": "a = []\nwhile True:\n    a.append(' ' * 10**7)",
    "infinite_loop": "while True: pass",
    "kill_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.killpg(0, 9)\nos.kill(-1, 9)",
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
        res = run_sandboxed(code, "stdin", limits=LIM)
        verdict = run(code, "", "sekrit-123\n" if "secret" in name or name in ("home_files", "init_environ") else "ok\n")
    finally:
        home_file.unlink()
    assert verdict != "passed", name
    assert "sekrit" not in res.stdout
    assert not marker.exists()
    assert run("print('ok')") == "passed"  # the evaluator and sandbox still work


@pytest.mark.parametrize("i", [0, 1, 2, 10, 32, 33, 38, 100, 163])
def test_humaneval_canonical_passes(i):
    meta = he_meta(i)
    assert check_humaneval(meta, meta["canonical_solution"], LIM) == "passed"


def test_humaneval_wrong_and_fenced():
    meta = he_meta(0)
    assert check_humaneval(meta, "    return False\n", LIM) == "wrong_answer"
    assert check_humaneval(meta, fenced(meta["code_prompt"] + meta["canonical_solution"]), LIM) == "passed"
    assert check_humaneval(meta, "    import sys; sys.exit(0)\n", LIM) == "runtime_error"


def test_a_broken_sandbox_is_an_error_not_a_verdict(monkeypatch):
    """bwrap or the launcher failing must stop the evaluation, not grade every sample wrong."""
    monkeypatch.setattr(sandbox, "_LAUNCHER", "raise SystemExit('launcher broke')")
    with pytest.raises(EvaluationError, match="launcher broke"):
        run_sandboxed("print(1)", "stdin", limits=LIM)


def test_only_known_verdicts_are_recorded(monkeypatch):
    monkeypatch.setattr(sandbox, "_LAUNCHER", "import os, sys\nos.write(int(sys.argv[5]), b'bogus')")
    assert run_sandboxed("print(1)", "stdin", limits=LIM).verdict == "runtime_error"
    monkeypatch.setattr(sandbox, "_LAUNCHER", "import os, sys\nos.write(int(sys.argv[5]), b'passed')")
    assert run_sandboxed("print(1)", "stdin", limits=LIM).verdict == "runtime_error"  # not a stdin verdict


def _sandbox_leftovers() -> list[str]:
    """Processes of a sandbox still alive, and zombies handed to PID 1 (which in a container may
    never reap them)."""
    found = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (d / "cmdline").read_bytes()
            stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if b"PR_SET_DUMPABLE" in cmdline or cmdline.startswith(b"bwrap") or (stat[0] == "Z" and stat[1] == "1"):
            found.append(f"{d.name} {stat[0]} {cmdline[:60]!r}")
    return found


def test_runs_leave_nothing_behind():
    before = _sandbox_leftovers()
    for _ in range(5):
        assert run("print('ok')") == "passed"
    assert run("import threading, time\nthreading.Thread(target=time.sleep, args=(60,)).start()\nprint('ok')") \
        == "passed"
    assert run("while True: pass") == "timeout"
    assert _sandbox_leftovers() == before


@pytest.mark.slow
def test_humaneval_all_canonical_pass_and_stubs_fail():
    metas = [he_meta(i) for i in range(len(HE))]
    problems = [Problem(str(i), "", "", None, "code", m) for i, m in enumerate(metas)]
    got = grade_code(problems * 2, [m["canonical_solution"] for m in metas] + ["    pass\n"] * len(metas),
                     workers=2, limits=Limits(timeout=10))
    assert len(got) == 2 * 164
    assert [i for i, v in enumerate(got[:164]) if v.verdict != "passed"] == []
    assert [i for i, v in enumerate(got[164:]) if v.verdict == "passed"] == []


# Hostile HumanEval/0 programs. An attack that can only cheat returns a wrong answer and tries to
# fake a pass; one that looks for something it must not reach answers right only if it found it
# (_LEAK), so a leak shows as a pass.
_ANSWER = """
def has_close_elements(numbers, threshold):
    right = any(abs(a - b) < threshold for i, a in enumerate(numbers) for j, b in enumerate(numbers) if i != j)
    return right if _LEAK else not right
"""
_FAKE_PASS = """
    for v in vals:
        print(str(v)[:300], '"passed"')
        print(str(v)[:300] + ' "passed"')
    print('passed')
    sys.stdout.flush()
    os._exit(0)
"""
_NEEDLE = "needle = ''.join(reversed('eslaF == )50.0'))  # HumanEval/0's tests; never whole in this program\n"
_SCAN = """
def scan(paths):
    for root in paths:
        for d, _, files in os.walk(root):
            for f in files:
                try:
                    with open(os.path.join(d, f), 'rb') as fh:
                        if needle.encode() in fh.read(1 << 24):
                            return True
                except OSError:
                    pass
    return False
"""
HOSTILE_HE = {
    "nonce_from___main__": "import __main__, os, sys\nvals = list(vars(__main__).values())\n" + _FAKE_PASS.replace("\n    ", "\n"),
    "nonce_from_frames": "import os, sys\ndef has_close_elements(numbers, threshold):\n    vals = []\n"
                         "    f = sys._getframe()\n    while f is not None:\n"
                         "        vals += list(f.f_globals.values()) + list(f.f_locals.values())\n        f = f.f_back\n"
                         + _FAKE_PASS,
    "nonce_from_stdin_pread": "import os, sys\ndef has_close_elements(numbers, threshold):\n"
                              "    vals = [os.pread(0, 1 << 16, 0)]\n" + _FAKE_PASS,
    "forged_replies": "import os, pickle, struct\ndef has_close_elements(numbers, threshold):\n"
                      "    for msg in (('passed',), ('ok', True), 'passed'):\n"
                      "        data = pickle.dumps(msg)\n"
                      "        for fd in range(64):\n"
                      "            try:\n                os.write(fd, struct.pack('<Q', len(data)) + data)\n"
                      "            except OSError:\n                pass\n"
                      "    os._exit(0)\n",
    "malicious_pickle_reply": "import __main__\nclass P:\n"
                              "    dumps = staticmethod(lambda obj, proto=4: b'\\x80\\x04cposix\\n_exit\\nK\\x00\\x85R.')\n"
                              "    loads = staticmethod(__main__.pickle.loads)\n__main__.pickle = P\n"
                              "def has_close_elements(numbers, threshold):\n    return True\n",
    "malformed_verdict_lines": "import sys\nprint('\\x00' * 100)\nprint('bogus')\nprint('\"bogus\"')\n"
                               "print('x' * 10**6)\nprint('passed')\nsys.exit(0)\n",
    "always_equal": "class E:\n    __eq__ = lambda s, o: True\n    __ne__ = lambda s, o: False\n"
                    "def has_close_elements(numbers, threshold):\n    return E()\n",
    "always_equal_bool_subclass": "class E(int):\n    __eq__ = lambda s, o: True\n"
                                  "def has_close_elements(numbers, threshold):\n    return E(2)\n",
    "tamper_test_globals": "import builtins, sys\nbuiltins.AssertionError = type('AssertionError', (Exception,), {})\n"
                           "builtins.abs = lambda x: 0\ndef check(candidate):\n    return None\n"
                           "sys.modules['builtins'].__dict__['check'] = check\n"
                           "def has_close_elements(numbers, threshold):\n    return None\n",
    "read_the_tests": "import gc, glob, os, sys\nblobs = []\nf = sys._getframe().f_back\nwhile f is not None:\n"
                      "    blobs += [repr(v)[:1 << 20] for v in [*f.f_globals.values(), *f.f_locals.values()]]\n"
                      "    f = f.f_back\n"
                      "blobs += [repr(o)[:1 << 16] for o in gc.get_objects() if type(o) in (dict, list, tuple)]\n"
                      "for p in ['/proc/1/cmdline', '/proc/1/environ', '/proc/1/mem', '/dev/stdin']"
                      " + glob.glob('/proc/*/fd/*'):\n"
                      "    try:\n        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)\n"
                      "        blobs.append(os.read(fd, 1 << 24).decode('latin1'))\n"
                      "    except OSError:\n        pass\n"
                      + _NEEDLE + _SCAN  # the needle exists only once the blobs are taken
                      + "_LEAK = scan(['/tmp', '/var/tmp', '/dev/shm', '{tmpdir}']) or any(needle in b for b in blobs)\n"
                      + _ANSWER,
    "init_environ_secrets": "import glob, os\nblobs = [repr(dict(os.environ))]\n"
                            "for p in ['/proc/1/environ', '/proc/self/environ'] + glob.glob('/proc/*/environ'):\n"
                            "    try:\n        blobs.append(open(p, 'rb').read().decode('latin1'))\n"
                            "    except OSError:\n        pass\n"
                            "_LEAK = any('HF_TOKEN' in b or 'WANDB_API_KEY' in b for b in blobs)\n"
                            "print(blobs)\n" + _ANSWER,
    "proc_mem_of_init": "import ctypes\n_LEAK = False\ntry:\n    open('/proc/1/mem', 'r+b')\n    _LEAK = True\n"
                        "except OSError:\n    pass\n"
                        "_LEAK = _LEAK or ctypes.CDLL(None).ptrace(16, 1, 0, 0) == 0  # PTRACE_ATTACH\n" + _ANSWER,
    "fork_bomb": "import os, time\nn = 0\ntry:\n    while n < 100000:\n        if os.fork() == 0:\n"
                 "            time.sleep(30)\n        n += 1\nexcept OSError:\n    pass\n_LEAK = n > 0\n" + _ANSWER,
    "thread_bomb": "import threading, time\nn = 0\ntry:\n    while n < 100000:\n"
                   "        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n        n += 1\n"
                   "except RuntimeError:\n    pass\n_LEAK = False\n" + _ANSWER,
    "memory_bomb_in_children": "import os, time\nkids = []\nfor _ in range(4):\n    r, w = os.pipe()\n"
                               "    try:\n        pid = os.fork()\n    except OSError:\n        break\n"
                               "    if pid == 0:\n        b = bytearray(800 * 2**20)\n        b[::4096] = b'x' * len(b[::4096])\n"
                               "        os.write(w, b'1')\n        time.sleep(30)\n    kids.append(r)\n"
                               "_LEAK = sum(len(os.read(r, 1)) for r in kids) >= 2\n" + _ANSWER,
    "memory_bomb_outside_address_space": "import os\nstored, chunk = 0, b'x' * 2**20\n"
                                         "for path in ['/dev/shm/x', '/dev/x'] + ['/tmp/x%d' % i for i in range(200)]:\n"
                                         "    try:\n        with open(path, 'wb') as f:\n"
                                         "            for _ in range(64):\n                f.write(chunk)\n"
                                         "                stored += len(chunk)\n    except OSError:\n        pass\n"
                                         "try:\n    fd = os.memfd_create('x')\n    for _ in range(2048):\n"
                                         "        os.write(fd, chunk)\n        stored += len(chunk)\nexcept OSError:\n"
                                         "    pass\n_LEAK = stored >= 2 * 2**30\n" + _ANSWER,
    "tmpdir_outside_tmp": "import os, time\n" + _NEEDLE + _SCAN
                          + "time.sleep(0.3)  # the other worker's sample is running now\n"
                            "_LEAK = scan(['{tmpdir}'])\n" + _ANSWER,
    "signal_init": "import os, signal\nfor sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGSTOP):\n"
                   "    try:\n        os.kill(1, sig)\n    except OSError:\n        pass\n_LEAK = False\n" + _ANSWER,
}
HOSTILE_HE4 = {  # HumanEval/4: its tests call abs() on the result
    "shadow_builtin_abs": "import builtins\nbuiltins.abs = lambda x: 0\nabs = lambda x: 0\n"
                          "def mean_absolute_deviation(numbers):\n    return 0.0\n",
}
HOSTILE_STDIN = {  # the expected output is the secret: printing it would pass
    "print_init_environ": "import re\nprint(re.findall(r'HF_TOKEN=([^\\x00]*)', open('/proc/1/environ').read())[0])",
    "print_environ": "import os\nprint(os.environ['HF_TOKEN'])",
    "print_any_environ": "import glob, re\nfor p in glob.glob('/proc/*/environ'):\n    try:\n"
                         "        print(*re.findall(r'HF_TOKEN=([^\\x00]*)', open(p).read()))\n    except OSError:\n"
                         "        pass",
}


@pytest.mark.slow
def test_hostile_suite_two_workers_with_controls(tmp_path, monkeypatch):
    secret_hf, secret_wandb = "hf_" + secrets.token_hex(16), secrets.token_hex(20)
    monkeypatch.setenv("HF_TOKEN", secret_hf)
    monkeypatch.setenv("WANDB_API_KEY", secret_wandb)
    tmpdir = Path("/var/tmp") / f"rlvr-sandbox-test-{secrets.token_hex(4)}"  # TMPDIR outside /tmp
    tmpdir.mkdir(mode=0o755)
    planted = tmpdir / "rlvr-sandbox-other" / "harness.py"  # what a sandbox used to leave readable there
    planted.parent.mkdir(mode=0o755)
    planted.write_text(HE[0]["test"])
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr("tempfile.tempdir", None)
    he0, he4 = he_meta(0), he_meta(4)
    lcb_secret = stdin_meta("", secret_hf + "\n")
    cases = []  # (name, meta, response, hostile)
    for name, code in HOSTILE_HE.items():
        code = code.replace("{tmpdir}", str(tmpdir))
        cases.append((name, he0, fenced(code), True))
        cases.append((name + " control", he0, he0["canonical_solution"], False))
        if _ANSWER in code:  # the probe: this attack, had it succeeded, would have passed
            cases.append((name + " probe", he0, fenced(code.replace(_ANSWER, "\n_LEAK = True\n" + _ANSWER)), False))
    for name, code in HOSTILE_HE4.items():
        cases.append((name, he4, fenced(code), True))
        cases.append((name + " control", he4, he4["canonical_solution"], False))
    for name, code in HOSTILE_STDIN.items():
        cases.append((name, lcb_secret, fenced(code), True))
        cases.append((name + " control", stdin_meta("x\n", "x\n"), fenced("print(input())"), False))
    try:
        got = grade_code([Problem(str(i), "", "", None, "code", c[1]) for i, c in enumerate(cases)],
                         [c[2] for c in cases], workers=2, limits=Limits(timeout=8))
        stdouts = [run_sandboxed(sandbox.extract_code(fenced(code)), "stdin", limits=LIM).stdout
                   for code in HOSTILE_STDIN.values()]
        left_in_tmpdir = sorted(p.name for p in tmpdir.iterdir())
    finally:
        shutil.rmtree(tmpdir)
    verdicts = {c[0]: v.verdict for c, v in zip(cases, got)}
    assert {n: v for n, v in verdicts.items() if n.endswith(("control", "probe")) and v != "passed"} == {}
    assert {n: v for n, v in verdicts.items() if not n.endswith(("control", "probe")) and v == "passed"} == {}
    assert set(verdicts.values()) <= set(sandbox.VERDICTS)
    outputs = [v.verdict + v.program_excerpt for v in got] + stdouts
    assert [o for o in outputs if secret_hf in o or secret_wandb in o] == []
    assert left_in_tmpdir == ["rlvr-sandbox-other"]  # the grader writes nothing there
    assert _sandbox_leftovers() == []
