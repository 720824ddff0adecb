"""The figures drawn in a second process, beside the statistics and the text files.

``analyze`` and ``compare`` start a `FigureWorker` before they import the statistics: on Linux a
fork of the command taken while it runs a single thread (numpy and the command line imported, the
statistics engine not yet loaded, so no thread pool of it is copied), elsewhere a fresh
interpreter (``sys.executable``, BLAS single-threaded). It imports matplotlib and the drawing
modules while the command imports the analysis and computes, then waits. When the results are
ready, `figures.write_figures` sends it a `figures.FigureData` (numpy arrays, plain dicts and the
unit layout, pickled through a pipe; the worker never imports the statistics) and the staging
folder; the worker draws every figure into that folder, shared out with forks of itself (one per
CPU, Linux), while the command writes results.json, units.csv and results.md, and `FigureJob.wait`
returns once it has answered. The results folder is published only after that
(``folder.write_folder``), so the command still ends with every file written, or none:

* a figure that fails in the worker comes back as `FigureWorkerError` (or, for a disk error, the
  same ``OSError`` that drawing here would raise, which ``write_folder`` turns into its one-line
  message), and the staging folder is removed;
* a worker that dies (killed, out of memory) is a `FigureWorkerError` naming its exit status;
* a failure in the command while the worker draws ends the worker (SIGTERM: it kills and reaps
  its forks) before the staging folder is removed.

The engine's thread setting (``DENSE_PLANTAIN_NUM_THREADS``) is untouched: the engine runs only in
the command's process. With fewer than two CPUs to run on, or ``DENSE_PLANTAIN_FIGURE_WORKER=0``,
`start_figure_worker` returns None and the figures are drawn in the command's process after the
text files, as before.
"""

from __future__ import annotations

import functools
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from dense_plantain.errors import DensePlantainError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from dense_plantain.report.figures import FigureData

__all__ = ["FigureJob", "FigureWorker", "FigureWorkerError", "serve", "start_figure_worker"]

#: Set to 0 to draw the figures in the command's own process.
WORKER_ENV = "DENSE_PLANTAIN_FIGURE_WORKER"
#: The worker's BLAS and OpenMP pools: one thread each (it only draws; the engine is not there).
_SINGLE_THREADED = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
_SERVE = (
    "import sys\n"
    "root = sys.argv[1]\n"
    "if root not in sys.path:\n"
    "    sys.path.insert(0, root)\n"
    "from dense_plantain.report.worker import serve\n"
    "serve()\n"
)


class FigureWorkerError(DensePlantainError):
    """The figure process failed or ended before drawing every figure; nothing was written."""

    def __init__(self, message: str, worker_traceback: str | None = None) -> None:
        super().__init__(message)
        self.worker_traceback = worker_traceback  # the worker's traceback, for debugging


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def start_figure_worker() -> FigureWorker | None:
    """A started `FigureWorker`, or None where the figures are better drawn here (one CPU,
    ``DENSE_PLANTAIN_FIGURE_WORKER=0``, or no Python executable to start)."""
    if os.environ.get(WORKER_ENV, "1").strip() in ("0", "no", "off", "false") or _cpus() < 2:
        return None
    if not sys.executable:
        return None
    try:
        return FigureWorker().start()
    except OSError:  # cannot start a process (limits, memory): draw here instead
        return None


def _start_method() -> str:
    """fork on Linux while this process runs one thread (before the engine's pool or any other
    thread exists: a fork copies only the calling thread); spawn elsewhere."""
    if sys.platform.startswith("linux") and hasattr(os, "fork") and threading.active_count() == 1:
        return "fork"
    return "spawn"


class _Forked:
    """A worker made by ``os.fork()``, with the part of ``subprocess.Popen`` the worker uses
    (pid, stdin, stdout, returncode, poll, wait, terminate, kill).

    The child keeps only the standard streams and its two pipes (every other inherited file
    descriptor is closed, so it holds no other process's pipe open), gets a process group of its
    own, serves, and always ends by ``os._exit``: it never returns into the command, runs no exit
    handler and flushes none of this process's buffers."""

    def __init__(self) -> None:
        req_read, req_write = os.pipe()
        rep_read, rep_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                keep = sorted((req_read, rep_write))
                os.closerange(3, keep[0])
                os.closerange(keep[0] + 1, keep[1])
                os.closerange(keep[1] + 1, _max_fd())
                os.setpgid(0, 0)
                serve(req_read, rep_write)
            finally:
                os._exit(1)
        os.close(req_read)
        os.close(rep_write)
        try:
            os.setpgid(pid, pid)  # also here, so a kill of the group cannot come before the child's own call
        except OSError:
            pass
        self.pid = pid
        self.stdin: IO[bytes] | None = os.fdopen(req_write, "wb")
        self.stdout: IO[bytes] | None = os.fdopen(rep_read, "rb")
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            if self.returncode is None:
                self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
            return self.returncode
        deadline = time.monotonic() + timeout
        while (code := self.poll()) is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("figure worker", timeout)
            time.sleep(0.002)
        return code

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


