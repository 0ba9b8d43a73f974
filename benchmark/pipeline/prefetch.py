"""A bounded background prefetcher: items ``f(i, device)`` for ``i`` in a range, produced in index order by one
thread ahead of the consumer, and moved to the device.

Training meta-batches and evaluation groups are pure functions of their index (:mod:`benchmark.kit.episodes`), so
producing them early, on another thread, cannot change them: with prefetching on or off a run computes the same
numbers (tested in ``tests/test_prefetch.py``). What it changes is when the host work happens: drawing the indices,
gathering and normalising the pixels and (on CUDA) the host-to-device copy overlap the consumer's step instead of
preceding it.

A dataset that fits on the GPU does not come here: its episodes are built on the device (:func:`gather_on_device`,
:class:`~benchmark.data.DeviceImages`), and the runner turns prefetching off for it.

On CUDA the producer pins each host tensor (``pin_memory()``) and copies it with ``.to(device, non_blocking=True)`` on
its own CUDA stream; the consumer's stream waits for that copy (an event recorded after it) before it uses the item,
and each tensor is marked as used on the consumer's stream (``record_stream``) so the caching allocator does not reuse
its memory early. On the CPU items are left as they are (no pinning, no copy).

The producer stops cleanly when the consumer stops early (an exception, Ctrl-C, ``stop_after``, or just leaving the
``with`` block): :meth:`Prefetcher.close` tells it to stop, empties the queue so that a producer blocked on a full
queue wakes up, and joins the thread; no thread outlives the block. An exception raised by ``f`` is re-raised in the
consumer, at the item where it happened.

Thread safety of what the producer reads (checked in the code, ``benchmark/kit/episodes.py`` and
``benchmark/data/dataset.py``): an episode is drawn from a fresh Philox generator per call (``keyed_rng``; no shared
or global random state); ``FewShotDataset.tensor`` only reads the split lists and the image array (NumPy fancy
indexing of a read-only array in RAM, or :class:`~benchmark.data.dataset.DiskImages`, whose reads are ``os.pread`` at
explicit offsets: no shared file position, safe from several threads; its descriptor is opened lazily, once per
process, under a lock) and builds new tensors. The dataset fingerprint is computed once (lazily, when the run is
prepared, before any producer starts). So the producer may run beside a method that draws more data itself from
``ctx.sampler`` (TADAM's batches, MTL's hard tasks) in the consumer thread.
"""
from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Any, Callable, Iterable

import torch

_DONE = object()


def default_prefetch(device: torch.device | str) -> int:
    """The prefetch depth to use on ``device`` when the user does not choose one: 0 (off) on the CPU, where the
    producer would only compete with the step for the same cores; 2 on CUDA, where the GPU would otherwise wait for
    the host's gathers and copies. The one place this is decided (to be confirmed by measurements on an idle GPU)."""
    return 2 if torch.device(device).type == "cuda" else 0


#: CUDA: a dataset whose pixels (uint8) take at most this share of the run's share of the device's total memory is
#: copied to it once per process and its episodes are gathered there (:func:`gather_on_device`); the rest stays for
#: the runs' models and activations.
DEVICE_DATA_SHARE = 0.25


def gather_on_device(ds, device: torch.device | str, share: float = DEVICE_DATA_SHARE,
                     gpu_fraction: float | None = None) -> bool:
    """Whether a run on ``device`` builds its episodes on the device from a copy of ``ds``'s pixels
    (:class:`~benchmark.data.DeviceImages`) instead of on the host (and, with prefetching, copied over): on CUDA when
    the pixels fit within ``share`` of the run's part of the device's total memory (``gpu_fraction``: the share of
    the GPU the run was given, 1/K for K workers packed on it; None or 0: all of it), so K packed workers' copies
    together stay within ``share`` of the GPU (the embedded Omniglot's 25 MB always fit); never on the CPU, where
    the host path is the device path. Total, not free memory: the decision does not change with earlier runs or
    neighbours. The episodes are the same either way (tested); the one place this is decided."""
    device = torch.device(device)
    if device.type != "cuda":
        return False
    total = torch.cuda.get_device_properties(device).total_memory
    return ds.nbytes <= share * (gpu_fraction or 1.0) * total


#: this process's device copy of a dataset's pixels, kept across its runs: (fingerprint, device) -> uint8 tensor
_DEVICE_PIXELS: dict[tuple[str, str], torch.Tensor] = {}


def device_images(ds, device: torch.device | str):
    """``ds``'s pixels on ``device`` (:class:`~benchmark.data.DeviceImages`), copied once per process: a later run
    on the same pixels (the same fingerprint) and device reuses the copy instead of making another. One dataset's
    copy is kept at a time (a run on another dataset frees it first), so a worker never holds two."""
    key = (ds.fingerprint, str(torch.device(device)))
    pixels = _DEVICE_PIXELS.get(key)
    if pixels is None:
        _DEVICE_PIXELS.clear()
        images = ds.to_device(device)
        _DEVICE_PIXELS[key] = images.images
        return images
    return ds.to_device(device, pixels=pixels)


