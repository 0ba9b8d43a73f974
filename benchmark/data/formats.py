"""Reading the file formats other few-shot libraries ship: pickles (Python 2 or 3), ``.npz`` arrays read in place,
and lists of PNG-encoded images decoded straight into the pixel cache.

Every failure is a :class:`~.dataset.DataError` naming the file at fault and what was expected.
"""
from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from .dataset import DataError, DiskImages, ImageWriter, cached_images

_RECONSTRUCT = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}
_FROMBUFFER = {("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}


class _Unpickler(pickle.Unpickler):
    """Python 2 pickles (``encoding='latin1'``) and pickles naming ``numpy.core`` (NumPy < 2) load under NumPy 2."""

    def find_class(self, module, name):
        if module.startswith("numpy.core") and np.__version__ >= "2":
            module = "numpy._core" + module[len("numpy.core"):]
        return super().find_class(module, name)


def _str_keys(x):
    if isinstance(x, dict):
        return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in x.items()}
    return x


def read_pickle(path: Path, expected: str):
    """Load a pickle written by Python 2 or 3; a dict gets str keys. ``expected`` says what the file should hold."""
    if not path.is_file():
        raise DataError(f"{path} is missing; expected {expected}")
    try:
        with open(path, "rb") as fh:
            return _str_keys(_Unpickler(fh, encoding="latin1").load())
    except Exception as e:  # pickle raises many types on corrupt input
        raise DataError(f"{path} is corrupt or not a pickle ({type(e).__name__}); expected {expected}") from None


def as_str(x) -> str:
    return x.decode("latin1") if isinstance(x, bytes) else str(x)


def check_images(path: Path, shape: tuple[int, ...], size: tuple[int, ...]) -> None:
    if len(shape) != 4 or tuple(shape[1:]) != tuple(size):
        raise DataError(f"{path} holds images of shape {tuple(shape)}; expected [N, {', '.join(map(str, size))}] uint8")


# -- .npz: the array read in place when stored, streamed into the cache when compressed ---------------------------

def _npy_header(fh) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    return np.lib.format.read_array_header_2_0(fh)


def npz_images(path: Path, key: str, size: tuple[int, ...], data_dir: Path, cache_name: str, bgr: bool = False):
    """The uint8 array ``key`` of ``path`` (an ``.npz``) without loading it: a :class:`DiskImages` on the file itself
    when the member is stored (``np.savez``), else decompressed once into the pixel cache (``np.savez_compressed``).
    """
    member = f"{key}.npy"
    what = f"an .npz with a uint8 array '{key}' [N, {', '.join(map(str, size))}]"
    if not path.is_file():
        raise DataError(f"{path} is missing; expected {what}")
    try:
        with zipfile.ZipFile(path) as z:
            try:
                info = z.getinfo(member)
            except KeyError:
                raise DataError(f"{path} has no array '{key}' (it has {', '.join(z.namelist()) or 'nothing'}); "
                                f"expected {what}") from None
            if info.compress_type == zipfile.ZIP_STORED:
                with open(path, "rb") as fh:
                    fh.seek(info.header_offset)
                    local = fh.read(30)
                    if local[:4] != b"PK\x03\x04":
                        raise DataError(f"{path} is not a readable .npz (bad zip header); expected {what}")
                    fh.seek(info.header_offset + 30 + int.from_bytes(local[26:28], "little")
                            + int.from_bytes(local[28:30], "little"))
                    shape, fortran, dtype = _npy_header(fh)
                    offset = fh.tell()
                _check_npy(path, shape, fortran, dtype, size, what)
                return DiskImages(path, shape, offset, bgr=bgr)
            with z.open(info) as fh:
                shape, fortran, dtype = _npy_header(fh)
                _check_npy(path, shape, fortran, dtype, size, what)
                per = int(np.prod(shape[1:]))

                def fill(w: ImageWriter) -> None:
                    step = max(1, (64 << 20) // per)
                    for a in range(0, shape[0], step):
                        n = min(step, shape[0] - a)
                        buf = fh.read(n * per)
                        if len(buf) != n * per:
                            raise DataError(f"{path} is truncated at image {a}; expected {what}")
                        x = np.frombuffer(buf, dtype=np.uint8).reshape(n, *shape[1:])
                        w.write(a, x[..., ::-1] if bgr else x)

                return cached_images(data_dir, cache_name, [path], shape, fill)
    except DataError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise DataError(f"{path} is corrupt or not an .npz ({type(e).__name__}: {e}); expected {what}") from None


def _check_npy(path, shape, fortran, dtype, size, what) -> None:
    if np.dtype(dtype) != np.uint8 or fortran:
        raise DataError(f"{path}: array is {np.dtype(dtype)}{' (Fortran order)' if fortran else ''}; expected {what}")
    check_images(path, shape, size)


# -- a pickled list of PNG-encoded images, decoded as it is read ---------------------------------------------------

def decode_image(data: bytes, size: tuple[int, int], where: str) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 [H, W, 3] RGB, which must already be ``size`` (H, W)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            x = np.asarray(img.convert("RGB"))
    except Exception as e:
        raise DataError(f"{where} is not a decodable image ({type(e).__name__})") from None
    if x.shape[:2] != tuple(size):
        raise DataError(f"{where} is {x.shape[1]}x{x.shape[0]}; expected {size[1]}x{size[0]}")
    return x


def decode_file_resized(path: Path, size: int, what: str) -> np.ndarray:
    """An image file -> uint8 [size, size, 3] RGB, resized (LANCZOS, whole image) when it is not that size already;
    :class:`DataError` naming ``what`` and the file when it is missing or not an image."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.LANCZOS)
            return np.asarray(img)
    except Exception as e:
        raise DataError(f"{what} image {path} is missing or corrupt ({type(e).__name__}); expected a readable "
                        "JPEG or PNG") from None


class _Blob:
    """Stands in for one pickled NumPy array: its bytes go to ``sink`` as soon as the unpickler sets them."""

    __slots__ = ("sink",)

    def __init__(self, sink):
        self.sink = sink

    def __setstate__(self, state):
        raw = state[4] if isinstance(state, tuple) and len(state) == 5 else state
        self.sink(raw.encode("latin1") if isinstance(raw, str) else bytes(raw))


class _StreamingUnpickler(_Unpickler):
    """Unpickles a list of NumPy byte arrays, handing each array's bytes to ``sink`` instead of keeping it."""

    def __init__(self, fh, sink: Callable[[bytes], None]):
        super().__init__(fh, encoding="latin1")
        self.sink = sink

    def find_class(self, module, name):
        if (module, name) in _RECONSTRUCT:
            return lambda *args: _Blob(self.sink)
        if (module, name) in _FROMBUFFER:
            return lambda buf, *args: self.sink(bytes(buf))
        return super().find_class(module, name)


def png_pickle_images(path: Path, n: int, size: tuple[int, int], data_dir: Path, cache_name: str) -> DiskImages:
    """Ren et al.'s ``*_images_png.pkl`` (a pickled list of ``n`` PNG-encoded images, each a uint8 NumPy array from
    ``cv2.imencode``) decoded once, image by image as the pickle is read, into the pixel cache: memory holds one
    image at a time, not the list. Decoded with PIL as RGB (the PNGs store true colours)."""
    what = f"a pickled list of {n} PNG-encoded {size[1]}x{size[0]} images"
    if not path.is_file():
        raise DataError(f"{path} is missing; expected {what}")

    def fill(w: ImageWriter) -> None:
        k = [0]

        def sink(data: bytes) -> None:
            if k[0] >= n:
                raise DataError(f"{path} holds more than the {n} images its labels file lists")
            w.write(k[0], decode_image(data, size, f"{path}: image {k[0]}")[None])
            k[0] += 1

        try:
            with open(path, "rb") as fh:
                items = _StreamingUnpickler(fh, sink).load()
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{path} is corrupt or not a pickle ({type(e).__name__}); expected {what}") from None
        if not isinstance(items, (list, tuple)):
            raise DataError(f"{path} holds a {type(items).__name__}; expected {what}")
        for item in items:  # items pickled as plain bytes rather than arrays were not streamed
            if not isinstance(item, _Blob) and item is not None:
                sink(item.encode("latin1") if isinstance(item, str) else bytes(item))
        if k[0] != n or len(items) != n:
            raise DataError(f"{path} holds {len(items)} images; expected {n} (as many as its labels file lists)")

    return cached_images(data_dir, cache_name, [path], (n, *size, 3), fill)
