"""Run untrusted generated code in a contained subprocess: HumanEval grading (offline) and a
cascade tier's `structural: python_examples` check (a request's own examples, at request time).

Never in the gateway's process, never with the gateway's environment. Layers, each because the
one before can be got around:

* a fresh ``python -I -S`` (isolated: no PYTHON* variables, no user site, no site-packages) in a
  new session (so a timeout kills the whole process group), cwd and HOME a private temp dir that
  is deleted afterwards, an environment of PATH/HOME/TMPDIR only;
* a new network namespace (``unshare --net``, unprivileged through a user namespace) when the
  kernel allows it: no interface but a down loopback, so nothing can connect anywhere;
* a trusted runner that sets resource limits (CPU seconds, address space, file size, open files,
  no core dumps) and installs an audit hook (PEP 578) before the code runs: sockets, subprocesses,
  fork/exec, ctypes and writes outside the temp dir raise ``PermissionError``. An audit hook cannot
  be removed from Python code, which is why it, not a monkey-patch, blocks them;
* a wall-clock timeout on top of the CPU limit (a sleeping loop uses no CPU).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

RUNNER = r'''
import os, resource, sys
ROOT = os.path.realpath(sys.argv[1])
CPU, MEMORY = int(sys.argv[2]), int(sys.argv[3])
for limit, value in ((resource.RLIMIT_CPU, CPU), (resource.RLIMIT_AS, MEMORY),
                     (resource.RLIMIT_FSIZE, 16 << 20), (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(limit, (value, value))
source = open(os.path.join(ROOT, "solution.py"), encoding="utf-8").read()
BLOCKED = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
           "os.forkpty", "pty.", "ctypes.", "os.kill", "os.killpg", "signal.pthread_kill", "winreg.")
PATH_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link",
               "os.symlink", "os.truncate", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

def inside(path):
    if isinstance(path, int):
        return True  # an already-open descriptor
    real = os.path.realpath(os.fsdecode(path))
    return real == ROOT or real.startswith(ROOT + os.sep)

def hook(event, args):
    if event.startswith(BLOCKED):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open":
        path, mode, flags = args
        writes = (mode is not None and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
        if writes and path is not None and not inside(path):
            raise PermissionError(f"sandbox: writing {path!r} is not allowed")
    elif event in PATH_EVENTS:
        for path in args[:2]:
            if isinstance(path, (str, bytes, os.PathLike)) and not inside(path):
                raise PermissionError(f"sandbox: {event} on {path!r} is not allowed")

sys.addaudithook(hook)
del hook
exec(compile(source, "solution.py", "exec"), {"__name__": "__main__"})
'''


@dataclass(frozen=True, slots=True)
class SandboxResult:
    passed: bool
    status: str  # "passed" | "failed" | "timeout"
    detail: str = ""  # the last line of stderr: the exception that failed the test


@dataclass(frozen=True, slots=True)
class Sandbox:
    timeout_s: float = 6.0
    memory_bytes: int = 1 << 30
    isolate_network: bool = True  # use ``unshare --net`` when the kernel allows it

    def identity(self) -> str:
        """What a verdict depends on besides the program: the runner and the limits (a cached
        verdict is stale when any of them changes)."""
        return hashlib.sha256(f"{RUNNER}|{self.timeout_s}|{self.memory_bytes}|{self.isolate_network}".encode()
                              ).hexdigest()[:16]

    def network_prefix(self) -> list[str]:
        if not self.isolate_network:
            return []
        unshare = shutil.which("unshare")
        if unshare is None:
            return []
        command = [unshare, "--net", "--map-root-user"]
        probe = subprocess.run([*command, "true"], capture_output=True, timeout=10, check=False)
        return command if probe.returncode == 0 else []

    def run(self, program: str, prefix: list[str] | None = None) -> SandboxResult:
        """Run ``program``; it passes when it exits with status 0 within the limits. ``prefix`` is
        :meth:`network_prefix`, computed once by callers that run many programs."""
        prefix = self.network_prefix() if prefix is None else prefix
        with tempfile.TemporaryDirectory(prefix="slmgw-sandbox-") as root:
            Path(root, "solution.py").write_text(program, encoding="utf-8")
            Path(root, "runner.py").write_text(RUNNER, encoding="utf-8")
            cpu = max(1, int(self.timeout_s + 0.999))
            command = [*prefix, sys.executable, "-I", "-S", str(Path(root, "runner.py")), root, str(cpu),
                       str(self.memory_bytes)]
            env = {"PATH": "/usr/bin:/bin", "HOME": root, "TMPDIR": root, "LANG": "C.UTF-8"}
            process = subprocess.Popen(command, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, start_new_session=True)
            try:
                _out, err = process.communicate(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                # Not reaped yet, so its pid is still its session's group id: kill the whole group.
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
                return SandboxResult(False, "timeout", f"no exit within {self.timeout_s:g} s")
        if process.returncode == 0:
            return SandboxResult(True, "passed")
        lines = err.decode("utf-8", "replace").strip().splitlines()
        if process.returncode == -signal.SIGXCPU or process.returncode == -signal.SIGKILL:
            return SandboxResult(False, "timeout", f"CPU limit ({cpu} s)")
        return SandboxResult(False, "failed", lines[-1][:300] if lines else f"exit status {process.returncode}")

