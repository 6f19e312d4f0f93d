"""Memory of the mount daemon.

- P8b: peak RSS during the P3 cold start (the peak a mount reaches while a cold start fetches, inflates and
  verifies spans, read from VmHWM right after the command ends).
- S7: peak RSS during random 4 KiB reads all over one big file of a one-layer image of 1 and of 4 GiB (the
  layer read from the local OCI layout S1 builds): it must stay within the span cache's budget plus a fixed
  overhead, whatever the layer's size. Run alone with `bench.py --only S7`.
"""

import os
import random
import statistics

GOAL = 32 << 20


def p8b_cold_start_rss(results, peaks, label):
    """Adds the P8b row for the peaks (bytes) measured in the P3 runs of link `label`."""
    peak = statistics.median(peaks)
    spread = f"{peak / (1 << 20):.1f} MiB ({min(peaks) / (1 << 20):.1f}–{max(peaks) / (1 << 20):.1f})"
    results.add("P8b", f"mount daemon peak RSS during the P3 cold start ({label})", spread, "—", None,
                "≤ 32 MiB", peak <= GOAL, None)


def s7_random_reads(tmp, results, sizes=(1, 4), reads=3000):
    """Adds the S7 row: peak RSS of a mount (fresh cache) after `reads` random 4 KiB reads of the first file
    of the big-layer image, at each size; the goal is flat (growth ≤ 1.2) and ≤ 64 MiB."""
    import bench  # the scenario runner, run as __main__; imported here so this module loads first

    peaks = []
    for gib in sizes:
        layout = bench.big_layer_image(gib)
        index = tmp / f"s7-{gib}g.clip"
        bench.run([bench.CLIP, "-q", "index", "--no-reuse", f"oci:{layout}:big", "-o", index])
        m = bench.Mount(index, tmp / f"s7-{gib}g-mnt", tmp / f"s7-{gib}g-cache")
        try:
            path = m.mnt / "f0.txt"
            size = path.stat().st_size
            rng = random.Random(gib)
            fd = os.open(path, os.O_RDONLY)
            try:
                for _ in range(reads):
                    assert len(os.pread(fd, 4096, rng.randrange(0, size - 4096))) == 4096
            finally:
                os.close(fd)
            peaks.append(m.peak_rss())
        finally:
            m.stop()
        index.unlink()
    growth = peaks[-1] / peaks[0]
    mib = lambda v: f"{v / (1 << 20):.1f} MiB"
    results.add("S7", f"mount daemon peak RSS after {reads} random 4 KiB reads of one file, one gzip layer of "
                f"{sizes[-1]} GiB (vs {sizes[0]} GiB)", mib(peaks[-1]), f"{mib(peaks[0])} ({sizes[0]} GiB)", growth,
                "≤ 64 MiB, growth ≤ 1.2", peaks[-1] <= 64 << 20 and growth <= 1.2, None)
