"""The rules of identical terms, enforced while a method's code runs: :func:`watching` around every call into a method
(building it, ``train_step``, ``predict``, ``predict_many``) in runs, evaluations and ``benchmark.check``.

While a call is watched, a process-wide audit hook (:func:`sys.addaudithook`, installed once) and a wrapper of
``builtins.__import__`` refuse, when the method's own code asks for it:

* **I/O**: opening files, ``os``/``shutil``/``tempfile``/``glob`` file events, sockets and other network events,
  processes (``subprocess``, ``os.system``, ``os.fork``, ...), threads (which would run unwatched), ``ctypes``;
* **introspection**: frames (``sys._getframe``, ``inspect.stack``/``currentframe``, ``sys._current_frames``, a
  traceback's ``tb_frame``, a generator's or coroutine's frame, ``sys.settrace``/``setprofile``) and the garbage
  collector (``gc.get_objects``, ``gc.get_referrers``, ``gc.get_referents``), and adding an audit hook;
* **the harness's rooms**: importing ``benchmark.data``, ``benchmark.pipeline``, ``benchmark.store`` (any part of
  the ``benchmark`` package but :mod:`benchmark.kit`), even when it is imported already.

"The method's own code" is the innermost frame of the event that is not the standard library's: a frame of a file
outside the standard library, the installed packages and the ``benchmark`` package (the ``methods`` package, a
method file, a plugin), or of the method's own module wherever it lives. What is legitimate goes on: the harness's
own work (its samplers reading pixels, ``ctx.cached`` artefacts, ``ctx.val_accuracy``, progress bars: harness code,
or suspended with :func:`suspended`), installed libraries' own introspection (PyTorch's compiler), imports of
modules outside the rooms (PyTorch's lazy imports) and the files PyTorch's compilation reads and writes
(``torch._dynamo``, ``torch._inductor``, Triton: their frames are on the stack). An installed library's I/O on the
method's behalf (``torch.load``, ``numpy.load``) is refused.

A breach raises :class:`RuleBreach` (one line: the rule, what was asked, the method's file:line and the call) in the
method's code and again when the watched call ends, even if the method caught it, so the run fails through its
failure path (``failed.json`` says why; nothing is scored). Audit hooks cannot be removed: outside a watched call the
hook returns at its first test. ``BENCHMARK_GUARD=off`` switches the watching off (only to measure its cost).
"""
from __future__ import annotations

import builtins
import contextvars
import os
import sys
import sysconfig
from pathlib import Path

GUARD_ENV = "BENCHMARK_GUARD"  # "off": no watching (to measure its cost); "on" or unset: watching

_BENCHMARK = str(Path(__file__).resolve().parents[1]) + os.sep
_LIBRARIES = tuple(sorted({str(Path(sysconfig.get_paths()[k]).resolve()) + os.sep for k in ("purelib", "platlib")}))
_STDLIB = tuple(sorted({str(Path(sysconfig.get_paths()[k]).resolve()) + os.sep for k in ("stdlib", "platstdlib")}))
#: installed code whose file I/O is PyTorch's own compilation (caches, generated kernels, compiler processes)
_COMPILERS = tuple(f"{os.sep}{p}" + ("" if p.endswith(".py") else os.sep)
                   for p in ("torch/_dynamo", "torch/_inductor", "torch/_functorch", "triton", "torch/utils/_triton.py",
                             "torch/_higher_order_ops", "torch/fx", "torch/_subclasses", "torch/_export"))
#: standard-library modules whose own frame introspection hands the caller no frame (logging's caller lookup)
_QUIET_INTROSPECTION = tuple(f"{os.sep}{p}" for p in ("logging/__init__.py", "warnings.py"))

IO, NETWORK, PROCESSES, THREADS, MEMORY = ("file I/O", "network", "processes", "threads", "memory access")
FRAMES, GC, HOOKS, ROOMS = ("frame introspection", "garbage-collector introspection", "audit hooks",
                            "harness rooms")

_EXACT = {"open": IO, "sys._getframe": FRAMES, "sys._current_frames": FRAMES, "sys._current_exceptions": FRAMES,
          "sys.settrace": FRAMES, "sys.setprofile": FRAMES, "gc.get_objects": GC, "gc.get_referrers": GC,
          "gc.get_referents": GC, "sys.addaudithook": HOOKS, "_thread.start_new_thread": THREADS,
          "os.system": PROCESSES, "os.fork": PROCESSES, "os.forkpty": PROCESSES, "os.kill": PROCESSES,
          "os.killpg": PROCESSES, "os.posix_spawn": PROCESSES, "os.spawn": PROCESSES, "os.exec": PROCESSES,
          "os.startfile": PROCESSES, "pty.spawn": PROCESSES, "subprocess.Popen": PROCESSES}
_PREFIXES = (("os.", IO), ("shutil.", IO), ("tempfile.", IO), ("glob.", IO), ("mmap.", IO), ("sqlite3.", IO),
             ("fcntl.", IO), ("socket.", NETWORK), ("urllib.", NETWORK), ("http.", NETWORK), ("ftplib.", NETWORK),
             ("smtplib.", NETWORK), ("poplib.", NETWORK), ("imaplib.", NETWORK), ("nntplib.", NETWORK),
             ("telnetlib.", NETWORK), ("webbrowser.", NETWORK), ("ctypes.", MEMORY), ("subprocess.", PROCESSES))
