"""P8b: peak RSS of the mount daemon during the P3 cold start (the peak a mount reaches while a cold
start fetches, inflates and verifies spans, read from VmHWM right after the command ends)."""

import statistics

GOAL = 32 << 20


def p8b_cold_start_rss(results, peaks, label):
    """Adds the P8b row for the peaks (bytes) measured in the P3 runs of link `label`."""
    peak = statistics.median(peaks)
    spread = f"{peak / (1 << 20):.1f} MiB ({min(peaks) / (1 << 20):.1f}–{max(peaks) / (1 << 20):.1f})"
    results.add("P8b", f"mount daemon peak RSS during the P3 cold start ({label})", spread, "—", None,
                "≤ 32 MiB", peak <= GOAL, None)
