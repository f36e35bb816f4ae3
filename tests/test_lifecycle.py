"""fabric.lifecycle, one path per test: set-up, signals, normal exit, exit after an exception, exit code.

Each test runs a fresh interpreter, because what is under test is how a process ends.
"""

from __future__ import annotations

import os
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
        lifecycle.install()  # as a multi-process strategy or launcher does at set-up
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


@pytest.mark.timeout(70)
def test_explainers_add_notes_to_the_error_that_ends_the_process_and_can_be_removed() -> None:
    done = _python(
        """
        from fabric import lifecycle
        lifecycle.on_failure(lambda error: f"explained: {error}")
        lifecycle.on_failure(lambda error: None)  # nothing to say: no note
        removed = lambda error: "must not appear"
        lifecycle.on_failure(removed)
        lifecycle.remove_on_failure(removed)
        def broken(error):
            raise KeyError("explainer bug")
        lifecycle.on_failure(broken)  # must not hide the error it explains
        raise RuntimeError("boom")
        """
    )
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert "RuntimeError: boom" in lines
    notes = lines[lines.index("RuntimeError: boom") + 1 :]
    assert notes[0] == "explained: boom"
    assert notes[1].startswith("[fabric] could not explain this error: KeyError")
    assert "must not appear" not in done.stderr


