//! What the dynamic linker reads of an ELF file before it runs it: the program headers (`PT_INTERP`,
//! `PT_DYNAMIC`, the `PT_LOAD` segments that map addresses to file offsets), and from the dynamic section
//! the `DT_NEEDED` names, `DT_RUNPATH`/`DT_RPATH` and where the string table is. Parsed in steps, because
//! the caller reads each range of the file lazily: [`headers`] from the file's first bytes, then
//! [`Headers::dynamic`] from the dynamic segment, then [`Dynamic::strings`] from the string table.
//!
//! Nothing the file says is trusted: every range is capped ([`MAX_SEGMENT`], [`MAX_STRTAB`]) and checked
//! against the file size; a malformed file gives `None` or fewer names, never a panic.

use std::ops::Range;

use object::elf::{self, FileHeader32, FileHeader64};
use object::read::elf::{FileHeader, ProgramHeader};
use object::Endianness;

/// Most bytes read of a dynamic segment or an interpreter path.
pub(super) const MAX_SEGMENT: u64 = 64 << 10;
/// Most bytes read of a dynamic string table.
pub(super) const MAX_STRTAB: u64 = 256 << 10;
/// Longest library name or search path taken from the string table.
const MAX_NAME: usize = 4096;
/// Most `DT_NEEDED` entries taken from one file.
const MAX_NEEDED: usize = 256;

/// The kind of ELF object: a library must match its loader's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Kind {
    pub class64: bool,
    pub big_endian: bool,
    pub machine: elf::Machine,
}

/// One `PT_LOAD` segment: file bytes `offset..offset + filesz` are mapped at `vaddr`.
#[derive(Debug, Clone, Copy)]
struct Load {
    vaddr: u64,
    offset: u64,
    filesz: u64,
}

/// What the program headers say.
#[derive(Debug, Clone)]
pub(super) struct Headers {
    pub kind: Kind,
    /// Where the interpreter's path is (`PT_INTERP`).
    pub interp: Option<Range<u64>>,
    /// Where the dynamic section is (`PT_DYNAMIC`).
    pub dynamic: Option<Range<u64>>,
    loads: Vec<Load>,
}

/// The program headers of the ELF file of `size` bytes whose first bytes are `head`; `None` when it is not
/// an ELF file or its headers do not lie in `head`.
pub(super) fn headers(head: &[u8], size: u64) -> Option<Headers> {
    match object::FileKind::parse(head).ok()? {
        object::FileKind::Elf32 => headers_of::<FileHeader32<Endianness>>(head, size),
        object::FileKind::Elf64 => headers_of::<FileHeader64<Endianness>>(head, size),
        _ => None,
    }
}

fn headers_of<H: FileHeader<Endian = Endianness>>(head: &[u8], size: u64) -> Option<Headers> {
    let h = H::parse(head).ok()?;
    let e = h.endian().ok()?;
    let kind = Kind { class64: h.is_class_64(), big_endian: h.is_big_endian(), machine: h.e_machine(e) };
    let range = |p: &H::ProgramHeader, cap: u64| {
        let (offset, len) = (p.p_offset(e).into(), p.p_filesz(e).into());
        let end = offset.checked_add(len.min(cap))?;
        (end <= size && len > 0).then_some(offset..end)
    };
    let (mut interp, mut dynamic, mut loads) = (None, None, Vec::new());
    for p in h.program_headers(e, head).ok()? {
        match p.p_type(e) {
            elf::PT_INTERP => interp = interp.or_else(|| range(p, MAX_SEGMENT)),
            elf::PT_DYNAMIC => dynamic = dynamic.or_else(|| range(p, MAX_SEGMENT)),
            elf::PT_LOAD => loads.push(Load {
                vaddr: p.p_vaddr(e).into(),
                offset: p.p_offset(e).into(),
                filesz: p.p_filesz(e).into(),
            }),
            _ => {}
        }
    }
    Some(Headers { kind, interp, dynamic, loads })
}

/// The kind, names and interpreter of the ELF file `file`, read whole (as the indexer sees a library or a
/// program stream by); `None` when it is not an ELF file.
pub(crate) fn file_names(file: &[u8]) -> Option<(Kind, Names, Option<Vec<u8>>)> {
    let size = file.len() as u64;
    let h = headers(file, size)?;
    let slice = |r: &Range<u64>| &file[r.start as usize..r.end as usize];
    let d = h.dynamic.as_ref().map(|r| h.dynamic(slice(r), size)).unwrap_or_default();
    let names = d.strtab.as_ref().map(|r| d.strings(slice(r))).unwrap_or_default();
    let interp = h.interp.as_ref().and_then(|r| interpreter(slice(r)));
    Some((h.kind, names, interp))
}

/// The interpreter path in the bytes of `PT_INTERP` (up to its NUL).
pub(super) fn interpreter(bytes: &[u8]) -> Option<Vec<u8>> {
    let path = bytes.split(|&b| b == 0).next().filter(|p| !p.is_empty() && p.len() <= MAX_NAME)?;
    Some(path.to_vec())
}

/// What the dynamic section says; the names are offsets into the string table.
#[derive(Debug, Clone, Default)]
pub(super) struct Dynamic {
    needed: Vec<u64>,
    runpath: Option<u64>,
    rpath: Option<u64>,
    /// Where the string table is in the file.
    pub strtab: Option<Range<u64>>,
}

/// A dynamic object's names, read from its string table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Names {
    pub needed: Vec<Vec<u8>>,
    /// `DT_RUNPATH` entries (`:`-separated in the file).
    pub runpath: Vec<Vec<u8>>,
    /// `DT_RPATH` entries; glibc ignores them when the object has a `DT_RUNPATH`.
    pub rpath: Vec<Vec<u8>>,
}

