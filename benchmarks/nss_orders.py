"""Time building the NSS scan orders (mair.models.nss.scan_orders) on the CPU, cache cleared each run.

Usage: ``python benchmarks/nss_orders.py [--repeats N]``. Prints a table of median (min) times per size and
offset, with torch's default thread count and with one thread; the target is < 50 ms for 1024x1024.
The load average is printed too: on a shared, oversubscribed CPU every parallel torch op can wait a
scheduler time slice for its second thread, which the one-thread column does not suffer.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from mair.models.nss import clear_cache, scan_orders

SIZES = ((256, 256), (1024, 1024))
SCAN_LEN = 8
SHIFTS = (0, SCAN_LEN // 2)


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform.processor() elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def time_build(H: int, W: int, shift: int, repeats: int) -> list[float]:
    """Seconds per cold build of scan_orders(H, W, SCAN_LEN, shift), one per repeat."""
    times = []
    for _ in range(repeats):
        clear_cache()
        start = time.perf_counter()
        scan_orders(H, W, SCAN_LEN, shift)
        times.append(time.perf_counter() - start)
    clear_cache()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    scan_orders(8, 8, SCAN_LEN, 0)  # warm-up: import-time and first-call overheads
    default_threads = torch.get_num_threads()
    thread_counts = sorted({default_threads, 1}, reverse=True)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs), torch {torch.__version__}, load avg {load}")
    print(f"scan_len={SCAN_LEN}; ms per cold build (cache cleared), median (min) of {args.repeats}\n")
    print("| size | shift | " + " | ".join(f"{n} thread{'s' * (n > 1)}" for n in thread_counts) + " |")
    print("|---|---|" + "---|" * len(thread_counts))
    try:
        for H, W in SIZES:
            for shift in SHIFTS:
                cells = []
                for n in thread_counts:
                    torch.set_num_threads(n)
                    times = time_build(H, W, shift, args.repeats)
                    cells.append(f"{1e3 * statistics.median(times):.1f} ({1e3 * min(times):.1f})")
                print(f"| {H}x{W} | {shift} | " + " | ".join(cells) + " |")
    finally:
        torch.set_num_threads(default_threads)


if __name__ == "__main__":
    main()
