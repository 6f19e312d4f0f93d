#!/usr/bin/env python3
"""clip benchmarks: clip against a full pull, through a shaped link, side by side in one run.

Builds the images (Debian bookworm + python3 from mmdebstrap, a "many files" image with 100k small
files and one 500 MB file, and one-layer gzip images of 1 and 4 GiB for the indexer's memory), serves them from a local docker-registry behind clip-proxy (a bandwidth cap
plus added round-trip latency, counting the bytes it sends), runs each scenario several times and prints a
Markdown table of medians (with min-max), also written to bench/results.md. Run it through ./dev/bench.
"""

import argparse
import hashlib
import json
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import memory
import snapshotter
import startup

ROOT = Path(__file__).resolve().parent.parent
# CLIP_BENCH_BIN: another directory holding release `clip` and `clip-proxy` (e.g. to measure a "before");
# CLIP_BENCH_PROXY: a clip-proxy built elsewhere (e.g. another checkout's).
BIN = Path(os.environ.get("CLIP_BENCH_BIN", ROOT / "target/release"))
CLIP = BIN / "clip"
# The mount daemon's small client.
CLIP_MOUNT = BIN / "clip-mount"
PROXY = Path(os.environ.get("CLIP_BENCH_PROXY", BIN / "clip-proxy"))
WORK = ROOT / "bench/work"
# The Debian, many-files and big-layer images (built there when missing): CLIP_BENCH_IMAGES may point at
# another checkout's bench/work/images to reuse them.
IMAGES = Path(os.environ.get("CLIP_BENCH_IMAGES", WORK / "images"))
PROFILES = {"100mbit": (100, 20), "1gbit": (1000, 2)}
COMMAND = ["python3", "-c", "import json, sqlite3"]
ONE_FILE = "etc/debian_version"


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    kw.setdefault("check", True)
    return subprocess.run([str(c) for c in cmd], **kw)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if subprocess.run(["curl", "-fs", "-o", "/dev/null", url]).returncode == 0:
            return
        time.sleep(0.1)
    raise SystemExit(f"bench: {url} did not answer within {timeout}s")


def drop_caches():
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


