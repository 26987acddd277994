"""Weight mappings ask for transparent huge pages (the decode step streams every weight once)."""

from __future__ import annotations

import mmap
import sys
from pathlib import Path

import numpy as np
import pytest

from bitnet_edge.sdk.safetensors_io import SafetensorsFile, write_safetensors

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _vma_flags(addr: int) -> list[str]:
    """VmFlags of the mapping of this process that holds addr (/proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            lo, hi = (int(v, 16) for v in head.split("-"))
            inside = lo <= addr < hi
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {addr:#x}")


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE")
                    or not THP.is_file() or "[never]" in THP.read_text(),
                    reason="transparent huge pages: Linux with THP enabled")
def test_weight_mapping_is_advised_huge_pages(tmp_path):
    w = np.arange(3 << 20, dtype=np.uint8).reshape(3, -1)  # 3 MB: above one 2 MB page
    path = tmp_path / "w.safetensors"
    write_safetensors(path, {"w": w})
    f = SafetensorsFile(path)
    view = f.get("w")
    np.testing.assert_array_equal(view, w)
    assert "hg" in _vma_flags(view.ctypes.data)  # VM_HUGEPAGE: madvise(MADV_HUGEPAGE) took


def test_small_file_is_read_as_before(tmp_path):
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "s.safetensors"
    write_safetensors(path, {"s": w})
    np.testing.assert_array_equal(SafetensorsFile(path).get("s"), w)
