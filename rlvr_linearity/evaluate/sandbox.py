"""Run model-generated code so that nothing it does can forge its verdict, read the tests or the
grader's environment, or reach another sample (docs/ecosystem.md, docs/contract.md "Errors").

Layers: bubblewrap, started as `nobody` when we are root and with an empty environment, unshares
every namespace (a user namespace of its own per sample, so thread and process counts are the
sample's own; no network; a PID namespace whose init is our launcher), mounts / read-only with
/root, /home, /work, /run, $HOME and $TMPDIR hidden, a size-capped private /tmp and a read-only
/dev. Nothing is written to the host's disk: program, tests and stdin travel in anonymous memfds.

Inside, the launcher (PID 1, trusted) forks the program's process P and only then reads the tests,
so they never enter P's memory. P closes every descriptor but its own pipe ends, takes rlimits
(address space, CPU, threads, files, open files) and a seccomp filter that refuses every new
process (threads are allowed and share the address-space cap), memfds, SysV shm and io_uring; so
a sample's total memory is its one address space (twice that with the launcher) plus its tmpfs,
and no fork bomb exists to outlive it. The launcher is not dumpable (P cannot open /proc/1/mem,
/proc/1/fd or /proc/1/environ, nor ptrace it) and, being PID 1, takes no signal from P.

Tests run in the launcher, in fresh globals with its own builtins: the trusted prompt (helpers
such as HumanEval/32's `poly`) and the test code, with `candidate` a proxy that sends the
arguments to P over a pipe and gets back only plain values (builtin types; subclasses such as
Counter or namedtuple are converted to their builtin base in P, anything else is refused), read
with an unpickler that resolves no class but `complex`. So no `__eq__` of the program's decides anything.
HumanEval's own harness is more lenient: its `check` runs in the program's globals and compares
whatever object the program returns, so an always-equal object, a shadowed builtin or a
redefined helper pass there. LiveCodeBench call-based results are compared after a JSON
round-trip, as before: tuples become lists at every depth, where LiveCodeBench's harness converts
only a top-level tuple. The launcher reports
the verdict through a pipe that only it holds; stdout plays no part in function-call verdicts.
The launcher also keeps the wall clock. When it exits the kernel kills and reaps the namespace
before bwrap returns, so nothing a sample started outlives its slot.

Verdicts: passed, wrong_answer, runtime_error, timeout, memory, compile_error.
"""

from __future__ import annotations

import math
import os
import pickle
import platform
import re
import shutil
import signal
import struct
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

from rlvr_linearity.errors import EvaluationError

