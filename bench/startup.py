"""Startup scenarios of bench.py (issue #12): cold starts with the index's startup set and a recorded
profile, and a cold start of a workload nobody tuned for. Called from bench.py's main() with the bench
module itself (`b`), so this file shares its helpers (Mount, run, drop_caches, ...) without importing it."""

import statistics
import subprocess
import time

# Where these rows sort among bench.py's.
ORDER = {"P3s": 3.1, "P3p": 3.2, "P3x": 3.3}
# The untuned workload: the image's Cmd is python3, so its startup set does not cover apt-get (`perl -e`
# opens /dev/null, which a nodev mount refuses).
UNTUNED = ["apt-get", "--version"]


def cold(b, tmp, index, tag, command, extra=()):
    """Seconds of one cold start: caches dropped, a fresh span cache, mount, read one small file, run
    `command` chrooted into the mount."""
    cache, mnt = tmp / f"{tag}-cache", tmp / f"{tag}-mnt"
    b.drop_caches()
    t = time.perf_counter()
    m = b.Mount(index, mnt, cache, extra=extra)
    (mnt / b.ONE_FILE).read_bytes()
    b.run(["chroot", mnt] + command, stdout=subprocess.DEVNULL)
    took = time.perf_counter() - t
    m.stop()
    return took


def full_pull(b, tmp, proxy, repo, tag, command):
    """Seconds of a full pull (skopeo copy + umoci unpack) and `command` in the unpacked tree."""
    oci, bundle = tmp / f"{tag}-oci", tmp / f"{tag}-bundle"
    b.drop_caches()
    t = time.perf_counter()
    b.run(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{proxy.addr}/{repo}", f"oci:{oci}:latest"])
    b.run(["umoci", "unpack", "--image", f"{oci}:latest", bundle], stdout=subprocess.DEVNULL)
    b.run(["chroot", bundle / "rootfs"] + command, stdout=subprocess.DEVNULL)
    took = time.perf_counter() - t
    b.run(["rm", "-rf", oci, bundle])
    return took


def rows(b, tmp, proxy, repo, index, base_t, runs, name, label, results):
    """P3s (startup set vs none), P3p (startup set + recorded profile vs full pull; `base_t` are P3's
    full-pull seconds) and P3x (the untuned workload vs its own full pull)."""
    gate = name == "100mbit"
    with_set, without = [], []
    for r in range(runs):
        with_set.append(cold(b, tmp, index, f"p3s-{name}-on-{r}", b.COMMAND))
        without.append(cold(b, tmp, index, f"p3s-{name}-off-{r}", b.COMMAND, ["--no-startup-set"]))
    ratio = statistics.median(with_set) / statistics.median(without)
    results.add("P3s", f"cold start (P3) with the index's startup set vs `--no-startup-set` ({label})",
                b.spread(with_set, b.secs), b.spread(without, b.secs) + " without", ratio, "< 1.0", ratio < 1.0, None)

    profile = tmp / f"p3p-{name}-profile.json"
    m = b.Mount(index, tmp / f"p3p-{name}-rec", tmp / f"p3p-{name}-rec-cache", extra=["--record-profile", profile])
    (m.mnt / b.ONE_FILE).read_bytes()
    b.run(b.chroot_cmd(m.mnt))
    m.stop()
    with_profile = [cold(b, tmp, index, f"p3p-{name}-{r}", b.COMMAND, ["--profile", profile]) for r in range(runs)]
    ratio = statistics.median(with_profile) / statistics.median(base_t)
    results.add("P3p", f"cold start with the startup set + a recorded profile vs full pull ({label})",
                b.spread(with_profile, b.secs), b.spread(base_t, b.secs), ratio,
                "≤ 0.06" if gate else "—", ratio <= 0.06 if gate else None, None)

    clip_t = [cold(b, tmp, index, f"p3x-{name}-{r}", UNTUNED) for r in range(runs)]
    base_x = [full_pull(b, tmp, proxy, repo, f"p3x-{name}-base-{r}", UNTUNED) for r in range(runs)]
    ratio = statistics.median(clip_t) / statistics.median(base_x)
    results.add("P3x", f"cold start, untuned workload: mount + `{' '.join(UNTUNED)}` ({label})",
                b.spread(clip_t, b.secs), b.spread(base_x, b.secs), ratio,
                "≤ 0.10" if gate else "—", ratio <= 0.10 if gate else None, None)
