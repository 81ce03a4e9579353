"""Run model-generated code in layers (docs/ecosystem.md): an unprivileged uid (nobody, when we
are root), setrlimit (address space, CPU seconds, processes, file size), bubblewrap with every
namespace unshared, read-only root, private /tmp, no environment, home directories hidden, and an
outer wall-clock kill of the whole process group.

Verdicts: passed, wrong_answer, runtime_error, timeout, memory, compile_error.
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import secrets
import shutil
import signal
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rlvr_linearity.errors import EvaluationError

VERDICTS = ("passed", "wrong_answer", "runtime_error", "timeout", "memory", "compile_error")
_EXIT_COMPILE, _EXIT_ASSERT, _EXIT_MEMORY = 3, 4, 5
_HUMANEVAL_STOPS = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```")

# Runs inside the sandbox: compile (compile_error), exec, map exceptions to exit codes. Harness
# code (tests, check) runs after the program in the same globals and proves it finished by
# printing a nonce the program never sees (read from stdin before the program runs).
_WRAPPER = r'''
import sys, json
mode = sys.argv[1]
nonce = sys.stdin.readline().strip() if mode != "stdin" else ""
src = open("/tmp/box/prog.py", encoding="utf-8").read()
try:
    code = compile(src, "solution.py", "exec")
except (SyntaxError, ValueError, OverflowError, RecursionError, MemoryError):
    sys.exit(3)
g = {"__name__": "__main__" if mode == "stdin" else "solution"}
try:
    exec(code, g)
    if mode != "stdin":
        exec(compile(open("/tmp/box/harness.py", encoding="utf-8").read(), "harness.py", "exec"), g)
        sys.stdout.flush()
        sys.__stdout__.write("\n" + nonce + " " + json.dumps(g.get("__verdict__", "passed")) + "\n")
except SystemExit:
    if mode != "stdin":
        sys.exit(1)  # a program that exits early never reaches the tests
    raise
except AssertionError:
    sys.exit(4)
except MemoryError:
    sys.exit(5)
'''

# Runs outside the sandbox, as the unprivileged uid, between us and bwrap: bwrap's sandbox init is
# its own session and outlives bwrap's monitor by a moment, so without a child subreaper every run
# leaves a zombie for PID 1 to reap, and a container's PID 1 may reap late or never; zombies count
# against the uid's RLIMIT_NPROC until reaped (seen: canonical HumanEval solutions failing after
# ~50 quick runs). The reaper also enforces the wall clock: it kills bwrap (whose sandbox dies
# with it) and still reaps everything.
_REAPER = r'''
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
timeout, argv = float(sys.argv[1]), sys.argv[2:]
pid = os.fork()
if pid == 0:
    os.execv(argv[0], argv)
def expire(*_):
    global timed_out
    timed_out = True
    os.kill(pid, signal.SIGKILL)
timed_out, status = False, 0
signal.signal(signal.SIGALRM, expire)
signal.setitimer(signal.ITIMER_REAL, timeout)
while True:
    try:
        done, st = os.waitpid(-1, 0)
    except ChildProcessError:
        break
    if done == pid:
        status = st
        signal.setitimer(signal.ITIMER_REAL, 0)
code = os.waitstatus_to_exitcode(status)
sys.exit(128 + signal.SIGKILL if timed_out else (128 - code if code < 0 else code))
'''

_FUNCTIONAL_HARNESS = r'''
import json as _json
_tests = _json.load(open("/tmp/box/tests.json"))
_sol = Solution() if "Solution" in globals() else None
_fn = getattr(_sol, _tests["func_name"]) if _sol is not None else globals()[_tests["func_name"]]
for _t in _tests["cases"]:
    _args = [_json.loads(line) for line in _t["input"].split("\n") if line.strip()]
    _got = _json.loads(_json.dumps(_fn(*_args)))
    if _got != _json.loads(_t["output"]):
        __verdict__ = "wrong_answer"
        break
'''


@dataclass(frozen=True)
class Limits:
    timeout: float = 6.0  # wall-clock seconds per run
    memory_mb: int = 1024  # address space
    nproc: int = 64
    fsize_mb: int = 16  # largest file (also caps stdout)
    tmpfs_mb: int = 64


@dataclass(frozen=True)
class RunResult:
    verdict: str  # "ok" (exit 0) or a failing verdict
    stdout: str
    returncode: int | None


@dataclass(frozen=True)
class CodeVerdict:
    verdict: str
    program_excerpt: str  # the start of the program that ran (for samples.jsonl)


def bwrap_path() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise EvaluationError("bubblewrap (bwrap) is not installed: apt-get install -y bubblewrap "
                              "(model-generated code runs only inside the sandbox)")
    return path


def _python() -> str:
    """A system interpreter outside hidden directories (/root, /home, /work)."""
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(cand):
            return os.path.realpath(cand)
    raise EvaluationError("no system python3 (/usr/bin/python3) to run code in the sandbox")


def _drop(limits: Limits, cpu_s: int):
    uid = gid = None
    if os.geteuid() == 0:
        import pwd

        nobody = pwd.getpwnam("nobody")
        uid, gid = nobody.pw_uid, nobody.pw_gid

    def preexec():
        mem = limits.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.fsize_mb << 20, limits.fsize_mb << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if uid is not None:  # NPROC is per uid: only meaningful once we are nobody
            resource.setrlimit(resource.RLIMIT_NPROC, (limits.nproc, limits.nproc))
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)

    return preexec


def run_sandboxed(files: dict[str, str], argv: list[str], stdin: str = "", limits: Limits = Limits()) -> RunResult:
    """Run `python3 /tmp/box/wrapper.py ARGV` with `files` mounted read-only under /tmp/box."""
    with tempfile.TemporaryDirectory(prefix="rlvr-sandbox-") as tmp:
        box = Path(tmp) / "box"
        box.mkdir()
        for name, text in files.items():
            (box / name).write_text(text, encoding="utf-8")
        os.chmod(tmp, 0o755)
        os.chmod(box, 0o755)
        for p in box.iterdir():
            os.chmod(p, 0o644)
        out_path, in_path = Path(tmp) / "stdout", Path(tmp) / "stdin"
        in_path.write_text(stdin, encoding="utf-8")
        cmd = [_python(), "-I", "-S", "-c", _REAPER, str(limits.timeout), bwrap_path(), "--unshare-all", "--die-with-parent", "--new-session",
               "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
               "--size", str(limits.tmpfs_mb << 20), "--tmpfs", "/tmp"]
        for hidden in ("/root", "/home", "/work", os.path.expanduser("~")):
            if os.path.isdir(hidden):
                cmd += ["--tmpfs", hidden]
        cmd += ["--ro-bind", str(box), "/tmp/box", "--chdir", "/tmp", "--clearenv",
                "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
                "--setenv", "PYTHONDONTWRITEBYTECODE", "1", "--setenv", "PYTHONHASHSEED", "0",
                _python(), "-I", "-S", *argv]
        cpu_s = max(1, math.ceil(limits.timeout))
        with open(in_path, "rb") as fin, open(out_path, "wb") as fout:
            proc = subprocess.Popen(cmd, stdin=fin, stdout=fout, stderr=subprocess.DEVNULL,
                                    start_new_session=True, preexec_fn=_drop(limits, cpu_s), close_fds=True)
            try:
                rc = proc.wait(timeout=limits.timeout + 2.0)  # the reaper's own clock fires first
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
                rc = None
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        stdout = out_path.read_bytes()[: limits.fsize_mb << 20].decode("utf-8", "replace")
    if timed_out or rc in (-signal.SIGXCPU, -signal.SIGKILL, 128 + signal.SIGXCPU, 128 + signal.SIGKILL):
        return RunResult("timeout", stdout, rc)
    verdict = {0: "ok", _EXIT_COMPILE: "compile_error", _EXIT_ASSERT: "wrong_answer", _EXIT_MEMORY: "memory"}
    return RunResult(verdict.get(rc, "runtime_error"), stdout, rc)


def _outputs_match(got: str, want: str) -> bool:
    g, w = got.split(), want.split()
    if g == w:
        return True
    if len(g) != len(w):
        return False
    for a, b in zip(g, w):
        if a != b:
            try:
                if not math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-6):
                    return False
            except ValueError:
                return False
    return True


def extract_code(response: str) -> str | None:
    """The last fenced code block (```python preferred), else None."""
    blocks = re.findall(r"```[ \t]*(\w*)[^\n]*\n(.*?)```", response, flags=re.S)
    if not blocks:
        return None
    py = [b for lang, b in blocks if lang.lower() in ("python", "py", "python3")]
    return (py or [b for _, b in blocks])[-1]


def humaneval_program(meta: dict, response: str) -> str:
    block = extract_code(response)
    if block is None:  # a completion of the prompt: cut where the function body ends
        cut = min([i for i in (response.find(s) for s in _HUMANEVAL_STOPS) if i >= 0] or [len(response)])
        block = response[:cut]
        return meta["code_prompt"] + block
    return meta["code_prompt"] + "\n" + block


def _nonce_ok(result: RunResult, nonce: str) -> str:
    lines = result.stdout.rstrip("\n").rsplit("\n", 1)
    last = lines[-1].split(" ", 1) if lines else []
    if result.verdict != "ok":
        return result.verdict
    if len(last) != 2 or last[0] != nonce:
        return "runtime_error"
    return json.loads(last[1])


def check_humaneval(meta: dict, response: str, limits: Limits = Limits()) -> str:
    program = humaneval_program(meta, response)
    harness = meta["test"] + f"\ncheck({meta['entry_point']})\n"
    nonce = secrets.token_hex(16)
    res = run_sandboxed({"prog.py": program, "harness.py": harness, "wrapper.py": _WRAPPER},
                        ["/tmp/box/wrapper.py", "harness"], nonce + "\n", limits)
    return _nonce_ok(res, nonce)


def check_lcb(meta: dict, response: str, limits: Limits = Limits()) -> str:
    program = extract_code(response) or response
    tests = meta["tests"]
    if not tests:
        raise EvaluationError("LiveCodeBench problem without tests")
    if tests[0].get("testtype") == "functional":
        nonce = secrets.token_hex(16)
        spec = {"func_name": meta["func_name"], "cases": tests}
        res = run_sandboxed({"prog.py": program, "harness.py": _FUNCTIONAL_HARNESS, "wrapper.py": _WRAPPER,
                             "tests.json": json.dumps(spec)}, ["/tmp/box/wrapper.py", "functional"],
                            nonce + "\n", limits)
        return _nonce_ok(res, nonce)
    for t in tests:
        res = run_sandboxed({"prog.py": program, "wrapper.py": _WRAPPER}, ["/tmp/box/wrapper.py", "stdin"],
                            t["input"], limits)
        if res.verdict != "ok":
            return res.verdict
        if not _outputs_match(res.stdout, t["output"]):
            return "wrong_answer"
    return "passed"


def check_code(meta: dict, response: str, limits: Limits = Limits()) -> str:
    if meta["kind"] == "humaneval":
        return check_humaneval(meta, response, limits)
    return check_lcb(meta, response, limits)


def grade_code(problems: list, responses: list[str], workers: int = 2, limits: Limits = Limits()) -> list[CodeVerdict]:
    """A verdict for every (problem, response) pair; runs `workers` sandboxes at a time."""
    bwrap_path()

    def one(pr):
        p, r = pr
        program = humaneval_program(p.meta, r) if p.meta["kind"] == "humaneval" else (extract_code(r) or r)
        return CodeVerdict(check_code(p.meta, r, limits), program[:2000])

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(one, zip(problems, responses)))
