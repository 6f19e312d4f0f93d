//! The `import` statements a CPython module runs as it is imported, read from its cached bytecode (a
//! `__pycache__/NAME.cpython-XY.pyc` file): the `IMPORT_NAME` instructions of the module's own code object,
//! with the level and the names imported from (`from . import x`), which the two `LOAD_CONST`s before each
//! give. Imports inside functions (run only when called) and class bodies (rare) are not looked at.
//!
//! The file is untrusted: every length is checked against what is left, nesting and the number of objects
//! are capped, and anything unexpected (another bytecode version, a truncated file) gives `None`.

use std::collections::HashSet;
use std::rc::Rc;

/// CPython versions whose bytecode is read: 3.8 to 3.12 share the instruction numbers used here.
const VERSIONS: [(u16, u16, (u32, u32)); 5] =
    [(3400, 3419, (3, 8)), (3420, 3429, (3, 9)), (3430, 3439, (3, 10)), (3450, 3499, (3, 11)), (3500, 3549, (3, 12))];
/// The header before the marshalled code object: magic, flags, and the source's mtime and size (or hash).
const HEADER: usize = 16;
const LOAD_CONST: u8 = 100;
const IMPORT_NAME: u8 = 108;
const EXTENDED_ARG: u8 = 144;
/// Inline cache entries after some instructions (3.11 on); not instructions.
const CACHE: u8 = 0;
/// Marshal's flag on a type code: the object is also kept for later back-references.
const FLAG_REF: u8 = 0x80;
/// Deepest nesting of containers read.
const MAX_DEPTH: usize = 64;
/// Most objects read from one file.
const MAX_OBJECTS: usize = 1 << 20;
/// Most imports listed for one module (the standard library's modules have tens).
pub(super) const MAX_IMPORTS: usize = clip_format::part::MAX_MODULE_IMPORTS;

/// One `import` a module runs (its dotted name, level and from-list).
pub(crate) use clip_format::ModuleImport as Import;

/// The version (`(3, 11)`) whose bytecode `pyc` holds, and the module-level imports it runs, in order, each
/// once, at most [`MAX_IMPORTS`]; `None` when it is not bytecode of a version read here or is malformed.
pub(crate) fn imports(pyc: &[u8]) -> Option<((u32, u32), Vec<Import>)> {
    let magic = u16::from_le_bytes(pyc.get(..2)?.try_into().ok()?);
    if pyc.get(2..4)? != b"\r\n" || pyc.len() < HEADER {
        return None;
    }
    let version = VERSIONS.iter().find(|(lo, hi, _)| (*lo..=*hi).contains(&magic))?.2;
    let mut reader = Reader { bytes: pyc, at: HEADER, refs: Vec::new(), objects: 0, version };
    let Obj::Code(code) = reader.object(0, true)? else { return None };
    Some((version, code.imports()))
}

