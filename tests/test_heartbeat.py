"""heartbeat.HeapTrim: the C heap's free pages given back once enough has piled up."""

from __future__ import annotations

import ctypes
from types import SimpleNamespace

import psutil
import pytest

from heartbeat import HeapTrim


class FakeHeap:
    def __init__(self, free: int) -> None:
        self.free = free
        self.trimmed = 0

    def mallinfo(self) -> SimpleNamespace:
        return SimpleNamespace(fordblks=self.free)

    def trim(self, pad: int) -> int:
        assert pad == 0
        self.trimmed += 1
        self.free //= 10  # what trimming consolidates and hands back
        return 1


def test_trims_only_when_the_free_bytes_grew_by_more_than_the_slack():
    heap = FakeHeap(5_000)
    t = HeapTrim(slack=1_000, mallinfo=heap.mallinfo, trim=heap.trim)
    heap.free = 6_000
    assert t.maybe() is False and heap.trimmed == 0  # grew by exactly the slack: not yet
    heap.free = 6_001
    assert t.maybe() is True and heap.trimmed == 1 and t.trims == 1
    assert t.base == 600  # measured again after the trim
    heap.free = 1_500
    assert t.maybe() is False  # 900 over the new base
    heap.free = 300
    assert t.maybe() is False and t.base == 300  # the heap reused its free bytes: the base follows down
    heap.free = 1_301
    assert t.maybe() is True and heap.trimmed == 2


def test_without_glibc_it_does_nothing(monkeypatch):
    monkeypatch.setattr(ctypes, "CDLL", lambda name: SimpleNamespace())  # no mallinfo2, no malloc_trim
    t = HeapTrim()
    assert not t.available and t.maybe() is False and t.trims == 0


def test_on_glibc_a_trim_gives_freed_pages_back():
    t = HeapTrim(slack=1 << 20)
    if not t.available:
        pytest.skip("not glibc")
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    blocks = [libc.malloc(4096) for _ in range(2048)]  # 8 MiB in the heap (below the mmap threshold)
    pin = libc.malloc(64)  # above them, so that freeing them cannot simply shrink the heap's top
    for b in blocks:
        libc.memset(b, 1, 4096)  # touched: resident
    t.maybe()  # start from here
    trims = t.trims
    for b in blocks:
        libc.free(b)
    rss = psutil.Process().memory_info().rss
    assert t.maybe() is True and t.trims == trims + 1
    assert rss - psutil.Process().memory_info().rss > 4 << 20  # most of the 8 MiB back
    assert t.maybe() is False  # nothing new to give back
    libc.free(pin)
