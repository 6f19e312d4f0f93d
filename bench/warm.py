"""P5b, a warm remount (issue #12): a fresh `clip mount` over a disk cache that already holds everything the P3
command reads, plus the command, against the same command on the image unpacked on local disk; the page
cache is dropped before each, so both read from disk and the mount pays for its own start. Measured three
ways: served by the node's mount daemon (`clip daemon`, started before the runs) and asked for by its small
client `clip-mount` (the goal row) or by `clip mount --daemon SOCKET`, and as a mount process of its own
(measured first, with no daemon running whose pages would stay in memory)."""

import shutil
import statistics
import subprocess
import time

import bench
from bench import chroot_cmd, drop_caches, run, secs, spread, timed


def p5b_warm_remount(tmp, proxy, debian_layout, results, runs):
    index = tmp / "p5b.clip"
    run([bench.CLIP, "-q", "index", f"{proxy.addr}/debian:bookworm", "-o", index])
    cache = tmp / "p5b-cache"
    # Fill the cache: the first run reads through the spans, the second makes the passthrough copies.
    m = bench.Mount(index, tmp / "p5b-fill", cache)
    run(chroot_cmd(m.mnt))
    run(chroot_cmd(m.mnt))
    m.stop()
    unpacked = tmp / "p5b-unpacked"
    run(["umoci", "unpack", "--image", f"{debian_layout}:bookworm", unpacked], stdout=subprocess.DEVNULL)

    # A run takes a tenth of a second, and one disk hiccup moves it by a fifth: three times the runs of the
    # other rows; the ways measured together alternate, each paired with a run on local disk right after it.
    def remounts(*ways):
        times = [([], [], []) for _ in ways]
        for r in range(3 * runs):
            for (extra, client), (clip_t, up_t, base_t) in zip(ways, times):
                drop_caches()
                t = time.perf_counter()
                m = bench.Mount(index, tmp / f"p5b-mnt-{r}", cache, extra=extra, client=client)
                up_t.append(time.perf_counter() - t)
                run(chroot_cmd(m.mnt))
                clip_t.append(time.perf_counter() - t)
                m.stop()
                drop_caches()
                base_t.append(timed(lambda: run(chroot_cmd(unpacked / "rootfs"))))
        return times

    [own] = remounts(([], None))
    socket = tmp / "p5b-daemon.sock"
    daemon = subprocess.Popen([bench.CLIP, "daemon", "--socket", socket], stderr=subprocess.DEVNULL)
    try:
        while not socket.exists():
            if daemon.poll() is not None:
                raise SystemExit("bench: clip daemon did not start")
            time.sleep(0.01)
        small, served = remounts((["--daemon", socket], [bench.CLIP_MOUNT, "-q"]), (["--daemon", socket], None))
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    shutil.rmtree(unpacked)
    rows = [(small, "through the mount daemon, asked by clip-mount", "≤ 1.3"),
            (served, "through the mount daemon, asked by clip mount --daemon", None),
            (own, "a mount process of its own", None)]
    for (clip_t, up_t, base_t), how, goal in rows:
        r = statistics.median(clip_t) / statistics.median(base_t)
        # How long the mount took to come up, of the whole (the command is the rest).
        up = statistics.median(up_t) * 1000
        results.add("P5b", f"warm remount, {how}: fresh mount over a full disk cache + the P3 command, page cache"
                    f" dropped (the mount up in {up:.0f} ms)", spread(clip_t, secs),
                    spread(base_t, secs) + " local disk", r, goal or "—", r <= 1.3 if goal else None, None)
