//! `clip ls`: list a directory (or one entry) of the image from the index alone; `-l` also reads the
//! image's `/etc/passwd` and `/etc/group` for owner names (see `long`). Names are quoted so that none of
//! their bytes reach a terminal raw (see `quote`); `--json` gives them exactly.

mod long;
mod quote;

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use clip_format::{Archive, NodeKind, NodeView};
use clip_image::{load_archive, open_archive, OpenOptions, Owners};
use serde_json::{json, Value};
use tracing::debug;

use crate::args::LsArgs;
use long::{Columns, Widths};
use quote::{quote, Quoting};

/// How long `ls -l` tries to read the image's account files before it shows numeric owners.
const OWNERS_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(a: LsArgs) -> anyhow::Result<()> {
    let (archive, owners) = open(&a).await?;
    let archive = &*archive;
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
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let columns: Vec<Columns> =
            entries.iter().filter(|_| a.long).map(|(_, n)| Columns::of(n, &owners, now)).collect();
        let widths = Widths::of(&columns);
        for (i, (name, n)) in entries.iter().enumerate() {
            if let Some(c) = columns.get(i) {
                write!(out, "{}", long::render(c, &widths))?;
            }
            write!(out, "{}", quote(name, quoting))?;
            if a.long && n.kind() == NodeKind::Symlink {
                write!(out, " -> {}", quote(archive.symlink_target(n)?, quoting))?;
            }
            writeln!(out)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// The archive, and for `-l` the names of the image's users and groups when its account files can be read
/// within [`OWNERS_TIMEOUT`] (else the listing shows numbers).
async fn open(a: &LsArgs) -> anyhow::Result<(Arc<Archive>, Owners)> {
    let mut opts = OpenOptions { s3: a.s3.options(), ..OpenOptions::default() };
    opts.source.plain_http = a.source.plain_http;
    // The view's file is mapped by the archive: it may go once opened.
    let (file, _view) = super::viewed(&a.file, a.layer.view(), &a.layer.parts, &opts).await?;
    if a.long {
        let read = async {
            let opened = open_archive(&file, &opts).await?;
            let owners = Owners::read(&opened).await;
            Ok::<_, clip_image::ImageError>((Arc::clone(&opened.archive), owners))
        };
        match tokio::time::timeout(OWNERS_TIMEOUT, read).await {
            Ok(Ok(found)) => return Ok(found),
            Ok(Err(error)) => debug!(error = &error as &dyn std::error::Error, "no owner names"),
            Err(_) => debug!(timeout = ?OWNERS_TIMEOUT, "no owner names: reading the image's account files timed out"),
        }
    }
    let loaded = load_archive(&file, &opts).await?;
    Ok((loaded.archive, Owners::default()))
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
