//! `clip ls`: list a directory (or one entry) of the image from the index alone. Names are quoted so that
//! none of their bytes reach a terminal raw (see `quote`); `--json` gives them exactly.

mod quote;

use std::io::{IsTerminal, Write};

use anyhow::{bail, Context};
use clip_client::{load_archive, OpenOptions};
use clip_format::{Archive, NodeKind, NodeView};
use serde_json::{json, Value};

use crate::args::LsArgs;
use quote::{quote, Quoting};

pub async fn run(a: LsArgs) -> anyhow::Result<()> {
    let opts = OpenOptions { s3: a.s3.options(), ..OpenOptions::default() };
    let loaded = load_archive(&a.file, &opts).await.with_context(|| format!("opening {}", a.file))?;
    let archive = &*loaded.archive;
    let Some(ino) = archive.resolve(a.path.as_bytes())? else {
        bail!("{}: no such file or directory in {}", a.path, a.file);
    };
    let node = archive.node(ino)?;
    let mut entries = Vec::new();
    if node.kind() == NodeKind::Dir {
        for child in archive.children(&node) {
            let (name, ino) = child?;
            entries.push((name, archive.node(ino)?));
        }
    } else {
        entries.push((a.path.as_bytes(), node));
    }
    let mut out = crate::output::stdout();
    if a.json {
        let list = entries.iter().map(|(name, n)| entry_json(archive, name, n)).collect::<Result<Vec<_>, _>>()?;
        writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
    } else {
        let quoting = if std::io::stdout().is_terminal() { Quoting::Shell } else { Quoting::Escape };
        for (name, n) in &entries {
            print_entry(&mut out, archive, name, n, a.long, quoting)?;
        }
    }
    out.flush()?;
    Ok(())
}

fn print_entry(
    out: &mut impl Write,
    archive: &Archive,
    name: &[u8],
    n: &NodeView,
    long: bool,
    quoting: Quoting,
) -> anyhow::Result<()> {
    if long {
        let size = match n.kind() {
            NodeKind::CharDevice | NodeKind::BlockDevice => format!("{}, {}", n.rdev().0, n.rdev().1),
            _ => n.size.to_string(),
        };
        write!(
            out,
            "{} {:>3} {:>6} {:>6} {:>12} {}.{:09} ",
            mode_string(n.mode),
            n.nlink,
            n.uid,
            n.gid,
            size,
            n.mtime.sec,
            n.mtime.nsec
        )?;
    }
    write!(out, "{}", quote(name, quoting))?;
    if long && n.kind() == NodeKind::Symlink {
        write!(out, " -> {}", quote(archive.symlink_target(n)?, quoting))?;
    }
    writeln!(out)?;
    Ok(())
}

/// One entry with every attribute; names (and symlink targets) exact: a string when UTF-8, else bytes.
fn entry_json(archive: &Archive, name: &[u8], n: &NodeView) -> anyhow::Result<Value> {
    let kind = match n.kind() {
        NodeKind::File => "file",
        NodeKind::Dir => "dir",
        NodeKind::Symlink => "symlink",
        NodeKind::CharDevice => "char_device",
        NodeKind::BlockDevice => "block_device",
        NodeKind::Fifo => "fifo",
        NodeKind::Socket => "socket",
    };
    let mut v = json!({
        "type": kind,
        "mode": n.mode & 0o7777,
        "nlink": n.nlink,
        "uid": n.uid,
        "gid": n.gid,
        "size": n.size,
        "mtime": {"sec": n.mtime.sec, "nsec": n.mtime.nsec},
    });
    exact(&mut v, "name", name);
    match n.kind() {
        NodeKind::Symlink => exact(&mut v, "target", archive.symlink_target(n)?),
        NodeKind::CharDevice | NodeKind::BlockDevice => v["rdev"] = json!([n.rdev().0, n.rdev().1]),
        _ => {}
    }
    Ok(v)
}

/// Sets `v[key]` to `bytes` as a string, or `v[key_bytes]` to the bytes when they are not UTF-8.
fn exact(v: &mut Value, key: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => v[key] = json!(s),
        Err(_) => v[format!("{key}_bytes")] = json!(bytes),
    }
}

/// `ls -l` style mode: type letter and rwx triplets with s/t bits.
fn mode_string(mode: u32) -> String {
    let t = match NodeKind::from_mode(mode) {
        Some(NodeKind::Dir) => 'd',
        Some(NodeKind::Symlink) => 'l',
        Some(NodeKind::CharDevice) => 'c',
        Some(NodeKind::BlockDevice) => 'b',
        Some(NodeKind::Fifo) => 'p',
        Some(NodeKind::Socket) => 's',
        _ => '-',
    };
    let mut s = String::from(t);
    for (shift, special, lower, upper) in [(6, 0o4000, 's', 'S'), (3, 0o2000, 's', 'S'), (0, 0o1000, 't', 'T')] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, mode & special != 0) {
            (true, true) => lower,
            (false, true) => upper,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}