@pytest.mark.timeout(70)
def test_the_strategy_publishes_the_rendezvous_at_set_up_and_restores_the_environment_at_teardown() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import os, torch
                from fabric import Fabric
                fabric = Fabric(accelerator="cpu", strategy="ddp", devices=1)
                fabric.launch()
                fabric.setup(torch.nn.Linear(2, 2))
                print(os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT") is not None)
                fabric._teardown()
                print(os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT"))
                """
            ),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**env, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["127.0.0.1 True", "None None"]


@pytest.mark.timeout(70)
def test_dropped_fabric_objects_are_freed_and_one_process_keeps_pythons_excepthook() -> None:
    """Issue 19 #6: the exit step held each Fabric strongly, and one device replaced the excepthook."""
    done = _python(
        """
        import gc, os, sys, tempfile, weakref
        import torch
        from fabric import Fabric
        hook = sys.excepthook
        refs = []
        directory = tempfile.mkdtemp()
        for i in range(3):
            fabric = Fabric(accelerator="cpu", devices=1)
            model = torch.nn.Linear(2, 2)
            model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
            fabric.backward(model(torch.ones(1, 2)).sum())
            optimizer.step()
            fabric.save(os.path.join(directory, f"sync{i}"), {"model": model, "optimizer": optimizer})
            state = {"model": model}
            fabric.save(os.path.join(directory, f"async{i}"), state, async_save=True).wait()
            refs.append(weakref.ref(fabric))
            del fabric, model, optimizer
        gc.collect()
        print("alive", sum(r() is not None for r in refs))
        print("excepthook replaced", sys.excepthook is not hook)
        kept = Fabric(accelerator="cpu", devices=1)
        kept.launch()
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["alive 0", "excepthook replaced False"]


@pytest.mark.timeout(70)
def test_a_fabric_is_freed_after_del_whatever_was_set_up_and_called_through_it() -> None:
    """The lifecycle, the wrappers and the set-up objects hold the Fabric and its strategy weakly or not at
    all: every set-up path, the marked and step methods, signals, callbacks, a Lightning-style module's
    link and a checkpoint round trip, in both a plain and an autocast precision."""
    done = _python(
        """
        import gc, os, tempfile, weakref
        import torch
        from torch.utils.data import DataLoader, TensorDataset
        from fabric import Fabric

        class Generator(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.linear = torch.nn.Linear(2, 2)
                self._fabric = None  # a Lightning module's link to its Fabric
            def forward(self, x):
                return self.linear(x)
            def generate(self, x):
                return self.linear(x)
            def training_step(self, x):
                return self(x).sum()

        class Callback:
            def on_after_optimizer_step(self, strategy, optimizer):
                pass

        fabrics, strategies = [], []
        directory = tempfile.mkdtemp()
        for i, precision in enumerate(["32-true", "bf16-mixed"]):
            fabric = Fabric(accelerator="cpu", devices=1, precision=precision, callbacks=[Callback()])
            module = Generator()
            model, optimizer = fabric.setup(module, torch.optim.SGD(module.parameters(), lr=0.1))
            other = fabric.setup_module(torch.nn.Linear(2, 2))
            other_optimizer = fabric.setup_optimizers(torch.optim.SGD(other.parameters(), lr=0.1))
            loader = fabric.setup_dataloaders(DataLoader(TensorDataset(torch.ones(4, 2)), batch_size=2))
            fabric.should_stop  # watches the stop signals from here on
            model.mark_forward_method("generate")
            for (x,) in loader:
                fabric.backward(model.generate(x).sum() + model.training_step(x) + other(x).sum())
                optimizer.step()
                other_optimizer.step()
            state = {"model": model, "optimizer": optimizer, "loader": loader}
            fabric.save(os.path.join(directory, str(i)), state)
            fabric.load(os.path.join(directory, str(i)), state)
            fabrics.append(weakref.ref(fabric))
            strategies.append(weakref.ref(fabric.strategy))
            del fabric, module, model, optimizer, other, other_optimizer, loader, state
        gc.collect()
        print("alive", sum(r() is not None for r in fabrics), sum(r() is not None for r in strategies))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["alive 0 0"]


@pytest.mark.timeout(70)
def test_a_step_held_weakly_is_skipped_once_its_object_is_freed() -> None:
    done = _python(
        """
        import gc
        from fabric import lifecycle
        class Owner:
            def __init__(self, name):
                self.name = name
            def step(self):
                print("step of", self.name)
        kept, dropped = Owner("kept"), Owner("dropped")
        lifecycle.on_exit(kept.step, lifecycle.LEAVE_PROCESS_GROUP, weak=True)
        lifecycle.on_exit(dropped.step, lifecycle.LEAVE_PROCESS_GROUP, weak=True)
        del dropped
        gc.collect()
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "step of kept\n"


@pytest.mark.timeout(150)
def test_fabrics_dropped_on_two_processes_share_one_hang_watcher_which_is_stopped_before_exit(
    tmp_path: Path,
) -> None:
    """The hang watcher (a daemon thread in store calls) must be gone before the interpreter ends.

    It was one thread per strategy, each keeping its strategy alive, and only the facade's teardown
    stopped it: with every ``Fabric`` freed before exit (made inside a function, as scripts do), the
    threads were still polling the store when the interpreter ended them, and a process aborted at
    exit now and then ("terminate called without an active exception", rc -6, in the DeepSpeed run).
    """
    script = tmp_path / "three_fabrics.py"
    script.write_text(
        textwrap.dedent(
            """
            import atexit, gc, os, sys, threading, weakref
            from pathlib import Path

            out = Path(sys.argv[1])

            def watchers():
                return sum(t.name == "fabric-hang-watcher" and t.is_alive() for t in threading.enumerate())

            # registered before fabric's own handler, so it runs after it (atexit is last in, first out)
            atexit.register(lambda: (out / f"exit{os.environ.get('LOCAL_RANK', '0')}").write_text(str(watchers())))

            import torch
            from fabric import Fabric

            def train(strategies):
                fabric = Fabric(accelerator="cpu", strategy="ddp", devices=2)
                fabric.launch()
                model = fabric.setup(torch.nn.Linear(2, 2))
                fabric.backward(model(torch.ones(1, 2)).sum())
                strategies.append(weakref.ref(fabric.strategy))
                return fabric.global_rank

            strategies = []
            for _ in range(3):
                rank = train(strategies)
            gc.collect()
            (out / f"run{rank}").write_text(f"{watchers()} {sum(r() is not None for r in strategies)}")
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=140,
        cwd=ROOT,
        env={**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    for rank in (0, 1):
        # one watcher for the process, and it keeps no strategy alive
        assert (tmp_path / f"run{rank}").read_text() == "1 0"
        # and it was stopped (its thread joined) before the interpreter began to end
        assert (tmp_path / f"exit{rank}").read_text() == "0"
