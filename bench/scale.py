"""Costs that must not grow with the image (issue #17), on synthetic one-layer images of N small files built
here (`files/dNNNN/fNNNN.txt`, 1000 per directory, 10–70 bytes each), at several sizes:

- S2: mount daemon RSS after opening (and reading) every file once, minus its RSS right after mounting; over an
  empty cache (the in-memory span tier fills up to its bound, 32 MiB by default) and over the full one.
- S3: time per open+read+close of a file, at the largest size against the smallest (flat).
- S4: `find MNT | wc -l` on a fresh mount ÷ the same on the tree unpacked on local disk, page cache dropped.
- S5: disk cache size (blocks) after reading every file ÷ the bytes of those files.
- S6: peak RSS of `clip index` (`/usr/bin/time -f %M`, the layer read, never a kept part) at 100k and 1M files
  (CLIP_BENCH_S6_SIZES=100000,300000 picks others); with a largest size under 1M, the 1M figure is extrapolated
  from the bytes per file between the two. Building the 1M image takes ~3 min and ~1 GB of disk, once.
  Run alone with `bench.py --only S6`.

Sizes: 10k and 100k files; CLIP_BENCH_SCALE_1M=1 adds 1M (building and unpacking it takes several minutes and
~5 GB of disk). Run alone with `bench.py --only S`.
"""

import gzip
import hashlib
import io
import os
import statistics
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import bench
from bench import drop_caches, log, mib, run, secs, spread, timed

PER_DIR = 1000


