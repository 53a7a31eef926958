"""The OS sandbox of a student's grading kernel: bubblewrap (`bwrap`) on Linux, where it works.

Inside it the kernel (and anything it starts) has no network, sees the file system read-only,
sees none of the course folder (the real vitlib, `solutions/`, `tests/hidden/`, `.git`), the
submissions, the grades or the judge's files, and writes only to its own scratch folder and a
private /tmp. It lives in its own PID namespace, so a process it leaves behind dies with it.
Where bubblewrap is missing or cannot start (macOS, a container without namespaces), `find`
says why and the grader runs the kernel without it: the verdict is still reached in the judge
(`vitlib.judge`), only the files on disk are then readable by the student's code.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Sandbox", "find"]


@dataclass(frozen=True)
class Sandbox:
    """How to wrap a command: `bwrap` is None when there is no sandbox (`why` says why)."""

    bwrap: str | None
    why: str = ""

    def wrap(self, command: list[str], *, scratch: Path, channel: Path, lib: Path, hide: list[Path]) -> list[str]:
        """`command`, to run in `scratch` with `lib` (the stripped vitlib) and the judge's `channel` folder visible."""
        if self.bwrap is None:
            return command
        args = [self.bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/dev/shm"]
        args += ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
        hidden: list[Path] = [Path("/tmp")]
        for path in sorted({p.resolve() for p in hide if p.exists()}, key=lambda p: len(p.parts)):
            if any(path.is_relative_to(h) for h in hidden):
                continue  # already gone with a folder above it
            hidden.append(path)
            args += ["--tmpfs", str(path)]
        for prefix in sorted({Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}):
            if any(prefix.is_relative_to(h) for h in hidden):  # the Python environment lives in a hidden folder (.venv)
                args += ["--ro-bind", str(prefix), str(prefix)]
        args += ["--ro-bind", str(lib), str(lib), "--bind", str(scratch), str(scratch), "--bind", str(channel), str(channel)]
        return [*args, "--chdir", str(scratch), "--", *command]


@functools.cache
def find() -> Sandbox:
    """bubblewrap if it is installed and can start here; else no sandbox, with the reason."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return Sandbox(None, "bubblewrap (bwrap) is not installed")
    probe = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-net", "--unshare-pid", "--", "true"]
    try:
        result = subprocess.run(probe, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return Sandbox(None, f"bubblewrap cannot start here ({type(error).__name__})")
    if result.returncode != 0:
        return Sandbox(None, f"bubblewrap cannot start here ({(result.stderr.strip().splitlines() or ['?'])[-1][:200]})")
    return Sandbox(bwrap)