_FRAME_ATTRIBUTES = {"tb_frame", "gi_frame", "cr_frame", "ag_frame"}
#: rules whose events only installed libraries' own work may cause (PyTorch's compilation, imports)
_RESOURCE_RULES = {IO, NETWORK, PROCESSES}

_ROOMS_ALLOWED = {"benchmark", "benchmark.kit"}


class RuleBreach(RuntimeError):
    """A method's code broke a rule of identical terms while it was watched (see :mod:`benchmark.pipeline.guard`);
    the message is one line: the rule, what was asked, the method's file:line and the call."""


def rule_of(event: str, args: tuple) -> str | None:
    """The rule an audit event falls under, or None when it is none of the guard's business."""
    rule = _EXACT.get(event)
    if rule is not None:
        return rule
    if event == "object.__getattr__":
        return FRAMES if len(args) > 1 and args[1] in _FRAME_ATTRIBUTES else None
    if event == "import":
        return ROOMS if is_room(str(args[0])) else None
    for prefix, r in _PREFIXES:
        if event.startswith(prefix):
            return r
    return None


def is_room(module: str) -> bool:
    """Whether ``module`` is part of the harness a method may not import: any of ``benchmark`` but
    :mod:`benchmark.kit`."""
    if module != "benchmark" and not module.startswith("benchmark."):
        return False
    return module not in _ROOMS_ALLOWED and not module.startswith("benchmark.kit.")


def enabled() -> bool:
    """Whether calls into methods are watched (``BENCHMARK_GUARD``: "on" or unset; "off" for a cost measurement).
    ValueError on another value."""
    value = os.environ.get(GUARD_ENV, "on")
    if value not in ("on", "off"):
        raise ValueError(f"{GUARD_ENV} must be 'on' or 'off', not {value!r}")
    return value == "on"


class _Watch:
    """One watched call: its name, the method's own source files and the frame it was entered from."""

    def __init__(self, what: str, files: frozenset[str], boundary):
        self.what, self.files, self.boundary = what, files, boundary
        self.breach: RuleBreach | None = None


_WATCH: contextvars.ContextVar[_Watch | None] = contextvars.ContextVar("benchmark_guard_watch", default=None)
_KIND: dict[str, str] = {}  # file name -> "method", "harness", "library", "compiler", "importer", "stdlib", "quiet"
_FILES: dict[type, frozenset[str]] = {}  # method class -> its own source files
_installed = False


def _kind(filename: str, watch: _Watch) -> str:
    if filename in watch.files:
        return "method"
    kind = _KIND.get(filename)
    if kind is None:
        if filename.startswith("<frozen"):
            kind = "importer" if "importlib" in filename else "stdlib"
        elif filename.startswith("<"):
            kind = "method"  # exec'd or generated code: judged as the method's (dataclass methods never trip a rule)
        else:
            path = str(Path(filename).resolve())
            if path.startswith(_BENCHMARK):
                kind = "harness"
            elif path.startswith(_LIBRARIES):
                kind = "compiler" if any(c in path for c in _COMPILERS) else "library"
            elif path.startswith(_STDLIB):
                kind = "quiet" if path.endswith(_QUIET_INTROSPECTION) else "stdlib"
            else:
                kind = "method"
        _KIND[filename] = kind
    return kind


def _culprit(rule: str, frame, watch: _Watch):
    """The method's frame to blame for an event raised in ``frame``'s call, or None when the event is legitimate."""
    while frame is not None and frame is not watch.boundary:
        kind = _kind(frame.f_code.co_filename, watch)
        if kind == "method":
            return frame
        if kind == "harness":
            return None
        if kind == "importer" and rule in _RESOURCE_RULES:
            return None  # an import reading the module's files (which module: the "import" event and the wrapper)
        if kind == "compiler" and (rule in _RESOURCE_RULES or rule == ROOMS):
            return None  # PyTorch's compilation
        if kind == "quiet" and rule == FRAMES:
            return None
        if kind in ("library", "compiler") and rule not in _RESOURCE_RULES:
            return None  # a library's own introspection, threads, imports
        frame = frame.f_back
    return None


def _describe(event: str, args: tuple) -> str:
    if event == "object.__getattr__":
        return f"reads .{args[1]}"
    if event == "import":
        return f"imports {args[0]}"
    if event == "open" and args:
        return f"opens {str(args[0])[-80:]!r}"
    if event.startswith(("os.", "shutil.")) and args and isinstance(args[0], (str, bytes, os.PathLike)):
        return f"calls {event} on {str(args[0])[-80:]!r}"
    return f"calls {event}"


def _judge(watch: _Watch, rule: str, what: str, frame) -> None:
    culprit = _culprit(rule, frame, watch)
    if culprit is None:
        return
    where = f"{Path(culprit.f_code.co_filename).name}:{culprit.f_lineno}"
    breach = RuleBreach(f"{rule}: the method {what} at {where} (in {watch.what}); a method's code may not "
                        f"{_FORBIDDEN[rule]}")
    if watch.breach is None:
        watch.breach = breach
    raise breach