def _max_fd() -> int:
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        soft = 4096
    return soft if 0 < soft < (1 << 20) else 1 << 20


class FigureJob:
    """One drawing request sent to the worker; `wait` returns the paths written."""

    def __init__(self, worker: FigureWorker, sender: threading.Thread) -> None:
        self._worker = worker
        self._sender = sender

    def wait(self) -> list[Path]:
        """Block until the worker has drawn every figure; raise if it failed or died."""
        self._sender.join()
        return self._worker._reply()


class FigureWorker:
    """A process that draws figures on request (see the module docstring). Use as a context
    manager: leaving it normally lets the process end; leaving by an exception kills it."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | _Forked | None = None
        self._job: FigureJob | None = None
        self._sender: threading.Thread | None = None  # the last request being written
        #: The figures of the last reply that had been drawn ahead (`draw_ahead`) and were used.
        self.drawn_ahead: list[str] = []

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, method: str | None = None) -> FigureWorker:
        """Start the process: ``"fork"`` (Linux, while this process runs no other thread: the
        child begins with numpy and the command line already imported) or ``"spawn"`` (a fresh
        interpreter); default: fork where it is safe, else spawn."""
        method = method or _start_method()
        if method == "fork":
            self._proc = _Forked()
            return self
        if method != "spawn":
            raise ValueError(f"method must be 'fork' or 'spawn', got {method!r}")
        import dense_plantain

        root = str(Path(dense_plantain.__file__).resolve().parents[1])
        env = dict(os.environ)
        for name in _SINGLE_THREADED:
            env[name] = "1"
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _SERVE, root],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
            process_group=0 if os.name == "posix" else None,  # its drawing forks share it: one kill ends all
        )
        return self

    def _stdin(self) -> IO[bytes]:
        assert self._proc is not None and self._proc.stdin is not None
        return self._proc.stdin

    def _send(self, request: tuple) -> threading.Thread:
        """Write ``request`` to the worker from a thread, after any earlier one: the worker may
        still be importing matplotlib, or drawing ahead, and not reading yet (a pipe holds far
        less than a request), and this process goes on meanwhile. A worker that has gone makes
        the write fail silently; the reply says so."""
        payload = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        previous = self._sender

        def write() -> None:
            if previous is not None:
                previous.join()
            try:
                stdin = self._stdin()
                stdin.write(payload)
                stdin.flush()
            except (OSError, ValueError, AssertionError):
                pass

        self._sender = threading.Thread(target=write, daemon=True)
        self._sender.start()
        return self._sender

    def submit(self, data: FigureData, folder: Path, names: Sequence[str] | None = None) -> FigureJob:
        """Send ``data`` to be drawn into ``folder`` (``names``: those figures only); returns at once."""
        if self._proc is None:
            raise RuntimeError("the figure worker was not started")
        if self._job is not None:
            raise RuntimeError("the figure worker is already drawing")
        self._job = FigureJob(self, self._send(("draw", data, str(folder), None if names is None else list(names))))
        return self._job

    def draw_ahead(self, data: FigureData, names: Sequence[str]) -> None:
        """Let the worker draw ``names`` from ``data`` now, into memory, while this process goes
        on; returns at once, no answer. A later `submit` uses such a drawing only for a figure
        whose inputs there are equal to these (`figures.same_inputs`) and draws it again
        otherwise, so this changes no figure, only when it is drawn."""
        if self._proc is None:
            raise RuntimeError("the figure worker was not started")
        self._send(("ahead", data, None, list(names)))

    def draw(self, data: FigureData, folder: Path, names: Sequence[str] | None = None) -> list[Path]:
        """`submit` and wait."""
        return self.submit(data, folder, names).wait()

    def _reply(self) -> list[Path]:
        assert self._proc is not None and self._proc.stdout is not None
        self._job = None
        try:
            reply: Any = pickle.load(self._proc.stdout)
        except (EOFError, pickle.UnpicklingError, OSError):
            self.kill()
            raise FigureWorkerError(
                f"the figure process ended (exit status {self._proc.returncode}) before it had drawn the "
                "figures; nothing was written. Run the command again (set DENSE_PLANTAIN_FIGURE_WORKER=0 to "
                "draw them in the command's own process)"
            ) from None
        if reply[0] == "ok":
            self.drawn_ahead = list(reply[2]) if len(reply) > 2 else []
            return [Path(p) for p in reply[1]]
        if reply[0] == "oserror":
            _, code, message, filename = reply
            raise OSError(code, message, filename)
        _, figure, kind, message, tb = reply
        raise FigureWorkerError(
            f"drawing {figure} failed in the figure process: {kind}: {message}; nothing was written", tb
        )

    def close(self) -> None:
        """Let the process end (it exits when its input closes); kill it if it does not."""
        proc = self._proc
        if proc is None:
            return
        if self._sender is not None:
            self._sender.join(timeout=10)
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
        self._close_pipes()

    def kill(self) -> None:
        """End the process and its drawing forks now and reap it (a drawing in progress stops
        where it is). SIGTERM first: the worker then kills and reaps its forks before it ends, so
        none of them writes into the staging folder after this returns; SIGKILL to the whole
        process group if it does not end within a few seconds."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (AttributeError, ProcessLookupError, PermissionError):
                    proc.kill()
                proc.wait()
        self._close_pipes()

    def _close_pipes(self) -> None:
        assert self._proc is not None
        for pipe in (self._proc.stdin, self._proc.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass

    def __enter__(self) -> FigureWorker:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is None:
            self.close()
        else:
            self.kill()


# --- the worker's side ---------------------------------------------------------------------

#: Rough CPU seconds of each figure at probe scale (16,320 units), to share them out evenly.
_COST = {
    "null_counts.png": 0.17,
    "abs_t_heatmap.png": 0.14,
    "abs_t_by_block.png": 0.12,
    "direction_vs_magnitude.png": 0.1,
    "controls_blocks.png": 0.06,
    "split_half_r.png": 0.05,
}
_children: set[int] = set()  # drawing processes forked by this worker and not yet reaped
#: Figures drawn ahead, by name: the inputs they were drawn from and their PNG bytes.
_ahead: dict[str, tuple[FigureData, bytes]] = {}
#: Drawings ahead still running in a fork: (pid, the pipe it answers through, inputs, names).
_pending: list[tuple[int, int, FigureData, list[str]]] = []


def serve(requests_fd: int | None = None, replies_fd: int | None = None) -> None:
    """The worker's main loop: import the drawing code, then answer requests until its input
    closes (``requests_fd``/``replies_fd``: the pipes of a forked worker; default stdin/stdout)."""
    signal.signal(signal.SIGTERM, _terminate)
    replies = os.fdopen(os.dup(1) if replies_fd is None else replies_fd, "wb")
    os.dup2(2, 1)  # anything printed while drawing goes to stderr, not into the command's output
    warm_error: BaseException | None = None
    try:
        _warm()
    except BaseException as err:  # reported with the first request
        warm_error = err
    stdin = sys.stdin.buffer if requests_fd is None else os.fdopen(requests_fd, "rb")
    while True:
        try:
            request = pickle.load(stdin)
        except EOFError:  # the command is done with us: end without the interpreter's teardown
            sys.stderr.flush()
            os._exit(0)
        kind, data, folder, names = request
        if kind == "ahead":
            _draw_ahead(data, names, warm_error)
            continue
        reply = _draw_shared(data, Path(folder), names, warm_error)
        pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM (the command failed or was interrupted): stop the drawing processes, then end."""
    for pid in list(_children):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in list(_children):
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    os._exit(1)


def _warm() -> None:
    """Import what drawing needs, so that the first request only draws."""
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401

    from dense_plantain.report import direction, figures, heatmap  # noqa: F401


def _draw_ahead(data: FigureData, names: Sequence[str], warm_error: BaseException | None) -> None:
    """Draw ``names`` into memory, in a fork of this process where fork is the platform's way (so
    this one goes on reading requests and a later request's other figures are not held up behind
    it), else here. A failure is left to the real request, which draws the figure again."""
    if warm_error is not None:
        return
    names = list(names)
    if _parts(2) < 2:
        _ahead.update(_render(data, names))
        return
    pid, read_end = _fork_answer(lambda: {name: png for name, (_, png) in _render(data, names).items()})
    _pending.append((pid, read_end, data, names))


def _fork_answer(work: Callable[[], object]) -> tuple[int, int]:
    """Run ``work`` in a forked drawing process that pickles its answer into a pipe and ends.

    Returns the child's pid (in ``_children`` until reaped) and the pipe's read end. The child
    takes SIGTERM's default action, so the worker's own handler does not run twice.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the drawing process: work, answer through the pipe, end
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.close(read_end)
            answer = work()
            with os.fdopen(write_end, "wb") as out:
                pickle.dump(answer, out, protocol=pickle.HIGHEST_PROTOCOL)
        finally:
            os._exit(0)
    _children.add(pid)
    os.close(write_end)
    return pid, read_end


