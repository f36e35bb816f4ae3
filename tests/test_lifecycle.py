"""fabric.lifecycle, one path per test: set-up, signals, normal exit, exit after an exception, exit code.

Each test runs a fresh interpreter, because what is under test is how a process ends.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


@pytest.mark.timeout(70)
def test_normal_exit_runs_the_steps_in_order_once() -> None:
    done = _python(
        """
        from fabric import lifecycle
        lifecycle.on_exit(lambda: print("children", lifecycle.has_failed()), lifecycle.STOP_CHILDREN)
        lifecycle.on_exit(lambda: print("group", lifecycle.has_failed()), lifecycle.LEAVE_PROCESS_GROUP)
        lifecycle.shutdown()  # explicit (as a forked child does); atexit must not run them again
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n") == ["group False", "children False", ""]


@pytest.mark.timeout(70)
def test_exit_after_an_exception_is_marked_failed_for_the_steps() -> None:
    done = _python(
        """
        from fabric import lifecycle
        lifecycle.on_exit(lambda: print("failed:", lifecycle.has_failed()), lifecycle.LEAVE_PROCESS_GROUP)
        raise RuntimeError("boom")
        """
    )
    assert done.returncode == 1
    assert "RuntimeError: boom" in done.stderr  # the previous excepthook still prints the traceback
    assert done.stdout == "failed: True\n"


@pytest.mark.timeout(70)
def test_a_step_can_make_a_clean_exit_fail_and_a_failing_step_does_not_stop_the_others() -> None:
    done = _python(
        """
        from fabric import lifecycle
        def broken():
            raise OSError("disk gone")
        lifecycle.on_exit(broken, lifecycle.LEAVE_PROCESS_GROUP)
        lifecycle.on_exit(lambda: lifecycle.fail_exit(3), lifecycle.STOP_CHILDREN)
        print("main done", flush=True)
        """
    )
    assert done.returncode == 3
    assert done.stdout == "main done\n"
    assert "an exit step failed: OSError('disk gone')" in done.stderr


@pytest.mark.timeout(70)
def test_stop_signals_are_recorded_and_a_second_sigterm_ends_the_process() -> None:
    done = _python(
        """
        import os, signal
        from fabric import lifecycle
        lifecycle.watch_signals()
        os.kill(os.getpid(), signal.SIGUSR1)
        print(lifecycle.stop_requested(), lifecycle.stop_signal() == signal.SIGUSR1, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        print("first SIGTERM recorded", lifecycle.stop_signal() == signal.SIGTERM, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        print("not reached", flush=True)
        """
    )
    assert done.returncode == -15, done.stderr
    assert done.stdout == "True True\nfirst SIGTERM recorded True\n"


@pytest.mark.timeout(70)
def test_a_handler_the_user_installed_stays_in_charge() -> None:
    done = _python(
        """
        import os, signal
        from fabric import lifecycle
        signal.signal(signal.SIGUSR1, lambda *a: print("user handler", flush=True))
        lifecycle.watch_signals()
        os.kill(os.getpid(), signal.SIGUSR1)
        print(lifecycle.stop_requested(), flush=True)
        """
    )
    assert done.stdout == "user handler\nFalse\n", done.stderr