class Registry:
    def __init__(self, root):
        self.port = free_port()
        self.dir = root / f"registry-{self.port}"
        self.dir.mkdir(parents=True)
        cfg = self.dir / "config.yml"
        cfg.write_text(
            f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {self.dir}/data\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\nlog:\n  level: error\n"
        )
        self.proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "log", "w"))
        wait_http(f"http://127.0.0.1:{self.port}/v2/")
        self.addr = f"127.0.0.1:{self.port}"

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class Proxy:
    """clip-proxy in front of the registry: shaped link, byte counters in a JSON stats file."""

    def __init__(self, upstream, mbit, rtt_ms, root):
        self.port = free_port()
        self.stats_file = root / f"proxy-{self.port}.json"
        self.proc = subprocess.Popen([str(PROXY), "--listen", f"127.0.0.1:{self.port}", "--upstream", upstream,
                                      "--rate-mbit", str(mbit), "--rtt-ms", str(rtt_ms),
                                      "--stats-file", str(self.stats_file)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(f"http://127.0.0.1:{self.port}/v2/")
        self.addr = f"127.0.0.1:{self.port}"

    def blob_bytes(self):
        try:
            return json.loads(self.stats_file.read_text())["blob_bytes"]
        except (FileNotFoundError, ValueError, KeyError):
            return 0

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait()


class Mount:
    """`clip mount` in the background; ready once the mountpoint shows up in /proc/self/mountinfo."""

    def __init__(self, index, mnt, cache, metrics=None, extra=(), client=None):
        mnt.mkdir(parents=True, exist_ok=True)
        client = client or [CLIP, "-q", "mount"]
        cmd = [str(a) for a in client] + [str(index), str(mnt), "--cache-dir", str(cache)] + [str(a) for a in extra]
        if metrics:
            cmd += ["--metrics", metrics]
        self.mnt, self.metrics = mnt, metrics
        # The mount table is watched (the kernel wakes a poll of /proc/self/mountinfo at each change of it),
        # so a mount counts as up when it is, not at the next tick of a timer.
        with open("/proc/self/mountinfo") as table:
            changes = select.poll()
            changes.register(table, select.POLLPRI | select.POLLERR)
            self.proc = subprocess.Popen(cmd)
            deadline = time.time() + 30
            while not is_mounted(mnt):
                if self.proc.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"bench: clip mount of {index} did not come up")
                changes.poll(100)

    def metric(self, name):
        out = subprocess.run(["curl", "-fs", f"http://{self.metrics}/metrics"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def peak_rss(self):
        return proc_status_bytes(self.proc.pid, "VmHWM")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


def proc_status_bytes(pid, field):
    """A size from /proc/PID/status (`VmRSS`, `VmHWM`, …) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def is_mounted(path):
    p = str(Path(path).resolve())
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ")[4] == p for line in f)


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def chroot_cmd(root):
    return ["chroot", str(root)] + COMMAND


def warm(root, repeat=10):
    """Seconds per run of the command in `root` with warm caches (one warm-up, then the mean of `repeat`)."""
    run(chroot_cmd(root))
    return timed(lambda: [run(chroot_cmd(root)) for _ in range(repeat)]) / repeat


# ---------------------------------------------------------------- images


def build_images(with_many=True):
    """The Debian layout, and the many-files one when `with_many` (else None)."""
    debian = IMAGES / "debian"
    run([ROOT / "dev/debian-image", debian])
    if not with_many:
        return debian, None
    many = IMAGES / "many"
    if not (many / "index.json").exists() or '"v1"' not in (many / "index.json").read_text():
        log("building the many-files image (100k small files + one 500 MB file)")
        tmp = Path(tempfile.mkdtemp(dir=WORK))
        layout = tmp / "layout"
        run(["umoci", "init", "--layout", layout])
        run(["umoci", "new", "--image", f"{layout}:v1"])
        run(["umoci", "unpack", "--image", f"{layout}:v1", tmp / "bundle"], stdout=subprocess.DEVNULL)
        root = tmp / "bundle/rootfs"
        for d in range(100):
            sub = root / "files" / f"d{d:03}"
            sub.mkdir(parents=True)
            for i in range(1000):
                (sub / f"f{i:04}.txt").write_bytes(f"file {d}/{i}\n".encode() * (1 + (i % 7)))
        run(["umoci", "repack", "--refresh-bundle", "--image", f"{layout}:v1", tmp / "bundle"])
        (root / "big").mkdir()
        with open(root / "big/file.bin", "wb") as f:
            for _ in range(500):
                f.write(os.urandom(1 << 20))
        run(["umoci", "repack", "--refresh-bundle", "--image", f"{layout}:v1", tmp / "bundle"])
        shutil.rmtree(many, ignore_errors=True)
        many.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(layout), str(many))
        shutil.rmtree(tmp)
    return debian, many


def big_layer_image(gib):
    """An OCI layout (tag `big`) of one gzip -1 layer: four files of base64 text, `gib` GiB of tar in all."""
    layout = IMAGES / f"big-{gib}g"
    if (layout / "index.json").exists():
        return layout
    log(f"building a one-layer image of {gib} GiB (base64 text, gzip -1)")
    tmp = Path(tempfile.mkdtemp(dir=WORK))
    (tmp / "src").mkdir()
    for i in range(4):
        # base64 turns 3 bytes into 4 (plus a newline every 76): the files add up to about `gib` GiB.
        run(["bash", "-c", f"head -c {gib * 3 * (1 << 28) * 76 // 77 // 4} /dev/urandom | base64 > {tmp}/src/f{i}.txt"])
    run(["bash", "-c", f"tar -C {tmp}/src -cf - . | tee >(sha256sum > {tmp}/diff) | gzip -1 > {tmp}/layer"])
    shutil.rmtree(tmp / "src")
    return one_layer_layout(tmp, layout, "big", tmp / "layer", "sha256:" + (tmp / "diff").read_text().split()[0])


def one_layer_layout(tmp, layout, tag, layer_file, diff_id):
    """Makes `layout` an OCI layout (tag `tag`) of one gzip layer, the file `layer_file` whose uncompressed tar
    has the digest `diff_id`; `tmp` is a scratch directory, removed."""
    blobs = tmp / "layout/blobs/sha256"
    blobs.mkdir(parents=True)

    def put(path=None, data=None):
        if data is not None:
            path = tmp / "blob"
            path.write_bytes(data)
        digest = run(["sha256sum", path], capture_output=True, text=True).stdout.split()[0]
        size = path.stat().st_size
        path.rename(blobs / digest)
        return {"digest": f"sha256:{digest}", "size": size}

    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **put(layer_file)}
    config = {"architecture": "amd64", "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
    config = {"mediaType": "application/vnd.oci.image.config.v1+json", **put(data=json.dumps(config).encode())}
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST, "config": config, "layers": [layer]}
    return finish_layout(tmp, layout, tag, put(data=json.dumps(manifest).encode()))


MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def finish_layout(tmp, layout, tag, manifest):
    """Tags the manifest (a descriptor of a blob already in `tmp/layout`) and moves the layout to `layout`."""
    desc = {"mediaType": MANIFEST, **manifest, "annotations": {"org.opencontainers.image.ref.name": tag}}
    (tmp / "layout/index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [desc]}))
    (tmp / "layout/oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    layout.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(tmp / "layout"), str(layout))
    shutil.rmtree(tmp)
    return layout


def lower_image(debian):
    """An OCI layout (tag `lower`) of the Debian image's two lower layers (minbase, + python3) alone, the same
    blobs: indexed first, it leaves the parts of those layers for P1b."""
    layout = IMAGES / "debian-lower"
    if (layout / "index.json").exists():
        return layout
    tmp = Path(tempfile.mkdtemp(dir=WORK))
    blobs = tmp / "layout/blobs/sha256"
    blobs.mkdir(parents=True)
    manifest = read_manifest(debian, "bookworm")
    config = json.loads((debian / "blobs" / manifest["config"]["digest"].replace(":", "/")).read_text())

    def put(data):
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    for layer in manifest["layers"][:2]:
        os.link(debian / "blobs" / layer["digest"].replace(":", "/"), blobs / layer["digest"].split(":")[1])
    config["rootfs"]["diff_ids"] = config["rootfs"]["diff_ids"][:2]
    config.pop("history", None)
    manifest["config"] = {**manifest["config"], **put(json.dumps(config).encode())}
    manifest["layers"] = manifest["layers"][:2]
    manifest["mediaType"] = MANIFEST
    return finish_layout(tmp, layout, "lower", put(json.dumps(manifest).encode()))


def push(layout, tag, registry, repo):
    run(["skopeo", "copy", "-q", "--preserve-digests", "--dest-tls-verify=false", f"oci:{layout}:{tag}",
         f"docker://{registry.addr}/{repo}"])


def read_manifest(layout, tag):
    index = json.loads((layout / "index.json").read_text())
    m = next(m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
    return json.loads((layout / "blobs" / m["digest"].replace(":", "/")).read_text())


def layer_digests(layout, tag):
    return [(l["digest"], l["size"]) for l in read_manifest(layout, tag)["layers"]]


# ---------------------------------------------------------------- scenarios


class Results:
    def __init__(self):
        self.rows = []

    def add(self, pid, figure, clip, base, ratio, goal, met, unit_fmt):
        self.rows.append((pid, figure, clip, base, ratio, goal, met, unit_fmt))


def spread(values, fmt):
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}–{fmt(max(values))})"


def secs(v):
    return f"{v:.2f} s"


def mib(v):
    return f"{v / (1 << 20):.1f} MiB"


def p1_index(tmp, proxy, repo, layers, runs, span_args):
    clip_t, base_t = [], []
    for r in range(runs):
        out = tmp / f"p1-{r}.clip"
        # A fresh part directory a run: every layer is read, as on a machine that never indexed them.
        parts = ["--parts", tmp / f"p1-{proxy.port}-parts-{r}"]
        clip_t.append(timed(lambda: run([CLIP, "-q", "index", f"{proxy.addr}/{repo}", "-o", out] + parts + span_args)))
        pipes = " & ".join(
            f"curl -fs http://{proxy.addr}/v2/{repo.split(':')[0]}/blobs/{d} | gzip -d > /dev/null" for d, _ in layers
        )
        base_t.append(timed(lambda: run(["bash", "-c", f"{pipes} & wait"])))
    return clip_t, base_t, tmp / "p1-0.clip"


def p1b_reuse(tmp, proxy, runs, span_args):
    """P1b: `clip index` of the Debian image after its two lower layers were indexed (as `debian:lower`, into
    the same part directory), vs from scratch (an empty part directory). Returns (reused, scratch) seconds."""
    reused_t, scratch_t = [], []
    for r in range(runs):
        parts = tmp / f"p1b-{proxy.port}-parts-{r}"
        index = [CLIP, "-q", "index", "-o", tmp / f"p1b-{r}.clip"] + span_args
        run(index + [f"{proxy.addr}/debian:lower", "--parts", parts])
        reused_t.append(timed(lambda: run(index + [f"{proxy.addr}/debian:bookworm", "--parts", parts])))
        scratch = ["--parts", tmp / f"p1b-{proxy.port}-scratch-{r}"]
        scratch_t.append(timed(lambda: run(index + [f"{proxy.addr}/debian:bookworm"] + scratch)))
    return reused_t, scratch_t


def p3_cold_start(tmp, proxy, repo, index, runs, name):
    clip_t, base_t, registry_bytes, read_bytes, warm_clip, warm_base = [], [], [], [], [], []
    cold_clip, cold_base, peak_rss = [], [], []
    for r in range(runs):
        cache, mnt = tmp / f"p3-{name}-cache-{r}", tmp / f"p3-{name}-mnt-{r}"
        metrics = f"127.0.0.1:{free_port()}"
        drop_caches()
        before = proxy.blob_bytes()
        t = time.perf_counter()
        m = Mount(index, mnt, cache, metrics)
        cold_clip.append(timed(lambda: (mnt / ONE_FILE).read_bytes()))
        run(chroot_cmd(mnt))
        clip_t.append(time.perf_counter() - t)
        peak_rss.append(m.peak_rss())
        registry_bytes.append(proxy.blob_bytes() - before)
        read_bytes.append(m.metric("clip_fuse_read_bytes_total"))
        warm_clip.append(warm(mnt))
        m.stop()

        oci, bundle = tmp / f"p3-oci-{r}", tmp / f"p3-bundle-{r}"
        drop_caches()
        t = time.perf_counter()
        run(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{proxy.addr}/{repo}", f"oci:{oci}:latest"])
        run(["umoci", "unpack", "--image", f"{oci}:latest", bundle], stdout=subprocess.DEVNULL)
        run(chroot_cmd(bundle / "rootfs"))
        base_t.append(time.perf_counter() - t)
        drop_caches()
        cold_base.append(timed(lambda: (bundle / "rootfs" / ONE_FILE).read_bytes()))
        warm_base.append(warm(bundle / "rootfs"))
        shutil.rmtree(oci)
        shutil.rmtree(bundle)
    return clip_t, base_t, registry_bytes, read_bytes, warm_clip, warm_base, cold_clip, cold_base, peak_rss


def p11_profile(tmp, index, runs, name):
    """P11: record a prefetch profile once while running the P3 command, then cold runs (fresh cache) of
    mount + command with `--profile` and without. Returns (with, without) seconds."""
    profile = tmp / f"p11-{name}-profile.json"
    m = Mount(index, tmp / f"p11-{name}-rec", tmp / f"p11-{name}-rec-cache", extra=["--record-profile", profile])
    run(chroot_cmd(m.mnt))
    m.stop()
    with_t, without_t = [], []
    for r in range(runs):
        for times, extra in ((without_t, []), (with_t, ["--profile", profile])):
            tag = "with" if extra else "without"
            cache, mnt = tmp / f"p11-{name}-{tag}-cache-{r}", tmp / f"p11-{name}-{tag}-mnt-{r}"
            drop_caches()
            t = time.perf_counter()
            m = Mount(index, mnt, cache, extra=extra)
            run(chroot_cmd(mnt))
            times.append(time.perf_counter() - t)
            m.stop()
    return with_t, without_t


def local_scenarios(tmp, proxy, many_layout, results):
    index = tmp / "many.clip"
    run([CLIP, "-q", "index", f"{proxy.addr}/many:v1", "-o", index])
    unpacked = tmp / "many-unpacked"
    run(["umoci", "unpack", "--image", f"{many_layout}:v1", unpacked], stdout=subprocess.DEVNULL)
    local_root = unpacked / "rootfs"

    # P6: sequential read of a cached 500 MB file (passthrough once cached) vs the same file on local disk.
    metrics = f"127.0.0.1:{free_port()}"
    m = Mount(index, tmp / "many-mnt", tmp / "many-cache", metrics)
    big = m.mnt / "big/file.bin"
    run(["cat", big], stdout=subprocess.DEVNULL)  # fills the cache
    run(["cat", big], stdout=subprocess.DEVNULL)  # the cached copy is complete: the next open passes through
    size = big.stat().st_size
    clip_tp, base_tp = [], []
    for _ in range(3):
        drop_caches()
        clip_tp.append(size / timed(lambda: run(["cat", big], stdout=subprocess.DEVNULL)))
        drop_caches()
        base_tp.append(size / timed(lambda: run(["cat", local_root / "big/file.bin"], stdout=subprocess.DEVNULL)))
    ratio = statistics.median(clip_tp) / statistics.median(base_tp)
    results.add("P6", "sequential read, cached 500 MB file (MB/s)", spread([v / 1e6 for v in clip_tp], lambda v: f"{v:.0f}"),
                spread([v / 1e6 for v in base_tp], lambda v: f"{v:.0f}"), ratio, "≥ 0.9", ratio >= 0.9, None)
    m.stop()

    # P7 + P8: find + stat of every path on a fresh mount (cold kernel caches) vs the unpacked rootfs.
    clip_t, base_t, rss = [], [], []
    for r in range(3):
        metrics = f"127.0.0.1:{free_port()}"
        m = Mount(index, tmp / f"many-mnt-{r}", tmp / "many-cache", metrics)
        drop_caches()
        clip_t.append(timed(lambda: run(["find", m.mnt, "-xdev", "-printf", "%s %m %u %T@\n"], stdout=subprocess.DEVNULL)))
        rss.append(m.peak_rss())
        m.stop()
        drop_caches()
        base_t.append(timed(lambda: run(["find", local_root, "-xdev", "-printf", "%s %m %u %T@\n"], stdout=subprocess.DEVNULL)))
    ratio = statistics.median(clip_t) / statistics.median(base_t)
    results.add("P7", "find + stat of every path, 100k files", spread(clip_t, secs), spread(base_t, secs), ratio, "≤ 1.5",
                ratio <= 1.5, None)
    peak = max(rss)
    results.add("P8", "mount daemon peak RSS, 100k-file image", mib(peak), "—", None, "≤ 64 MiB", peak <= 64 << 20, None)
    shutil.rmtree(unpacked)


def index_memory(tmp, results, sizes=(1, 4)):
    """S1: peak RSS of `clip index` of one big gzip layer (from a local OCI layout) at two sizes; it must not
    grow with the layer (checkpoint windows are stored compressed, spilled to a temporary file)."""
    peaks = []
    for gib in sizes:
        layout = big_layer_image(gib)
        out = tmp / f"big-{gib}g.clip"
        err = run(["/usr/bin/time", "-f", "%M", CLIP, "-q", "index", f"oci:{layout}:big", "-o", out],
                  capture_output=True, text=True).stderr
        peaks.append(int(err.strip().splitlines()[-1]) * 1024)
        out.unlink()
    growth = peaks[-1] / peaks[0]
    results.add("S1", f"`clip index` peak RSS, one gzip layer of {sizes[-1]} GiB (vs {sizes[0]} GiB)", mib(peaks[-1]),
                f"{mib(peaks[0])} ({sizes[0]} GiB)", growth, "≤ 64 MiB, growth ≤ 1.2",
                peaks[-1] <= 64 << 20 and growth <= 1.2, None)


def archive_throughput(tmp, debian_layout, results):
    """P9: `clip archive --compress` of the unpacked Debian rootfs vs `tar -cf - | zstd` of the same tree."""
    unpacked = tmp / "debian-unpacked"
    run(["umoci", "unpack", "--image", f"{debian_layout}:bookworm", unpacked], stdout=subprocess.DEVNULL)
    rootfs = unpacked / "rootfs"
    size = int(run(["du", "-sb", rootfs], capture_output=True, text=True).stdout.split()[0])
    clip_t, base_t = [], []
    for r in range(3):
        drop_caches()
        out = tmp / f"p9-{r}.clip"
        clip_t.append(timed(lambda: run([CLIP, "-q", "archive", rootfs, "-o", out, "--compress"])))
        out.unlink()
        drop_caches()
        base_t.append(timed(lambda: run(["bash", "-c", f"tar -cf - -C {rootfs} . | zstd -q > /dev/null"])))
    clip_mbs = [size / t / 1e6 for t in clip_t]
    base_mbs = [size / t / 1e6 for t in base_t]
    ratio = statistics.median(clip_mbs) / statistics.median(base_mbs)
    results.add("P9", f"`clip archive --compress` throughput, Debian rootfs ({size / 1e6:.0f} MB) (MB/s)",
                spread(clip_mbs, lambda v: f"{v:.0f}"), spread(base_mbs, lambda v: f"{v:.0f}") + " `tar | zstd`",
                ratio, "—", None, None)
    shutil.rmtree(unpacked)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs per scenario (median reported)")
    ap.add_argument("--profiles", default="100mbit,1gbit", help="link profiles: " + ", ".join(PROFILES))
    ap.add_argument("--span-mib", type=int, default=None, help="pass --span-mib to clip index (default: clip's)")
    ap.add_argument("--only", default=None, help="run just these scenarios, e.g. P1b (default: all)")
    args = ap.parse_args()
    wanted = lambda *pids: args.only is None or any(p in args.only.split(",") for p in pids)
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (FUSE mounts, chroot, drop_caches)")
    WORK.mkdir(parents=True, exist_ok=True)
    debian, many = build_images(wanted("P6", "P7", "P8"))
    lower = lower_image(debian)
    tmp = Path(tempfile.mkdtemp(dir=WORK, prefix="run-"))
    # Layer parts go to this run's directory, never the machine's (each scenario that indexes says where).
    os.environ["CLIP_PARTS_DIR"] = str(tmp / "parts")
    registry = Registry(tmp)
    results = Results()
    started = time.time()
    try:
        log("pushing images to the local registry")
        push(debian, "bookworm", registry, "debian:bookworm")
        push(lower, "lower", registry, "debian:lower")
        if many:
            push(many, "v1", registry, "many:v1")
        layers = layer_digests(debian, "bookworm")
        image_size = sum(s for _, s in layers)
        for name in args.profiles.split(","):
            mbit, rtt = PROFILES[name]
            log(f"link {name}: {mbit} Mbit/s, {rtt} ms RTT")
            proxy = Proxy(registry.addr, mbit, rtt, tmp)
            try:
                label = f"{mbit} Mbit/s, {rtt} ms"
                span_args = ["--span-mib", str(args.span_mib)] if args.span_mib else []
                if wanted("P1b"):
                    reused, scratch = p1b_reuse(tmp, proxy, args.runs, span_args)
                    share = layers[2][1] / image_size
                    r = statistics.median(reused) / statistics.median(scratch)
                    results.add("P1b", f"`clip index` wall time, lower layers indexed before ({label})",
                                spread(reused, secs), spread(scratch, secs) + " from scratch", r,
                                f"≤ {share + 0.05:.2f} (new layer: {100 * share:.0f} % of the bytes)",
                                r <= share + 0.05, None)
                if wanted("P12") and mbit == 100:
                    snapshotter.p12_containerd(tmp, proxy, registry, args.runs, results, label)
                if not wanted("P1", "P2", "P3", "P4", "P5", "P8b", "P10", "P11", "P3p", "P3s", "P3x"):
                    continue
                clip_t, base_t, index = p1_index(tmp, proxy, "debian:bookworm", layers, args.runs, span_args)
                r = statistics.median(clip_t) / statistics.median(base_t)
                results.add("P1", f"`clip index` wall time ({label})", spread(clip_t, secs), spread(base_t, secs), r,
                            "≤ 1.15", r <= 1.15, None)
                if name == args.profiles.split(",")[0]:
                    size = index.stat().st_size
                    info = json.loads(run([CLIP, "inspect", "--json", index], capture_output=True).stdout)
                    mounted = info["mounted_size"]
                    results.add("P2", "index size: whole `.clip` file (part a mount loads)",
                                f"{size / 1024:.0f} KiB ({mounted / 1024:.0f} KiB = {100 * mounted / image_size:.2f} %)",
                                mib(image_size), size / image_size, "≤ 0.5 %", size / image_size <= 0.005, "pct")
                c, b, reg, read, wc, wb, cc, cb, rss = p3_cold_start(tmp, proxy, "debian:bookworm", index, args.runs, name)
                r = statistics.median(c) / statistics.median(b)
                results.add("P3", f"cold start: mount + `python3 -c 'import json,sqlite3'` ({label})", spread(c, secs),
                            spread(b, secs), r, "≤ 0.10" if mbit == 100 else "—", r <= 0.10 if mbit == 100 else None, None)
                r = statistics.median(cc) / statistics.median(cb)
                results.add("P10", f"cold read of one small file (`/{ONE_FILE}`), fresh cache ({label})",
                            spread(cc, lambda v: f"{v * 1000:.0f} ms"), spread(cb, lambda v: f"{v * 1000:.1f} ms") + " local disk",
                            r, "—", None, None)
                r = statistics.median(reg) / max(statistics.median(read), 1)
                results.add("P4", f"registry bytes during P3 ({label})", spread(reg, mib), spread(read, mib) + " read", r,
                            "≤ 1.3", r <= 1.3, None)
                memory.p8b_cold_start_rss(results, rss, label)
                if mbit == 100:
                    w, wo = p11_profile(tmp, index, args.runs, name)
                    r = statistics.median(w) / statistics.median(wo)
                    results.add("P11", f"cold start with a recorded profile (`--profile`) vs without ({label})",
                                spread(w, secs), spread(wo, secs) + " without", r, "< 1.0", r < 1.0, None)
                if wanted("P3p", "P3s", "P3x"):
                    startup.rows(sys.modules[__name__], tmp, proxy, "debian:bookworm", index, b, args.runs, name, label, results)
                if name == args.profiles.split(",")[0]:
                    r = statistics.median(wc) / statistics.median(wb)
                    results.add("P5", "the same command, warm cache", spread(wc, secs), spread(wb, secs), r, "≤ 1.2",
                                r <= 1.2, None)
            finally:
                proxy.stop()
        proxy = Proxy(registry.addr, 100000, 0, tmp)
        try:
            if many:
                local_scenarios(tmp, proxy, many, results)
            if wanted("P9"):
                archive_throughput(tmp, debian, results)
            if wanted("S1"):
                index_memory(tmp, results)
            if wanted("S7"):
                memory.s7_random_reads(tmp, results)
            if wanted("P5b"):
                __import__("warm").p5b_warm_remount(tmp, proxy, debian, results, args.runs)
            if wanted("S", "S2", "S3", "S4", "S5"):
                __import__("scale").scale_scenarios(tmp, results, args.runs)
            if wanted("S", "S6"):
                __import__("scale").index_memory_by_files(tmp, results)
        finally:
            proxy.stop()
    finally:
        registry.stop()
        for line in open("/proc/self/mountinfo"):
            mp = line.split(" ")[4]
            if mp.startswith(str(tmp)):
                subprocess.run(["umount", "-l", mp])
        shutil.rmtree(tmp, ignore_errors=True)

    order = {f"P{i}": i for i in range(1, 13)} | {"P1b": 1.5, "P5b": 5.5, "P8b": 8.5} | startup.ORDER
    order |= {f"S{i}": 100 + i for i in range(1, 10)}
    rows = sorted(results.rows, key=lambda r: order[r[0]])
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    lines = [
        f"Machine: {os.cpu_count()} cores ({cpu}), {round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB, "
        f"Linux {platform.release()}; {args.runs} runs per scenario, median (min–max); took {time.time() - started:.0f} s.",
        "",
        "| id | figure | clip | baseline | ratio | goal | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for pid, figure, clip, base, ratio, goal, met, kind in rows:
        if ratio is None:
            rs = "—"
        elif kind == "pct":
            rs = f"{ratio * 100:.2f} %"
        else:
            rs = f"{ratio:.2f}"
        ok = "—" if met is None else ("yes" if met else "**no**")
        lines.append(f"| {pid} | {figure} | {clip} | {base} | {rs} | {goal} | {ok} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.only is not None:
        return  # a partial run does not replace the full table
    (ROOT / "bench/results.md").write_text(
        "# Benchmark results\n\nProduced by `./dev/bench` (bench/bench.py).\n\n" + table)


if __name__ == "__main__":
    main()