def content(d, i):
    return f"file {d}/{i}\n".encode() * (1 + (i % 7))


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes what passes through to `out` (the diff id of the tar)."""

    def __init__(self, out):
        self.out, self.sha = out, hashlib.sha256()

    def writable(self):
        return True

    def write(self, b):
        self.sha.update(b)
        return self.out.write(b)


def many_files_image(n):
    """An OCI layout (tag `v1`) of one gzip layer holding `n` small files; built once, kept in bench/work."""
    layout = bench.WORK / f"images/scale-{n}"
    if (layout / "index.json").exists():
        return layout
    log(f"building a one-layer image of {n} small files")
    tmp = Path(tempfile.mkdtemp(dir=bench.WORK))
    with open(tmp / "layer", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz:
        tee = _Hashing(gz)
        with tarfile.open(fileobj=tee, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for d in range((n + PER_DIR - 1) // PER_DIR):
                info = tarfile.TarInfo(f"files/d{d:04}")
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
                for i in range(min(PER_DIR, n - d * PER_DIR)):
                    data = content(d, i)
                    info = tarfile.TarInfo(f"files/d{d:04}/f{i:04}.txt")
                    info.size, info.mode = len(data), 0o644
                    tar.addfile(info, io.BytesIO(data))
    return bench.one_layer_layout(tmp, layout, "v1", tmp / "layer", "sha256:" + tee.sha.hexdigest())


def data_bytes(n):
    return sum(len(content(d, i)) for d in range((n + PER_DIR - 1) // PER_DIR) for i in range(min(PER_DIR, n - d * PER_DIR)))


def rss(pid):
    return bench.proc_status_bytes(pid, "VmRSS")


def disk_usage(path):
    return int(run(["du", "-s", "--block-size=1", path], capture_output=True, text=True).stdout.split()[0])


def find_count(root):
    out = run(["bash", "-c", f"find {root} | wc -l"], capture_output=True, text=True).stdout
    return int(out)


def open_every_file(root, n):
    """Opens, reads and closes every file once; returns the seconds each tenth of them took."""
    tenths, t = [], time.perf_counter()
    for k in range(n):
        d, i = divmod(k, PER_DIR)
        with open(root / f"files/d{d:04}/f{i:04}.txt", "rb") as f:
            f.read()
        if (k + 1) % max(n // 10, 1) == 0:
            now = time.perf_counter()
            tenths.append(now - t)
            t = now
    return tenths


def measure(tmp, n, runs):
    layout = many_files_image(n)
    index = tmp / f"scale-{n}.clip"
    run([bench.CLIP, "-q", "index", f"oci:{layout}:v1", "-o", index])
    local = tmp / f"scale-{n}-local"
    local.mkdir()
    blob = next(p for p in (layout / "blobs/sha256").iterdir() if p.stat().st_size > 100_000)
    run(["tar", "-xzf", blob, "-C", local])

    out = {"n": n}
    find_clip, find_local = [], []
    for r in range(runs):
        m = bench.Mount(index, tmp / f"scale-{n}-find-{r}", tmp / f"scale-{n}-find-cache")
        drop_caches()
        find_clip.append(timed(lambda: find_count(m.mnt)))
        m.stop()
        drop_caches()
        find_local.append(timed(lambda: find_count(local)))
    assert find_count(local) >= n
    out["find"] = (find_clip, find_local)

    # Twice: over an empty cache (every span fetched once, the memory tier fills to its bound), then a fresh
    # mount over the cache that left.
    cache = tmp / f"scale-{n}-cache"
    for name in ("cold", "warm"):
        m = bench.Mount(index, tmp / f"scale-{n}-mnt-{name}", cache)
        after_mount = rss(m.proc.pid)
        tenths = open_every_file(m.mnt, n)
        out[f"rss_{name}"] = (after_mount, rss(m.proc.pid))
        m.stop()
        if name == "cold":
            out["per_open"] = sum(tenths) / n
            out["tenths"] = tenths
            out["cache"] = (disk_usage(cache), data_bytes(n))
    subprocess.run(["rm", "-rf", local, cache])
    return out


def index_memory_by_files(tmp, results):
    """S6: peak RSS of `clip index` of a one-layer image of N small files, at two sizes; the goal is 128 MiB at
    1M files, so per-file memory must stay small (or be spilled)."""
    sizes = [int(v) for v in os.environ.get("CLIP_BENCH_S6_SIZES", "100000,1000000").split(",")]
    peaks = []
    for n in sizes:
        started = time.time()
        layout = many_files_image(n)
        if time.time() - started > 1:
            log(f"S6: building the {n}-file image took {time.time() - started:.0f} s")
        out = tmp / f"s6-{n}.clip"
        # --no-reuse: the layer is read even when another scenario kept its part.
        err = run(["/usr/bin/time", "-f", "%M", bench.CLIP, "-q", "index", "--no-reuse", f"oci:{layout}:v1", "-o", out],
                  capture_output=True, text=True).stderr
        peaks.append(int(err.strip().splitlines()[-1]) * 1024)
        out.unlink()
    lo, hi = sizes[0], sizes[-1]
    per_file = (peaks[-1] - peaks[0]) / (hi - lo)
    at_1m = peaks[-1] + per_file * (1_000_000 - hi)
    k = lambda n: f"{n // 1000}k" if n < 1_000_000 else f"{n / 1_000_000:g}M"
    extrapolated = "" if hi == 1_000_000 else f"; 1M extrapolated: {mib(at_1m)}"
    results.add("S6", f"`clip index` peak RSS, one layer of {k(hi)} small files (vs {k(lo)}); "
                f"{per_file:.0f} B per file{extrapolated}", mib(peaks[-1]), f"{mib(peaks[0])} ({k(lo)})",
                peaks[-1] / peaks[0], "≤ 128 MiB at 1M files", at_1m <= 128 << 20, None)


def scale_scenarios(tmp, results, runs=3):
    sizes = [10_000, 100_000] + ([1_000_000] if os.environ.get("CLIP_BENCH_SCALE_1M") else [])
    got = [measure(tmp, n, runs) for n in sizes]
    lo, hi = got[0], got[-1]
    k = lambda n: f"{n // 1000}k" if n < 1_000_000 else f"{n // 1_000_000}M"
    label = f"{k(hi['n'])} files (vs {k(lo['n'])})"

    for name, what in (("cold", "empty cache"), ("warm", "fresh mount over the full cache")):
        growth = [g[f"rss_{name}"][1] - g[f"rss_{name}"][0] for g in got]
        results.add("S2", f"mount RSS after opening every file once − RSS after mount ({what}), {label}",
                    mib(growth[-1]), mib(growth[0]) + f" ({k(lo['n'])})", max(growth[-1], 1) / max(growth[0], 1),
                    "≤ 16 MiB", growth[-1] <= 16 << 20, None)

    ms = lambda v: f"{v * 1000:.2f} ms"
    drift = hi["tenths"][-1] / hi["tenths"][0]
    r = hi["per_open"] / lo["per_open"]
    results.add("S3", f"time per open+read+close, {label}; last ÷ first tenth of the files: {drift:.2f}",
                ms(hi["per_open"]), ms(lo["per_open"]) + f" ({k(lo['n'])})", r, "≤ 1.2 (flat)", r <= 1.2, None)

    for g in got:
        c, l = g["find"]
        r = statistics.median(c) / statistics.median(l)
        results.add("S4", f"`find MNT | wc -l`, fresh mount, {k(g['n'])} files", spread(c, secs),
                    spread(l, secs) + " local disk", r, "≤ 1.2", r <= 1.2, None)

    for g in got:
        cache, data = g["cache"]
        r = cache / data
        results.add("S5", f"disk cache after reading every file ÷ their bytes, {k(g['n'])} files", mib(cache),
                    mib(data) + " data", r, "≤ 3", r <= 3, None)