VERDICTS = ("passed", "wrong_answer", "runtime_error", "timeout", "memory", "compile_error")
_HUMANEVAL_STOPS = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```")
_STDIN_REPORTS = ("ok", "runtime_error", "timeout", "memory", "compile_error")  # the grader compares stdout
_HIDDEN = ("/root", "/home", "/work", "/run")

# The sandbox's PID 1. argv: mode entry prog_fd tests_fd report_fd seccomp_hex timeout_s mem_bytes
# cpu_s nproc fsize_bytes nofile. Modes: "stdin" (P runs the program as a script; the grader
# compares stdout), "humaneval" and "functional" (the tests call P's function through the proxy).
# It reports one line through report_fd: a verdict (or "ok" in stdin mode), or "error: ...".
# It also keeps the wall clock: when it exits, the kernel kills the whole namespace.
_LAUNCHER = r'''
import _pickle as pickle, _signal as signal  # the C modules: no enum/re imports at start-up
import builtins, ctypes, io, os, resource, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
if libc.prctl(4, 0, 0, 0, 0):  # PR_SET_DUMPABLE 0
    raise SystemExit("prctl(PR_SET_DUMPABLE) failed")
signal.signal(signal.SIGINT, signal.SIG_DFL)  # PID 1 without handlers: P's signals do not arrive
mode, entry = sys.argv[1], sys.argv[2]
prog_fd, tests_fd, report_fd = map(int, sys.argv[3:6])
bpf = bytes.fromhex(sys.argv[6])
timeout = float(sys.argv[7])
mem, cpu, nproc, fsize, nofile = map(int, sys.argv[8:13])
MAX_REPLY = 16 << 20  # a reply's bytes: bounds what P can make us allocate


def report(line):
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # one line, even at the deadline
    os.write(report_fd, line.encode())
    os._exit(0)


signal.signal(signal.SIGALRM, lambda *_: report("timeout"))
signal.setitimer(signal.ITIMER_REAL, timeout)


def slurp(fd):
    data = os.pread(fd, os.fstat(fd).st_size, 0)
    os.close(fd)
    return data


def confine(keep):
    for fd in (tests_fd, report_fd, *keep):
        os.close(fd)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)  # the sandbox's stderr is for the launcher's own faults
    os.close(null)
    for what, soft, hard in ((resource.RLIMIT_AS, mem, mem), (resource.RLIMIT_CPU, cpu, cpu + 1),
                             (resource.RLIMIT_NPROC, nproc, nproc), (resource.RLIMIT_FSIZE, fsize, fsize),
                             (resource.RLIMIT_NOFILE, nofile, nofile), (resource.RLIMIT_CORE, 0, 0)):
        resource.setrlimit(what, (soft, hard))
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = struct.pack("HxxxxxxQ", len(bpf) // 8, ctypes.addressof(buf))
    pbuf = ctypes.create_string_buffer(prog, len(prog))
    if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.addressof(pbuf), 0, 0):
        os._exit(71)  # PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP: never reached the ack


def load(source):
    try:
        return compile(source, "solution.py", "exec")
    except (SyntaxError, ValueError, OverflowError, RecursionError, MemoryError):
        return None


def plain(x):
    t = type(x)
    if t in (bool, int, float, complex, str, bytes, type(None)):
        return x
    if isinstance(x, dict):
        return {plain(k): plain(v) for k, v in x.items()}
    for base in (list, tuple, set, frozenset):
        if isinstance(x, base):
            return base(plain(v) for v in x)
    for base in (bool, int, float, complex, str, bytes):
        if isinstance(x, base):
            return base(x)
    raise TypeError("unsupported return type " + t.__name__)


def write_all(fd, data):
    view = memoryview(struct.pack("<Q", len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def read_msg(fd, limit):
    head = read_exact(fd, 8)
    if head is None:
        return None
    n = struct.unpack("<Q", head)[0]
    if n > limit:
        raise ValueError("reply of %d bytes" % n)
    return read_exact(fd, n)


def read_exact(fd, n):
    parts, got = [], 0
    while got < n:
        b = os.read(fd, min(n - got, 1 << 20))
        if not b:
            return None
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def confined(ack_w, keep):
    confine(keep)
    os.write(ack_w, b"1")  # written before the program exists, so the program cannot fake it
    os.close(ack_w)


def child_stdin(ack_w):
    confined(ack_w, (req_r, req_w, rep_r, rep_w))
    code = load(source)
    if code is None:
        os._exit(3)
    rc = 0
    try:
        exec(code, {"__name__": "__main__", "__builtins__": builtins})
    except SystemExit as e:
        rc = e.code if type(e.code) is int and 0 <= e.code < 256 else int(e.code is not None)
    except MemoryError:
        rc = 5
    except BaseException:
        rc = 1
    try:
        sys.stdout.flush()
    except BaseException:
        rc = rc or 1
    os._exit(rc)


def child_rpc(ack_w):
    confined(ack_w, (req_w, rep_r))
    send = lambda obj: write_all(rep_w, pickle.dumps(obj, 4))
    code = load(source)
    if code is None:
        send(("compile_error",))
        os._exit(0)
    g = {"__name__": "solution", "__builtins__": builtins}
    try:
        exec(code, g)
        fn = getattr(g["Solution"](), entry) if mode == "functional" and "Solution" in g else g[entry]
    except MemoryError:
        send(("memory",))
        os._exit(0)
    except BaseException:
        send(("runtime_error",))
        os._exit(0)
    send(("ready",))
    while True:
        msg = read_msg(req_r, 1 << 62)
        if msg is None:
            os._exit(0)
        args, kwargs = pickle.loads(msg)
        try:
            out = fn(*args, **kwargs)
            try:
                reply = pickle.dumps(("ok", plain(out)), 4)
            except BaseException:
                reply = pickle.dumps(("unsupported",), 4)
        except MemoryError:
            reply = pickle.dumps(("memory",), 4)
        except BaseException:
            reply = pickle.dumps(("runtime_error",), 4)
        write_all(rep_w, reply)


class Failed(BaseException):
    """The program failed a call (BaseException: no `except Exception` in a test swallows it)."""


class Plain(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("builtins", "complex"):
            return complex
        raise pickle.UnpicklingError("not a plain value: %s.%s" % (module, name))


def died(pid):
    status = os.waitpid(pid, 0)[1]
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGXCPU, signal.SIGKILL):
        return "timeout"
    return "runtime_error"


def reply():
    data = read_msg(rep_r, MAX_REPLY)
    if data is None:
        raise Failed(died(pid))
    msg = Plain(io.BytesIO(data)).load()
    if type(msg) is not tuple or not msg or msg[0] not in ("ready", "ok", "unsupported", "memory",
                                                          "runtime_error", "compile_error"):
        raise Failed("runtime_error")
    return msg


def candidate(*args, **kwargs):
    try:
        write_all(req_w, pickle.dumps((args, kwargs), 4))
    except BrokenPipeError:
        raise Failed(died(pid)) from None
    msg = reply()
    if msg[0] == "ok" and len(msg) == 2:
        return msg[1]
    raise Failed({"unsupported": "wrong_answer", "memory": "memory"}.get(msg[0], "runtime_error"))


def run_tests(spec):
    if mode == "humaneval":
        g = {"__name__": "__check__", "__builtins__": builtins}
        exec(compile(spec["prompt"], "prompt.py", "exec"), g)
        exec(compile(spec["test"], "test.py", "exec"), g)
        g[entry] = candidate  # as in the reference harness, the entry point's name is the program's
        g["check"](candidate)
        return
    import json

    for case in spec["cases"]:
        args = [json.loads(line) for line in case["input"].split("\n") if line.strip()]
        got = json.loads(json.dumps(candidate(*args)))
        if got != json.loads(case["output"]):
            raise AssertionError


resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
source = slurp(prog_fd)
ack_r, ack_w = os.pipe()
req_r, req_w = os.pipe()
rep_r, rep_w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(ack_r)
    child_stdin(ack_w) if mode == "stdin" else child_rpc(ack_w)
for fd in (ack_w, req_r, rep_w):
    os.close(fd)
if os.read(ack_r, 1) != b"1":
    report("error: the program's process could not be confined (rlimits or seccomp failed)")
if mode == "stdin":
    status = os.waitpid(pid, 0)[1]
    if os.WIFSIGNALED(status):
        report("timeout" if os.WTERMSIG(status) in (signal.SIGXCPU, signal.SIGKILL) else "runtime_error")
    report({0: "ok", 3: "compile_error", 5: "memory"}.get(os.WEXITSTATUS(status), "runtime_error"))
try:
    first = reply()
    if first[0] != "ready":
        raise Failed(first[0] if first[0] in ("compile_error", "memory") else "runtime_error")
    run_tests(pickle.loads(slurp(tests_fd)))  # read only now: P was forked without the tests
    verdict = "passed"
except Failed as e:
    verdict = e.args[0]
except AssertionError:
    verdict = "wrong_answer"
except MemoryError:
    verdict = "memory"
except BaseException:
    verdict = "runtime_error"
report(verdict)
'''

# seccomp for the program's process: machine -> (AUDIT_ARCH, syscall numbers).
_ARCH = {
    "x86_64": (0xC000003E, {"clone": 56, "fork": 57, "vfork": 58, "clone3": 435, "memfd_create": 319,
                            "shmget": 29, "io_uring_setup": 425}),
    "aarch64": (0xC00000B7, {"clone": 220, "clone3": 435, "memfd_create": 279, "shmget": 194,
                             "io_uring_setup": 425}),
}
_CLONE_THREAD, _EAGAIN, _EPERM, _ENOSYS = 0x10000, 11, 1, 38


@lru_cache(maxsize=1)
def _seccomp_filter() -> bytes:
    """Classic BPF: only threads may be cloned (no new process: fork, vfork, clone without
    CLONE_THREAD, clone3 (ENOSYS, so glibc falls back to clone for threads)); no memfds, SysV
    shared memory or io_uring, whose memory no rlimit caps; other architectures' and x32
    syscalls are refused."""
    machine = platform.machine()
    if machine not in _ARCH:
        raise EvaluationError(f"code sandbox: no seccomp filter for machine {machine!r} (x86_64, aarch64)")
    arch, nr = _ARCH[machine]
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, kill, errno = 0x7FFF0000, 0x80000000, 0x00050000

    def op(code, k, jt=0, jf=0):
        return struct.pack("=HBBI", code, jt, jf, k)

    prog = [op(ld, 4), op(jeq, arch, 1, 0), op(ret, kill), op(ld, 0)]
    if machine == "x86_64":
        prog += [op(jge, 0x40000000, 0, 1), op(ret, errno | _EPERM)]
    prog += [op(jeq, nr["clone"], 0, 4), op(ld, 16), op(jset, _CLONE_THREAD, 0, 1), op(ret, allow),
             op(ret, errno | _EAGAIN)]
    for name, err in (("fork", _EAGAIN), ("vfork", _EAGAIN), ("clone3", _ENOSYS), ("memfd_create", _EPERM),
                      ("shmget", _EPERM), ("io_uring_setup", _EPERM)):
        if name in nr:
            prog += [op(jeq, nr[name], 0, 1), op(ret, errno | err)]
    return b"".join(prog + [op(ret, allow)])


@dataclass(frozen=True)
class Limits:
    timeout: float = 6.0  # wall-clock seconds per run
    memory_mb: int = 1024  # address space of the program's process (threads share it)
    nproc: int = 64  # tasks in the sample's user namespace (threads; no process can be created)
    fsize_mb: int = 16  # largest file (also caps stdout)
    tmpfs_mb: int = 64
    nofile: int = 64  # open files of the program's process (caps pipe and socket buffers)


@dataclass(frozen=True)
class RunResult:
    verdict: str  # "ok" (stdin mode, exit 0), "passed" (test modes) or a failing verdict
    stdout: str  # the program's stdout (stdin mode only)


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


@lru_cache(maxsize=1)
def _drop_root() -> list[str]:
    """As root, bwrap runs as `nobody` (as root inside the namespace no rlimit on processes
    holds). Through setpriv rather than Popen(user=): changing uid makes Popen fork instead of
    vfork, which copies the page tables of a grader holding a model (0.27 s at 1.5 GB)."""
    if os.geteuid() != 0:
        return []
    import pwd

    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise EvaluationError("setpriv (util-linux) is not installed: the code sandbox needs it to drop root")
    nobody = pwd.getpwnam("nobody")
    return [setpriv, f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups", "--"]


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name)
    try:
        os.write(fd, data)  # a memfd write is never short
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_report(fd: int) -> str:
    data = b""
    while len(data) <= 4096:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace")


def run_sandboxed(program: str, mode: str, *, entry: str = "", tests: dict | None = None, stdin: str = "",
                  limits: Limits = Limits()) -> RunResult:
    """Run `program` in `mode` ("stdin", "humaneval", "functional"; see _LAUNCHER) with `tests`
    (handed to the trusted launcher only) and `stdin`. Only a known verdict comes back; a
    sandbox that cannot start or report raises EvaluationError (not a silent wrong verdict)."""
    hidden = [*_HIDDEN, os.path.expanduser("~"), tempfile.gettempdir()]
    fds: list[int] = []
    try:
        for name, data in (("program", program.encode("utf-8", "surrogatepass")),
                           ("tests", pickle.dumps(tests, 4)), ("stdin", stdin.encode("utf-8", "surrogatepass"))):
            fds.append(_memfd(name, data))
        prog_fd, tests_fd, in_fd = fds
        report_r, report_w = os.pipe()
        fds += [report_r, report_w]
        out_fd = os.memfd_create("stdout") if mode == "stdin" else os.open(os.devnull, os.O_WRONLY)
        fds.append(out_fd)
        err_fd = os.memfd_create("stderr")
        fds.append(err_fd)
        cmd = [bwrap_path(), "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
               "--new-session", "--as-pid-1", "--ro-bind", "/", "/", "--dev", "/dev", "--remount-ro", "/dev",
               "--proc", "/proc", "--size", str(limits.tmpfs_mb << 20), "--tmpfs", "/tmp"]
        for path in dict.fromkeys(hidden):
            if not (path + "/").startswith("/tmp/") and os.path.isdir(path):
                cmd += ["--tmpfs", path]
        cmd += ["--chdir", "/tmp", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
                "--setenv", "PYTHONDONTWRITEBYTECODE", "1", "--setenv", "PYTHONHASHSEED", "0",
                _python(), "-I", "-S", "-c", _LAUNCHER, mode, entry, str(prog_fd), str(tests_fd), str(report_w),
                _seccomp_filter().hex(), str(limits.timeout), str(limits.memory_mb << 20),
                str(max(1, math.ceil(limits.timeout))), str(limits.nproc), str(limits.fsize_mb << 20),
                str(limits.nofile)]
        # env={}: bwrap's own environment is what /proc/1/environ showed before --as-pid-1
        proc = subprocess.Popen(_drop_root() + cmd, stdin=in_fd, stdout=out_fd, stderr=err_fd, env={},
                                pass_fds=(prog_fd, tests_fd, report_w), start_new_session=True)
        os.close(report_w)
        fds.remove(report_w)
        try:  # the launcher keeps the clock; this is the backstop should it fail to
            proc.wait(timeout=limits.timeout + 5.0)
            backstop = False
        except subprocess.TimeoutExpired:
            backstop = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # bwrap; the sandbox dies with it (--die-with-parent)
            except ProcessLookupError:
                pass
            proc.wait()
        rep = _read_report(report_r)
        stdout = os.pread(out_fd, limits.fsize_mb << 20, 0).decode("utf-8", "replace") if mode == "stdin" else ""
        stderr = os.pread(err_fd, 1 << 16, 0).decode("utf-8", "replace")
    finally:
        for fd in fds:
            os.close(fd)
    if rep in (_STDIN_REPORTS if mode == "stdin" else VERDICTS):
        return RunResult(rep, stdout)
    if backstop:
        return RunResult("timeout", stdout)
    if rep.startswith("error: "):
        raise EvaluationError(f"code sandbox: {rep[7:]}")
    if not rep:  # only the launcher writes the report, and the program cannot stop it (PID 1, own memory)
        last = (stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise EvaluationError(f"code sandbox failed (bwrap or its launcher): {last}")
    return RunResult("runtime_error", stdout)  # not reached: only the launcher writes, and only verdicts


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


def check_humaneval(meta: dict, response: str, limits: Limits = Limits()) -> str:
    return run_sandboxed(humaneval_program(meta, response), "humaneval", entry=meta["entry_point"],
                         tests={"prompt": meta["code_prompt"], "test": meta["test"]}, limits=limits).verdict


def check_lcb(meta: dict, response: str, limits: Limits = Limits()) -> str:
    program = extract_code(response) or response
    tests = meta["tests"]
    if not tests:
        raise EvaluationError("LiveCodeBench problem without tests")
    if tests[0].get("testtype") == "functional":
        return run_sandboxed(program, "functional", entry=meta["func_name"], tests={"cases": tests},
                             limits=limits).verdict
    for t in tests:
        res = run_sandboxed(program, "stdin", stdin=t["input"], limits=limits)
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