/// What of a marshalled object is needed here (shared, as a back-reference repeats it); strings and bytes
/// are borrowed from the file (a module's bytecode holds thousands).
#[derive(Debug, Clone)]
enum Obj<'a> {
    Int(i64),
    Str(&'a [u8]),
    Bytes(&'a [u8]),
    Tuple(Rc<[Obj<'a>]>),
    Code(Box<Code<'a>>),
    /// `None` and everything else.
    Other,
}

#[derive(Debug, Clone)]
struct Code<'a> {
    code: &'a [u8],
    consts: Rc<[Obj<'a>]>,
    names: Rc<[Obj<'a>]>,
}

impl Code<'_> {
    fn imports(&self) -> Vec<Import> {
        let (mut out, mut seen) = (Vec::new(), HashSet::new());
        // The last two instructions before the current one (caches skipped), with their full arguments.
        let mut last: [Option<(u8, usize)>; 2] = [None, None];
        let mut extended = 0usize;
        for pair in self.code.chunks_exact(2) {
            let (op, arg) = (pair[0], extended | usize::from(pair[1]));
            if op == EXTENDED_ARG {
                extended = arg << 8;
                continue;
            }
            extended = 0;
            if op == CACHE {
                continue;
            }
            if op == IMPORT_NAME {
                let constant = |i: Option<(u8, usize)>| match i {
                    Some((LOAD_CONST, c)) => self.consts.get(c),
                    _ => None,
                };
                let level = match constant(last[0]) {
                    Some(Obj::Int(l)) => u32::try_from(*l).unwrap_or(0),
                    _ => 0,
                };
                let fromlist = match constant(last[1]) {
                    Some(Obj::Tuple(items)) => items
                        .iter()
                        .filter_map(|o| match o {
                            Obj::Str(s) if *s != b"*" => Some(String::from_utf8_lossy(s).into_owned()),
                            _ => None,
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                if let Some(name) = self.names.get(arg) {
                    let name = match name {
                        Obj::Str(s) => String::from_utf8_lossy(s).into_owned(),
                        _ => String::new(),
                    };
                    let import = Import { name, level, fromlist };
                    if seen.insert(import.clone()) {
                        out.push(import);
                    }
                    if out.len() == MAX_IMPORTS {
                        break;
                    }
                }
            }
            last = [last[1], Some((op, arg))];
        }
        out
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// The objects kept for back-references, in the order marshal numbers them.
    refs: Vec<Obj<'a>>,
    objects: usize,
    version: (u32, u32),
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(out)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    /// A length or count, which must fit in what is left of the file.
    fn len(&mut self) -> Option<usize> {
        let n = usize::try_from(self.i32()?).ok()?;
        (n <= self.bytes.len() - self.at).then_some(n)
    }

    fn string(&mut self, n: usize) -> Option<Obj<'a>> {
        Some(Obj::Str(self.take(n)?))
    }

    /// The next object; a code object is kept whole only when `top` (the module's own), as only its
    /// instructions are looked at.
    fn object(&mut self, depth: usize, top: bool) -> Option<Obj<'a>> {
        self.objects += 1;
        if depth > MAX_DEPTH || self.objects > MAX_OBJECTS {
            return None;
        }
        let code = self.u8()?;
        let (kind, keep) = (code & !FLAG_REF, code & FLAG_REF != 0);
        if kind == b'r' {
            let i = usize::try_from(self.i32()?).ok()?;
            return self.refs.get(i).cloned();
        }
        // Containers are numbered before what they hold, as marshal does.
        let slot = keep.then(|| {
            self.refs.push(Obj::Other);
            self.refs.len() - 1
        });
        let obj = match kind {
            b'N' | b'F' | b'T' | b'S' | b'.' => Obj::Other,
            b'i' => Obj::Int(i64::from(self.i32()?)),
            b'l' => {
                let n = self.i32()?;
                let digits = self.take(usize::try_from(n.unsigned_abs()).ok()?.checked_mul(2)?)?;
                let value = (digits.len() <= 8).then(|| {
                    let v = digits
                        .chunks_exact(2)
                        .rev()
                        .fold(0i64, |v, d| (v << 15) | i64::from(u16::from_le_bytes([d[0], d[1]])));
                    if n < 0 {
                        -v
                    } else {
                        v
                    }
                });
                value.map_or(Obj::Other, Obj::Int)
            }
            b'g' => self.take(8).map(|_| Obj::Other)?,
            b'y' => self.take(16).map(|_| Obj::Other)?,
            b'f' => {
                let n = usize::from(self.u8()?);
                self.take(n).map(|_| Obj::Other)?
            }
            b'x' => {
                for _ in 0..2 {
                    let n = usize::from(self.u8()?);
                    self.take(n)?;
                }
                Obj::Other
            }
            b's' => {
                let n = self.len()?;
                Obj::Bytes(self.take(n)?)
            }
            b't' | b'u' | b'a' | b'A' => {
                let n = self.len()?;
                self.string(n)?
            }
            b'z' | b'Z' => {
                let n = usize::from(self.u8()?);
                self.string(n)?
            }
            b'(' | b')' | b'[' | b'<' | b'>' => {
                let n = if kind == b')' { usize::from(self.u8()?) } else { self.len()? };
                let items = (0..n).map(|_| self.object(depth + 1, false)).collect::<Option<Vec<_>>>()?;
                if kind == b'(' || kind == b')' {
                    Obj::Tuple(items.into())
                } else {
                    Obj::Other
                }
            }
            b'{' => {
                while self.bytes.get(self.at) != Some(&b'0') {
                    self.object(depth + 1, false)?;
                    self.object(depth + 1, false)?;
                }
                self.at += 1;
                Obj::Other
            }
            b'c' => self.code(depth, top)?,
            _ => return None,
        };
        if let Some(slot) = slot {
            self.refs[slot] = obj.clone();
        }
        Some(obj)
    }

    /// A code object, after its type code.
    fn code(&mut self, depth: usize, top: bool) -> Option<Obj<'a>> {
        // argcount, posonlyargcount, kwonlyargcount, (nlocals before 3.11,) stacksize, flags
        let counts = if self.version >= (3, 11) { 5 } else { 6 };
        self.take(4 * counts)?;
        let mut next = || self.object(depth + 1, false);
        let code = next()?;
        let consts = next()?;
        let names = next()?;
        // 3.11 on: localsplusnames, localspluskinds, filename, name, qualname;
        // before: varnames, freevars, cellvars, filename, name.
        for _ in 0..5 {
            next()?;
        }
        self.i32()?; // firstlineno
        let tables = if self.version >= (3, 11) { 2 } else { 1 };
        for _ in 0..tables {
            self.object(depth + 1, false)?;
        }
        if !top {
            return Some(Obj::Other);
        }
        let (Obj::Bytes(code), Obj::Tuple(consts), Obj::Tuple(names)) = (code, consts, names) else { return None };
        Some(Obj::Code(Box::new(Code { code, consts, names })))
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// `source` compiled by the host's CPython; with the version it ran as.
    fn compiled(source: &str) -> (Vec<u8>, (u32, u32)) {
        let dir = tempfile::tempdir().unwrap();
        let (py, pyc) = (dir.path().join("m.py"), dir.path().join("m.pyc"));
        std::fs::write(&py, source).unwrap();
        let script = "import py_compile, sys; py_compile.compile(sys.argv[1], cfile=sys.argv[2], doraise=True); \
                      print(*sys.version_info[:2])";
        let out = Command::new("python3").args(["-c", script]).arg(&py).arg(&pyc).output().expect("python3 runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let version: Vec<u32> =
            String::from_utf8(out.stdout).unwrap().split_whitespace().map(|v| v.parse().unwrap()).collect();
        (std::fs::read(pyc).unwrap(), (version[0], version[1]))
    }

    fn import(name: &str, level: u32, fromlist: &[&str]) -> Import {
        Import { name: name.into(), level, fromlist: fromlist.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn the_module_level_imports_of_bytecode_cpython_wrote_are_read_in_order() {
        let source = "\
import os, json.decoder as d
from . import x, y
from ..pkg import z
from re import compile
from json import *
try:
    import _json
except ImportError:
    _json = None
def f():
    import in_function
class C:
    import in_class_body
";
        let (pyc, version) = compiled(source);
        let (read_version, imports) = imports(&pyc).expect("3.8 to 3.12 bytecode");
        assert_eq!(read_version, version);
        assert_eq!(
            imports,
            [
                import("os", 0, &[]),
                import("json.decoder", 0, &[]),
                import("", 1, &["x", "y"]),
                import("pkg", 2, &["z"]),
                import("re", 0, &["compile"]),
                import("json", 0, &[]),
                import("_json", 0, &[]),
            ]
        );
    }

    #[test]
    fn every_cut_and_every_changed_byte_of_real_bytecode_reads_without_panicking() {
        let (pyc, _) =
            compiled("import a.b\nfrom . import c\nX = (1, 2.5, 3j, 10**40, b'x', {1: 2}, {3}, frozenset())\n");
        for len in 0..pyc.len() {
            let _ = imports(&pyc[..len]);
        }
        for at in HEADER..pyc.len() {
            for byte in [0, 0x7f, 0x80, 0xff, b'r', b'(', b'{'] {
                let mut changed = pyc.clone();
                changed[at] = byte;
                let _ = imports(&changed);
            }
        }
    }

    #[test]
    fn each_import_is_listed_once_and_at_most_max_imports_are() {
        let mut source = String::from("import a\nimport a\nfrom . import b\nfrom . import b\n");
        source.extend((0..300).map(|i| format!("import m{i}\n")));
        let imports = imports(&compiled(&source).0).unwrap().1;
        assert_eq!(imports.len(), MAX_IMPORTS);
        assert_eq!(imports[..3], [import("a", 0, &[]), import("", 1, &["b"]), import("m0", 0, &[])]);
    }

    #[test]
    fn an_import_past_the_first_256_names_is_read_through_its_extended_argument() {
        let mut source: String = (0..300).map(|i| format!("name{i} = {i}\n")).collect();
        source.push_str("import late.module\n");
        let (pyc, _) = compiled(&source);
        assert_eq!(imports(&pyc).unwrap().1, [import("late.module", 0, &[])]);
    }

    #[test]
    fn malformed_bytecode_gives_none() {
        assert!(imports(b"").is_none());
        assert!(imports(b"\xa7\r\r\n").is_none());
        // A 3.11 header, then a code object cut short.
        let mut pyc = b"\xa7\r\r\n".to_vec();
        pyc.extend([0; 12]);
        pyc.push(b'c' | FLAG_REF);
        pyc.extend([0; 10]);
        assert!(imports(&pyc).is_none());
        // Nesting past the cap.
        let mut deep = pyc[..HEADER].to_vec();
        deep.extend(std::iter::repeat_n([b')', 1], 10_000).flatten());
        assert!(imports(&deep).is_none());
        // A back-reference to nothing.
        let mut bad_ref = pyc[..HEADER].to_vec();
        bad_ref.extend([b'r', 9, 0, 0, 0]);
        assert!(imports(&bad_ref).is_none());
    }
}