_FORBIDDEN = {IO: "read or write files", NETWORK: "use the network", PROCESSES: "start or signal processes",
              THREADS: "start threads (they would run unwatched)", MEMORY: "use ctypes",
              FRAMES: "look at frames (the harness's included)", GC: "search the garbage collector's objects",
              HOOKS: "add audit hooks", ROOMS: "import the harness's data, pipeline or store (benchmark.kit only)"}


def _reads_source(args: tuple) -> bool:
    """Whether an ``open`` reads a Python source file (a warning's or traceback's source line, ``inspect``): no data."""
    path, mode = args[0], args[1] if len(args) > 1 else "r"
    return isinstance(path, str) and path.endswith(".py") and (mode is None or mode in ("r", "rb"))


def _hook(event: str, args: tuple) -> None:
    watch = _WATCH.get()
    if watch is None:
        return
    rule = rule_of(event, args)
    if rule is None or (event == "open" and _reads_source(args)):
        return
    token = _WATCH.set(None)  # the judging itself raises events (sys._getframe)
    try:
        _judge(watch, rule, _describe(event, args), sys._getframe(1))
    finally:
        _WATCH.reset(token)


_import = builtins.__import__


def _watched_import(name, globals=None, locals=None, fromlist=(), level=0):
    watch = _WATCH.get()
    if watch is not None and (level or name == "benchmark" or name.startswith("benchmark.")):
        module = name
        if level:
            package = (globals or {}).get("__package__") or ""
            base = package.rsplit(".", level - 1)[0] if level > 1 else package
            module = f"{base}.{name}" if name else base
        asked = [module] + [f"{module}.{f}" for f in (fromlist or ()) if f != "*"]
        room = next((m for m in asked if is_room(m)), None)
        if room is not None:
            token = _WATCH.set(None)
            try:
                _judge(watch, ROOMS, f"imports {room}", sys._getframe(1))
            finally:
                _WATCH.reset(token)
    return _import(name, globals, locals, fromlist, level)


def install() -> None:
    """Install the audit hook and the import wrapper, once per process (they stay: audit hooks cannot be removed)."""
    global _installed
    if not _installed:
        _installed = True
        sys.addaudithook(_hook)
        builtins.__import__ = _watched_import


def method_files(method) -> frozenset[str]:
    """The source files of the method's own code that are not the harness's, also when it is an installed package:
    for a method (or its class), its class's and its bases' modules; for a function or bound method the method hands
    the harness (``ctx.cached``'s compute, ``ctx.val_accuracy``'s predict), its module's, or its owner's."""
    owner = getattr(method, "__self__", None)
    if owner is not None and not isinstance(owner, type(sys)):
        method = owner
    if isinstance(method, type(sys)):  # a method file's module, while it is imported
        return frozenset([method.__file__]) if getattr(method, "__file__", None) else frozenset()
    if not isinstance(method, type) and not callable(getattr(method, "train_step", None)):
        path = getattr(sys.modules.get(getattr(method, "__module__", None) or ""), "__file__", None)
        return frozenset([path]) if path and not str(Path(path).resolve()).startswith(_BENCHMARK) else frozenset()
    cls = method if isinstance(method, type) else type(method)
    if cls in _FILES:
        return _FILES[cls]
    out = set()
    for klass in cls.__mro__:
        module = sys.modules.get(getattr(klass, "__module__", ""), None)
        path = getattr(module, "__file__", None)
        if path and not str(Path(path).resolve()).startswith(_BENCHMARK) and klass is not object:
            out.add(path)
    _FILES[cls] = frozenset(out)
    return _FILES[cls]


class watching:
    """Context manager: the rules hold while its body runs a method's code (``method``: the method or its class;
    ``what``: the call, for the message). A breach raises :class:`RuleBreach` where it happened and again on leaving,
    even when the method's code caught it. A no-op with ``BENCHMARK_GUARD=off``. Nested use (a harness service the
    method calls, which calls the method back) watches the inner call on its own."""

    def __init__(self, method, what: str):
        self.method, self.what, self._token, self._watch = method, what, None, None

    def __enter__(self) -> "watching":
        if enabled():
            install()
            self._watch = _Watch(self.what, method_files(self.method), sys._getframe(1))
            self._token = _WATCH.set(self._watch)
        return self

    def __exit__(self, kind, error, tb) -> None:
        if self._token is not None:
            _WATCH.reset(self._token)
            self._token = None
            breach = self._watch.breach
            if breach is not None and error is not breach:
                raise breach from error


class suspended:
    """Context manager: harness code that a method calls (``ctx.cached``, ``ctx.val_accuracy``, progress bars) runs
    unwatched; a call back into the method inside it is watched again with :class:`watching`."""

    def __enter__(self) -> "suspended":
        self._token = _WATCH.set(None)
        return self

    def __exit__(self, *exc) -> None:
        _WATCH.reset(self._token)