def _render(data: FigureData, names: Sequence[str]) -> dict[str, tuple[FigureData, bytes]]:
    from dense_plantain.report import figures

    done = {}
    for name in names:
        try:
            done[name] = (data, figures.render(data, name))
        except Exception:
            pass
    return done


def _collect_ahead() -> None:
    """Wait for the drawings ahead still running and keep what they drew."""
    while _pending:
        pid, read_end, data, names = _pending.pop(0)
        with os.fdopen(read_end, "rb") as answer:
            try:
                rendered: dict[str, bytes] = pickle.load(answer)
            except (EOFError, pickle.UnpicklingError):
                rendered = {}
        os.waitpid(pid, 0)
        _children.discard(pid)
        _ahead.update({name: (data, png) for name, png in rendered.items() if name in names})


def _ahead_for(name: str, data: FigureData) -> bool:
    """Whether a drawing ahead of ``name``, done or running, has the same inputs as ``data``."""
    from dense_plantain.report import figures

    early = [d for _, _, d, names in _pending if name in names]
    if name in _ahead:
        early.append(_ahead[name][0])
    return any(figures.same_inputs(name, d, data) for d in early)


def _parts(n_figures: int) -> int:
    """How many processes draw: one per CPU this process may use, at most one per figure. The
    others are forks of this one (single-threaded, matplotlib already imported), so only where
    fork is the platform's way (Linux)."""
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return 1
    return max(1, min(_cpus(), n_figures))


