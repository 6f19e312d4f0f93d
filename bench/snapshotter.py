"""P12: containerd with clip's snapshotter against containerd with its own overlayfs snapshotter.

clip: `ctr-remote images rpull --snapshotter clip` + `ctr run --snapshotter clip` of the P3 command, the
snapshotter on a fresh root and cache taking the index and layer parts published with the image (`clip index
--push`, done once before the runs, untimed) and serving the layers lazily. Baseline: `ctr pull` + `ctr run`
with the overlayfs snapshotter (every layer downloaded and unpacked). Each side gets a fresh containerd with a
private config (written as clip_testkit::Containerd writes it) and cold page caches; both go through the
same shaped link.
"""

import os
import shutil
import signal
import socket
import statistics
import subprocess
import time

import bench

NAME = "clip"


def config_toml(d, snapshotter_socket):
    return (
        f'version = 2\nroot = "{d}/root"\nstate = "{d}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{d}/containerd.sock"\n'
        f'[ttrpc]\n  address = "{d}/containerd.sock.ttrpc"\n'
        f'[debug]\n  address = "{d}/debug.sock"\n  level = "info"\n'
        '[metrics]\n  address = ""\n'
        f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{d}/opt"\n'
        f'[proxy_plugins.{NAME}]\n  type = "snapshot"\n  address = "{snapshotter_socket}"\n'
    )


def wait_for(what, done, timeout=60):
    deadline = time.time() + timeout
    while not done():
        if time.time() > deadline:
            raise SystemExit(f"bench: {what} not within {timeout}s")
        time.sleep(0.02)


def unmount_under(d):
    with open("/proc/self/mountinfo") as f:
        points = [line.split(" ")[4] for line in f if line.split(" ")[4].startswith(str(d))]
    for p in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", p])


class Containerd:
    """A containerd with a private root, state and socket under `d`, in a namespace of its own."""

    def __init__(self, d, snapshotter_socket, n):
        d.mkdir(parents=True)
        self.dir = d
        (d / "config.toml").write_text(config_toml(d, snapshotter_socket))
        self.proc = subprocess.Popen(["containerd", "--config", d / "config.toml"], stdout=subprocess.DEVNULL,
                                     stderr=open(d / "containerd.log", "w"))
        self.ns = f"clip-bench-{os.getpid()}-{n}"
        wait_for("containerd answering", lambda: subprocess.run(
            self.args("ctr", "version"), capture_output=True).returncode == 0)

    def args(self, program, *args):
        return [program, "--address", self.dir / "containerd.sock", "--namespace", self.ns] + list(args)

    def ctr(self, *args, program="ctr"):
        bench.run(self.args(program, *args), stdout=subprocess.DEVNULL)

    def stop(self):
        tasks = subprocess.run(self.args("ctr", "tasks", "ls", "-q"), capture_output=True, text=True).stdout
        for task in tasks.split():
            subprocess.run(self.args("ctr", "tasks", "kill", "-s", "SIGKILL", task), capture_output=True)
            subprocess.run(self.args("ctr", "tasks", "delete", "-f", task), capture_output=True)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        unmount_under(self.dir)
        shutil.rmtree(f"/run/containerd/runc/{self.ns}", ignore_errors=True)


class Snapshotter:
    """`clip snapshotter` on a fresh root and span cache under `d`."""

    def __init__(self, d):
        d.mkdir(parents=True)
        self.dir, self.socket = d, d / "clip.sock"
        env = dict(os.environ, CLIP_CACHE_DIR=str(d / "cache"))
        self.proc = subprocess.Popen([bench.CLIP, "-q", "snapshotter", "--address", self.socket, "--root", d / "root"],
                                     env=env, stdout=subprocess.DEVNULL, stderr=open(d / "snapshotter.log", "w"))
        wait_for("clip snapshotter serving", self.serving)

    def serving(self):
        if self.proc.poll() is not None:
            raise SystemExit(f"bench: clip snapshotter exited; see {self.dir / 'snapshotter.log'}")
        with socket.socket(socket.AF_UNIX) as s:
            return s.connect_ex(str(self.socket)) == 0

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        # The layer views outlive the snapshotter by design (running containers read them).
        unmount_under(self.dir)


def p12_containerd(tmp, proxy, registry, runs, results, label):
    """Adds row P12: rpull + run with clip's snapshotter ÷ pull + run with overlayfs, medians of `runs`."""
    image = f"{proxy.addr}/debian:bookworm"
    bench.log("P12: publishing the index and layer parts with the image")
    bench.run([bench.CLIP, "-q", "index", f"{registry.addr}/debian:bookworm", "-o", tmp / "p12.clip", "--parts",
         tmp / "p12-parts", "--push"])
    clip_t, base_t = [], []
    for r in range(runs):
        d = tmp / f"p12-{proxy.port}-{r}"
        snap = Snapshotter(d / "snapshotter")
        containerd = Containerd(d / "containerd-clip", snap.socket, 2 * r)
        try:
            bench.drop_caches()
            t = time.perf_counter()
            containerd.ctr("images", "rpull", "--plain-http", "--snapshotter", NAME, image, program="ctr-remote")
            containerd.ctr("run", "--rm", "--snapshotter", NAME, image, "p12", *bench.COMMAND)
            clip_t.append(time.perf_counter() - t)
        finally:
            containerd.stop()
            snap.stop()
        containerd = Containerd(d / "containerd-overlayfs", d / "unused.sock", 2 * r + 1)
        try:
            bench.drop_caches()
            t = time.perf_counter()
            containerd.ctr("images", "pull", "--plain-http", image)
            containerd.ctr("run", "--rm", image, "p12", *bench.COMMAND)
            base_t.append(time.perf_counter() - t)
        finally:
            containerd.stop()
        shutil.rmtree(d, ignore_errors=True)
    r = statistics.median(clip_t) / statistics.median(base_t)
    results.add("P12", f"containerd: `ctr-remote images rpull` + `ctr run` of the P3 command, clip snapshotter vs "
                f"`ctr pull` + `ctr run`, overlayfs ({label})", bench.spread(clip_t, bench.secs), bench.spread(base_t, bench.secs), r,
                "≤ 0.15", r <= 0.15, None)
