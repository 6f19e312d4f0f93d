//! Files a start reads beyond its ELF closure, added to the startup set after it: the C library's data
//! (the C.UTF-8 locale, the character-set module cache, the time zone), read by almost every program that
//! loads glibc; and for a CPython interpreter, the modules it imports before running any code of its own.
//! Without them each is one more round trip of the cold start's chain, after the libraries have loaded.
//!
//! Only paths are resolved here (no file bytes are read); a file the image does not have is left out.

use clip_format::NodeKind;

use super::path::{join, parent, resolve, Found};
use super::Finder;

/// Where glibc finds the C.UTF-8 locale: Debian and Ubuntu spell it `C.utf8`, glibc upstream `C.UTF-8`.
/// Most programs set their locale from the environment at start, and most images run with `C.UTF-8` (and
/// CPython coerces a plain C locale to it).
const C_UTF8_DIRS: [&[u8]; 2] = [b"/usr/lib/locale/C.utf8", b"/usr/lib/locale/C.UTF-8"];
/// Files glibc reads when a program sets its locale (the alias table) or first asks for local time.
const GLIBC_FILES: [&[u8]; 2] = [b"/usr/share/locale/locale.alias", b"/etc/localtime"];
/// glibc's cache of character-set modules, in the `gconv` directory beside `libc.so.6`, read when a
/// program sets a locale.
const GCONV_CACHE: &[u8] = b"gconv/gconv-modules.cache";
/// Most files taken from one directory (a locale's, or a site directory's `.pth` files).
const MAX_LISTED: usize = 32;

/// Modules CPython imports from its library on every start, before the program's own code: the file
/// system encoding's codec and the site hooks. From 3.11 on the rest of its start (`os`, `site`, `io`, ...)
/// is frozen into the interpreter.
const PYTHON_MODULES: [&str; 4] = ["encodings/__init__", "encodings/aliases", "encodings/utf_8", "sitecustomize"];
/// Modules CPython before 3.11 also imports from its library on every start.
const PYTHON_MODULES_UNFROZEN: [&str; 10] =
    ["abc", "codecs", "io", "stat", "_collections_abc", "genericpath", "posixpath", "os", "_sitebuiltins", "site"];

