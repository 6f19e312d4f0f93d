//! Host programs inside test images: a program copied from the host with the shared libraries (and the
//! dynamic loader) it loads, at the paths `ldd` names, so it runs inside a container of the image and from
//! a mount of it alike. Test images need no distribution for a shell or `cat`.

use std::path::PathBuf;
use std::process::Command;

use crate::layer::Entry;

/// The libraries (and the dynamic loader) `ldd` says `program` loads.
///
/// # Panics
/// When `ldd` fails or names fewer than two files.
pub fn shared_libraries(program: &str) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(program).output().unwrap_or_else(|e| panic!("running ldd {program}: {e}"));
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(out.status.success(), "ldd {program}: {}", text(&out.stderr));
    let libs: Vec<PathBuf> = text(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')).map(PathBuf::from))
        .collect();
    assert!(libs.len() >= 2, "ldd {program} found no libraries: {}", text(&out.stdout));
    libs
}

/// Layer entries for host programs: each `(host path, path in the image, mode)` as a file owned by root,
/// the libraries they load (0755, at their host paths), and every parent directory, declared first.
///
/// # Panics
/// When a program or library cannot be read.
pub fn host_programs(programs: &[(&str, &str, u32)]) -> Vec<Entry> {
    let read = |p: &std::path::Path| std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
    let mut files: Vec<(PathBuf, Vec<u8>, u32)> = Vec::new();
    for (host, image, mode) in programs {
        files.push((PathBuf::from(image), read(host.as_ref()), *mode));
        for lib in shared_libraries(host) {
            let rel = lib.strip_prefix("/").unwrap_or(&lib).to_path_buf();
            if !files.iter().any(|(p, _, _)| *p == rel) {
                files.push((rel, read(&lib), 0o755));
            }
        }
    }
    let mut dirs: Vec<PathBuf> =
        files.iter().flat_map(|(p, _, _)| p.ancestors().skip(1).map(PathBuf::from).collect::<Vec<_>>()).collect();
    dirs.retain(|d| !d.as_os_str().is_empty());
    dirs.sort();
    dirs.dedup();
    let path = |p: &PathBuf| p.display().to_string();
    dirs.iter()
        .map(|d| Entry::dir(path(d)))
        .chain(files.iter().map(|(p, data, mode)| Entry::file(path(p), data.clone()).mode(*mode).owner(0, 0)))
        .collect()
}

/// An `/etc/ld.so.cache` in glibc's current format (`glibc-ld.so.cache1.1`) listing `entries`
/// (`(library name, path)`, x86-64 libc6 entries), as `ldconfig` writes it: to put libraries where only
/// the cache names them.
pub fn ld_so_cache(entries: &[(&str, &str)]) -> Vec<u8> {
    const MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
    const HEADER: usize = 48;
    const ENTRY: usize = 24;
    let strings_at = HEADER + entries.len() * ENTRY;
    let (mut strings, mut offsets) = (Vec::new(), Vec::new());
    for (name, path) in entries {
        let key = strings_at + strings.len();
        strings.extend_from_slice(name.as_bytes());
        strings.push(0);
        let value = strings_at + strings.len();
        strings.extend_from_slice(path.as_bytes());
        strings.push(0);
        offsets.push((key as u32, value as u32));
    }
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    out.extend_from_slice(&(strings.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4 + 16]);
    for (key, value) in offsets {
        out.extend_from_slice(&0x0303i32.to_le_bytes());
        out.extend_from_slice(&key.to_le_bytes());
        out.extend_from_slice(&value.to_le_bytes());
        out.extend_from_slice(&[0; 4 + 8]);
    }
    out.extend_from_slice(&strings);
    out
}
