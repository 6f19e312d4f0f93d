//! `clip ls`: list a directory (or one entry) of the image from the index alone.

use std::io::Write;

use anyhow::{bail, Context};
use clip_client::{load_archive, OpenOptions};
use clip_format::{Archive, NodeKind, NodeView};

use crate::args::LsArgs;

pub async fn run(a: LsArgs) -> anyhow::Result<()> {
    let opts = OpenOptions { s3: a.s3.options(), ..OpenOptions::default() };
    let loaded = load_archive(&a.file, &opts).await.with_context(|| format!("opening {}", a.file))?;
    let archive = &*loaded.archive;
    let Some(ino) = archive.resolve(a.path.as_bytes())? else {
        bail!("{}: no such file or directory in {}", a.path, a.file);
    };
    let node = archive.node(ino)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if node.kind() == NodeKind::Dir {
        for child in archive.children(&node) {
            let (name, ino) = child?;
            print_entry(&mut out, archive, name, &archive.node(ino)?, a.long)?;
        }
    } else {
        print_entry(&mut out, archive, a.path.as_bytes(), &node, a.long)?;
    }
    out.flush()?;
    Ok(())
}

fn print_entry(out: &mut impl Write, archive: &Archive, name: &[u8], n: &NodeView, long: bool) -> anyhow::Result<()> {
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
    out.write_all(name)?;
    if long && n.kind() == NodeKind::Symlink {
        out.write_all(b" -> ")?;
        out.write_all(archive.symlink_target(n)?)?;
    }
    out.write_all(b"\n")?;
    Ok(())
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