def transfer(obj: Any, device: torch.device, non_blocking: bool = False, pin: bool = False) -> Any:
    """``obj`` with every tensor in it (directly, in a list, tuple or dict, or as a field of a dataclass such as
    :class:`~benchmark.kit.episodes.Episode`) moved to ``device``; other values are kept. ``pin``: pin host tensors first
    (page-locked memory, which an asynchronous copy to CUDA needs)."""
    if isinstance(obj, torch.Tensor):
        if obj.device == device:
            return obj
        if pin and obj.device.type == "cpu":
            obj = obj.pin_memory()
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, (list, tuple)):
        moved = [transfer(v, device, non_blocking, pin) for v in obj]
        if all(a is b for a, b in zip(moved, obj)):
            return obj
        return type(obj)(moved) if not hasattr(obj, "_fields") else type(obj)(*moved)
    if isinstance(obj, dict):
        return {k: transfer(v, device, non_blocking, pin) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: transfer(getattr(obj, f.name), device, non_blocking, pin)
                   for f in dataclasses.fields(obj) if f.init and isinstance(getattr(obj, f.name), torch.Tensor)}
        changed = any(v is not getattr(obj, k) for k, v in changes.items())
        return dataclasses.replace(obj, **changes) if changed else obj
    return obj


def _tensors(obj: Any) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if isinstance(v, torch.Tensor):
                yield v


class _Failure:
    def __init__(self, index: int, error: BaseException):
        self.index, self.error = index, error


class Prefetcher:
    """Iterate over the items ``f(i, cpu)`` for ``i`` in ``indices`` (in that order), computed by a background thread
    at most ``depth`` items ahead (``depth >= 1``) and moved to ``device`` (:func:`transfer`; on CUDA pinned, and
    copied asynchronously on the producer's stream). Use as a context manager (or call :meth:`close`)::

        with Prefetcher(lambda s, dev: draw(s, dev), range(start, total), depth=2, device=dev) as items:
            for item in items:
                ...

    Iteration yields the items only; :meth:`get` ``(i)`` takes the next one and checks that it is item ``i``.
    """

    def __init__(self, f: Callable[[int, torch.device], Any], indices: Iterable[int], depth: int, device: torch.device | str,
                 name: str = "prefetch"):
        if depth < 1:
            raise ValueError(f"prefetch depth must be at least 1 (got {depth}); 0 means no prefetcher")
        self.f, self.indices, self.device = f, list(indices), torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._stream = torch.cuda.Stream(self.device) if self.cuda else None
        self._next = 0
        self._thread = threading.Thread(target=self._produce, name=name, daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- producer (background thread)
    def _put(self, item) -> bool:
        """Put ``item``, waiting while the queue is full; False when told to stop meanwhile."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        for i in self.indices:
            if self._stop.is_set():
                return
            try:
                item = self.f(i, torch.device("cpu"))
                event = None
                if self.cuda:
                    with torch.cuda.stream(self._stream):
                        item = transfer(item, self.device, non_blocking=True, pin=True)
                        event = torch.cuda.Event()
                        event.record(self._stream)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
                self._put(_Failure(i, e))
                return
            if not self._put((i, item, event)):
                return
        self._put(_DONE)

    # ---------------------------------------------------------------- consumer
    def get(self, index: int | None = None) -> Any:
        """The next item (``index``: the index it must have; ValueError otherwise). Re-raises the producer's
        exception; StopIteration after the last item."""
        while True:
            try:
                got = self._queue.get(timeout=0.1)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("the prefetch thread ended without an item") from None
        if got is _DONE:
            self._queue.put(_DONE)  # later calls end too
            raise StopIteration
        if isinstance(got, _Failure):
            self.close()
            raise got.error
        i, item, event = got
        if index is not None and i != index:
            raise ValueError(f"prefetcher is at item {i}, not {index}")
        if event is not None:
            consumer = torch.cuda.current_stream(self.device)
            consumer.wait_event(event)
            for t in _tensors(item):
                if t.device.type == "cuda":
                    t.record_stream(consumer)
        self._next += 1
        return item

    def __iter__(self):
        return self

    def __next__(self) -> Any:
        return self.get()

    def close(self) -> None:
        """Stop the producer and wait for its thread to end (idempotent)."""
        self._stop.set()
        while self._thread.is_alive():
            try:  # make room, so a producer blocked on a full queue sees the stop
                while True:
                    self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def prefetched(f: Callable[[int, torch.device], Any], indices: Iterable[int], depth: int,
               device: torch.device | str):
    """A context manager giving an iterator over the items of ``indices``, in order, with a ``get(i)`` that also
    checks the index: ``f(i, device)`` is item ``i`` on ``device``. ``depth >= 1``: a :class:`Prefetcher` (which
    computes ``f(i, cpu)`` ahead, in its thread, and moves it); ``depth == 0``: ``f(i, device)`` is called when the
    item is asked for, in the consumer (no thread: the path without prefetching)."""
    if depth and depth > 0:
        return Prefetcher(f, indices, depth, device)
    return _Inline(f, indices, torch.device(device))


class _Inline:
    def __init__(self, f, indices, device):
        self.f, self.indices, self.device = f, iter(list(indices)), device

    def get(self, index: int | None = None):
        i = next(self.indices)
        if index is not None and i != index:
            raise ValueError(f"at item {i}, not {index}")
        return self.f(i, self.device)

    def __iter__(self):
        return self

    def __next__(self):
        return self.get()

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass
