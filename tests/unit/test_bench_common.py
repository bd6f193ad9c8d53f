"""The benchmarks' shared measuring helpers (benchmarks/_common.py): parsing /proc and the busy-machine verdict."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import _common  # noqa: E402  (benchmarks/_common.py)

ROLLUP = """5565ae488000-7ffdbed9d000 ---p 00000000 00:00 0                          [rollup]
Rss:                1628 kB
Pss:                 189 kB
Pss_Dirty:           116 kB
Shared_Clean:       1472 kB
"""


def test_pss_is_read_from_smaps_rollup_in_bytes():
    assert _common.parse_pss(ROLLUP) == 189 * 1024
    assert _common.parse_pss("Rss: 10 kB\n") is None  # a kernel without Pss: unknown, not 0


def test_stat_fields_survive_a_command_name_with_spaces_and_parentheses():
    # pid (comm) state ppid ... utime(14) stime(15): comm may hold ") (" and spaces
    line = "4242 (ray::IDLE (x) y) S 17 4242 4242 0 -1 4194560 1 0 0 0 250 50 7 9 20 0 1 0 1 1 1"
    assert _common.parse_stat(line) == (17, 300)


def test_descendants_of_this_process_include_a_child_it_started():
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        tree = _common.descendants(os.getpid())
        assert os.getpid() in tree and child.pid in tree
    finally:
        child.kill()
        child.wait()


def test_busy_verdict_names_what_made_the_machine_untrustworthy():
    quiet = _common.busy_reasons(load_before=(0.3, 0.5, 0.6), others_share=0.05, cores=2)
    assert quiet == []
    loaded = _common.busy_reasons(load_before=(1.6, 1.0, 1.0), others_share=0.05, cores=2)
    assert len(loaded) == 1 and "1.60" in loaded[0]
    contended = _common.busy_reasons(load_before=(0.2, 0.2, 0.2), others_share=0.4, cores=2)
    assert len(contended) == 1 and "40%" in contended[0]
    unknown = _common.busy_reasons(load_before=(0.2, 0.2, 0.2), others_share=None, cores=2)
    assert unknown == []