impl Finder<'_> {
    /// The C library's start-up data, for a program that loads glibc from the directory `libc_dir`.
    pub(super) fn glibc_data(&mut self, libc_dir: &[u8]) {
        if let Some(dir) = C_UTF8_DIRS.iter().find_map(|d| self.dir(d)) {
            self.add_files_in(&dir, true);
        }
        for path in GLIBC_FILES.into_iter().map(<[u8]>::to_vec).chain([join(libc_dir, GCONV_CACHE)]) {
            if let Some(found) = resolve(self.archive, b"/", &path) {
                self.add(&found);
            }
        }
    }

    /// For `program` when it is a CPython interpreter (a file named `pythonX.Y` in `PREFIX/bin`): the
    /// modules it imports on every start (their cached bytecode where `__pycache__` has it, as CPython
    /// reads that instead of the source) and the `.pth` files of its site directories, which `site` reads.
    pub(super) fn python_start(&mut self, program: &Found) {
        let name = program.path.rsplit(|&b| b == b'/').next().unwrap_or_default();
        let Some((major, minor)) = python_version(name) else { return };
        let prefix = parent(&program.dir());
        let version = format!("python{major}.{minor}");
        let Some(lib) = self.dir(&join(&prefix, format!("lib/{version}").as_bytes())) else { return };
        let tag = format!("cpython-{major}{minor}");
        let unfrozen: &[&str] = if (major, minor) < (3, 11) { &PYTHON_MODULES_UNFROZEN } else { &[] };
        for module in PYTHON_MODULES.iter().chain(unfrozen) {
            if let Some(found) = self.python_module(&lib.path, module, &tag) {
                self.add(&found);
            }
        }
        for site in &python_roots(&prefix, (major, minor))[2..] {
            if let Some(dir) = self.dir(site) {
                self.add_files_in(&dir, false);
            }
        }
    }

    /// The file CPython reads for `module` (a path under `lib` without `.py`): the cached bytecode for the
    /// running version when there is source beside it, else the source.
    fn python_module(&self, lib: &[u8], module: &str, tag: &str) -> Option<Found> {
        let source = resolve(self.archive, b"/", &join(lib, format!("{module}.py").as_bytes()))?;
        let (dir, base) = module.rsplit_once('/').unwrap_or(("", module));
        let cached = join(lib, format!("{dir}/__pycache__/{base}.{tag}.pyc").trim_start_matches('/').as_bytes());
        resolve(self.archive, b"/", &cached).filter(|f| f.node.kind() == NodeKind::File).or(Some(source))
    }

    /// The directory at `path` (symlinks followed), if there is one.
    fn dir(&self, path: &[u8]) -> Option<Found> {
        resolve(self.archive, b"/", path).filter(|f| f.node.kind() == NodeKind::Dir)
    }

    /// Adds the regular files in `dir` (all of them, one level of subdirectories included, when `all`;
    /// else the `.pth` files), in name order, at most [`MAX_LISTED`].
    fn add_files_in(&mut self, dir: &Found, all: bool) {
        let mut todo = vec![(dir.path.clone(), dir.node, all)];
        let mut taken = 0;
        while let Some((path, node, descend)) = todo.pop() {
            let Ok(children) = self.archive.children(&node).collect::<Result<Vec<_>, _>>() else { continue };
            for (name, ino) in children {
                let Ok(child) = self.archive.node(ino) else { continue };
                let child_path = join(&path, name);
                match child.kind() {
                    NodeKind::File if all || name.ends_with(b".pth") => {
                        if taken == MAX_LISTED {
                            return;
                        }
                        taken += 1;
                        self.add(&Found { node: child, path: child_path });
                    }
                    NodeKind::Dir if descend => todo.push((child_path, child, false)),
                    _ => {}
                }
            }
        }
    }
}

/// Where CPython `major.minor` installed under `prefix` finds modules (its `sys.path`): its library,
/// `lib-dynload`, then the site directories (`site-packages`; Debian's `dist-packages`, its own and
/// `/usr/local`'s).
pub(super) fn python_roots(prefix: &[u8], (major, minor): (u32, u32)) -> Vec<Vec<u8>> {
    let version = format!("python{major}.{minor}");
    let lib = join(prefix, format!("lib/{version}").as_bytes());
    vec![
        lib.clone(),
        join(&lib, b"lib-dynload"),
        join(&lib, b"site-packages"),
        join(&lib, b"dist-packages"),
        format!("/usr/local/lib/{version}/dist-packages").into_bytes(),
        join(prefix, format!("lib/python{major}/dist-packages").as_bytes()),
    ]
}

/// `(X, Y)` of a file named `pythonX.Y`.
fn python_version(name: &[u8]) -> Option<(u32, u32)> {
    let version = std::str::from_utf8(name.strip_prefix(b"python")?).ok()?;
    let (major, minor) = version.split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit());
    if !(digits(major) && digits(minor)) {
        return None;
    }
    Some((major.parse().ok()?, minor.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_versions_are_read_from_interpreter_names_only() {
        assert_eq!(python_version(b"python3.11"), Some((3, 11)));
        assert_eq!(python_version(b"python3.9"), Some((3, 9)));
        for name in [&b"python3"[..], b"python", b"python3.11-config", b"python3.", b"python.11", b"pythonx.y", b"ls"] {
            assert_eq!(python_version(name), None, "{}", String::from_utf8_lossy(name));
        }
        assert_eq!(parent(b"/usr/bin"), b"/usr");
        assert_eq!(parent(b"/bin"), b"/");
    }
}
