"""Helpers shared by the tests of the filesystem layer: threads, waiting, counting calls, a settable clock."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from nbiafs.fs.listing_store import MetaStore

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


def in_threads(*works: Callable[[], T], timeout: float = 30.0) -> tuple[list[T], list[BaseException]]:
    """Run each of ``works`` in a thread of its own, all released at once; their results and errors.

    Fails the test if a thread is still running after ``timeout`` seconds.
    """
    results: list[T] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(works), timeout=timeout)

    def run(work: Callable[[], T]) -> None:
        try:
            barrier.wait()
            result = work()
        except BaseException as exc:
            errors.append(exc)
        else:
            results.append(result)

    threads = [threading.Thread(target=run, args=(work,)) for work in works]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    assert not any(t.is_alive() for t in threads), "a thread did not finish in time"
    return results, errors


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Return once ``predicate()`` is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


class Calls(Counter[K]):
    """How often each call (a key such as ``("patients", "C")``) was made; :meth:`add` is thread-safe."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def add(self, key: K) -> None:
        with self._lock:
            self[key] += 1

    def total(self) -> int:
        """All calls made (under the lock, so safe while other threads add)."""
        with self._lock:
            return sum(self.values())


class FakeClock:
    """A time source (seconds since the epoch) that moves only when told to; starts at the real time."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def stored(store: MetaStore, key: str, max_age: float = 60.0) -> tuple[float, Any]:
    """``store.get(key, max_age)``, which must be there."""
    got = store.get(key, max_age)
    assert got is not None, f"{key!r} is not stored"
    return got


def dicom_bytes(sop_uid: str, pixels: int = 512, *, implicit: bool = False, undefined: bool = False) -> bytes:
    """A small complete DICOM file (preamble, file meta, a sequence, ``pixels`` bytes of pixel data).

    ``implicit``: implicit VR little endian (else explicit); ``undefined``: the sequence and its item written
    with undefined lengths.
    """
    import io

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = sop_uid
    ds.PatientID = "P"
    item = Dataset()
    item.CodeValue = "1"
    ds.ReferencedImageSequence = Sequence([item])
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, max(1, pixels), 8, 8, 7
    ds.SamplesPerPixel, ds.PixelRepresentation, ds.PhotometricInterpretation = 1, 0, "MONOCHROME2"
    ds.PixelData = b"\x01" * (pixels + pixels % 2)
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    if undefined:
        ds["ReferencedImageSequence"].is_undefined_length = True
        for it in ds.ReferencedImageSequence:
            it.is_undefined_length_sequence_item = True
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