impl Headers {
    /// Decodes the dynamic section's bytes (read from [`Headers::dynamic`]).
    pub(super) fn dynamic(&self, bytes: &[u8], size: u64) -> Dynamic {
        let word = if self.kind.class64 { 8 } else { 4 };
        let int = |b: &[u8]| {
            let mut v = [0u8; 8];
            if self.kind.big_endian {
                v[8 - word..].copy_from_slice(b);
                u64::from_be_bytes(v)
            } else {
                v[..word].copy_from_slice(b);
                u64::from_le_bytes(v)
            }
        };
        let mut d = Dynamic::default();
        let (mut strtab, mut strsz) = (None, None);
        for entry in bytes.chunks_exact(2 * word) {
            let (tag, val) = (int(&entry[..word]), int(&entry[word..]));
            // Tags are signed; a 32-bit tag is compared as the same small number.
            match tag as i64 {
                t if t == elf::DT_NULL.0 => break,
                t if t == elf::DT_NEEDED.0 && d.needed.len() < MAX_NEEDED => d.needed.push(val),
                t if t == elf::DT_RUNPATH.0 => d.runpath = Some(val),
                t if t == elf::DT_RPATH.0 => d.rpath = Some(val),
                t if t == elf::DT_STRTAB.0 => strtab = Some(val),
                t if t == elf::DT_STRSZ.0 => strsz = Some(val),
                _ => {}
            }
        }
        d.strtab = strtab.zip(strsz).and_then(|(vaddr, len)| self.file_range(vaddr, len.min(MAX_STRTAB), size));
        d
    }

    /// The file range mapped at `vaddr..vaddr + len`, when one `PT_LOAD` segment holds it all.
    fn file_range(&self, vaddr: u64, len: u64, size: u64) -> Option<Range<u64>> {
        self.loads.iter().find_map(|l| {
            let within =
                vaddr.checked_sub(l.vaddr).filter(|&d| d.checked_add(len).is_some_and(|end| end <= l.filesz))?;
            let start = l.offset.checked_add(within)?;
            let end = start.checked_add(len).filter(|&end| end <= size)?;
            Some(start..end)
        })
    }
}

impl Dynamic {
    /// Whether the object names anything to load.
    pub(super) fn loads_libraries(&self) -> bool {
        !self.needed.is_empty()
    }

    /// The names, read from the string table's bytes (read from [`Dynamic::strtab`]); names that do not lie
    /// in it are left out.
    pub(super) fn strings(&self, strtab: &[u8]) -> Names {
        let string = |offset: u64| {
            let start = usize::try_from(offset).ok().filter(|&s| s < strtab.len())?;
            let s = strtab[start..].split(|&b| b == 0).next()?;
            (!s.is_empty() && s.len() <= MAX_NAME && start + s.len() < strtab.len()).then(|| s.to_vec())
        };
        let list = |offset: Option<u64>| -> Vec<Vec<u8>> {
            let Some(s) = offset.and_then(string) else { return Vec::new() };
            s.split(|&b| b == b':').filter(|p| !p.is_empty()).map(<[u8]>::to_vec).collect()
        };
        Names {
            needed: self.needed.iter().filter_map(|&o| string(o)).collect(),
            runpath: list(self.runpath),
            rpath: list(self.rpath),
        }
    }
}

/// The multiarch triplet of Debian-style library directories (`/usr/lib/<triplet>`) for an ELF kind.
pub(super) fn triplet(kind: Kind) -> Option<&'static str> {
    Some(match (kind.machine, kind.class64) {
        (elf::EM_X86_64, true) => "x86_64-linux-gnu",
        (elf::EM_AARCH64, true) => "aarch64-linux-gnu",
        (elf::EM_386, false) => "i386-linux-gnu",
        (elf::EM_ARM, false) => "arm-linux-gnueabihf",
        (elf::EM_PPC64, true) => "powerpc64le-linux-gnu",
        (elf::EM_S390, true) => "s390x-linux-gnu",
        (elf::EM_RISCV, true) => "riscv64-linux-gnu",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_ls_names_its_interpreter_and_libc() {
        let ls = std::fs::read(std::fs::canonicalize("/bin/ls").unwrap()).unwrap();
        let (kind, names, interp) = file_names(&ls).expect("/bin/ls is ELF");
        let interp = String::from_utf8(interp.expect("ls is dynamically linked")).unwrap();
        assert!(interp.starts_with('/') && interp.contains("ld-"), "{interp}");
        assert!(names.needed.iter().any(|n| n.starts_with(b"libc.so")), "{names:?}");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(triplet(kind), Some("x86_64-linux-gnu"));
        }
    }

    #[test]
    fn truncated_and_absurd_files_give_nothing_or_less_and_never_panic() {
        let ls = std::fs::read(std::fs::canonicalize("/bin/ls").unwrap()).unwrap();
        for len in [0, 4, 16, 52, 63, 64, 100, 500, 4096] {
            let _ = file_names(&ls[..len.min(ls.len())]);
        }
        assert!(file_names(b"\x7fELF").is_none());
        assert!(file_names(b"#!/bin/sh\n").is_none());
        // Every byte of the headers flipped in turn: whatever comes out, nothing panics.
        for i in 0..1024.min(ls.len()) {
            let mut bad = ls.clone();
            bad[i] ^= 0xff;
            let _ = file_names(&bad);
        }
        let h = headers(&ls, ls.len() as u64).unwrap();
        // A dynamic section whose string table lies beyond the file gives no names.
        let d = h.dynamic(
            &[5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 10, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
            1 << 20,
        );
        assert!(d.strtab.is_none());
        assert_eq!(d.strings(b"\0libx.so\0"), Names::default());
    }
}