def _share(names: Sequence[str], parts: int) -> list[list[str]]:
    """``names`` in ``parts`` groups of about equal cost (largest first, each to the lightest group)."""
    groups: list[list[str]] = [[] for _ in range(parts)]
    load = [0.0] * parts
    for name in sorted(names, key=lambda n: -_COST.get(n, 0.1)):
        k = load.index(min(load))
        groups[k].append(name)
        load[k] += _COST.get(name, 0.1)
    return [g for g in groups if g]


def _draw_shared(
    data: FigureData, folder: Path, names: Sequence[str] | None, warm_error: BaseException | None
) -> tuple:
    """Draw the figures, shared out between this process and forks of it, and write those drawn
    ahead from the same inputs; one reply for all.

    Every fork is waited for before the reply, so nothing writes into ``folder`` after it."""
    from dense_plantain.report import figures

    if warm_error is not None:
        return _draw(data, folder, ["the figures"], warm_error)
    order = list(figures.figure_names(data) if names is None else names)
    early = [name for name in order if _ahead_for(name, data)]
    rest = [name for name in order if name not in early]
    groups = _share(rest, _parts(len(rest))) if rest else []
    forks: list[tuple[int, int, list[str]]] = []
    for group in groups[1:]:
        pid, read_end = _fork_answer(functools.partial(_draw, data, folder, group, None))
        forks.append((pid, read_end, group))
    replies = [(groups[0], _draw(data, folder, groups[0], None))] if groups else []
    _collect_ahead()
    used, late = [], []
    for name in early:
        kept = _ahead.get(name)
        if kept is not None and figures.same_inputs(name, kept[0], data):
            used.append(name)
        else:  # its drawing ahead failed: draw it now
            late.append(name)
    try:
        for name in used:
            (folder / name).write_bytes(_ahead[name][1])
        replies.append((used, ("ok", [str(folder / name) for name in used])))
    except OSError as err:
        replies.append((used, ("oserror", err.errno, err.strerror or str(err), err.filename)))
    finally:
        _ahead.clear()
    if late:
        replies.append((late, _draw(data, folder, late, None)))
    for pid, read_end, group in forks:
        with os.fdopen(read_end, "rb") as answer:
            try:
                got: tuple | None = pickle.load(answer)
            except (EOFError, pickle.UnpicklingError):
                got = None
        _, status = os.waitpid(pid, 0)
        _children.discard(pid)
        if got is None:
            why = f"the drawing process ended with status {os.waitstatus_to_exitcode(status)} without an answer"
            got = ("error", group[0], "ChildProcessError", why, "")
        replies.append((group, got))
    replies = [(group, reply) for group, reply in replies if group]
    for _, reply in sorted(replies, key=lambda gr: order.index(gr[0][0])):
        if reply[0] != "ok":
            return reply  # the first failure in figure order
    written = {Path(p).name: p for _, reply in replies for p in reply[1]}
    return ("ok", [written[name] for name in order], used)


def _draw(data: FigureData, folder: Path, names: Sequence[str], warm_error: BaseException | None) -> tuple:
    """Draw ``names`` here; the reply tuple (``ok`` and the paths, or what failed)."""
    import traceback

    figure = names[0] if names else "the figures"
    try:
        if warm_error is not None:
            raise warm_error
        from dense_plantain.report import figures

        paths = []
        for figure in names:
            paths += figures.draw(data, folder, [figure])
        return ("ok", [str(p) for p in paths])
    except OSError as err:
        return ("oserror", err.errno, err.strerror or str(err), err.filename)
    except Exception as err:
        return ("error", figure, type(err).__name__, str(err), traceback.format_exc())
