//! End to end: the startup set and startup profiles. The index of an image records its entrypoint's ELF
//! interpreter and `DT_NEEDED` closure (checked against `ldd` on the host the binaries come from), or a
//! script's interpreters; a hostile image gives a smaller set or none and still indexes; a mount fetches
//! the set before anything reads it; and the first cold `clip run` of an image on a node records its
//! profile and publishes it, so a second, clean node replays it.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use clip_format::Archive;
use clip_testkit::*;
use common::{clip_ok, metric, s, text, Indexed, Served};

/// The startup set `clip inspect --json` shows, as paths.
fn startup_paths(index: &Path) -> Vec<String> {
    let json: serde_json::Value = serde_json::from_slice(&clip_ok(&["inspect", "--json", s(index)])).unwrap();
    serde_json::from_value(json["startup_set"].clone()).unwrap()
}

/// An image of host programs (with the libraries `ldd` names, at its paths) and `extra` entries, whose
/// entrypoint is `entrypoint`.
fn image(programs: &[(&str, &str, u32)], extra: Vec<Entry>, entrypoint: &[&str]) -> Image {
    let mut layer = LayerBuilder::new();
    for e in host_programs(programs).into_iter().chain(extra) {
        layer.entry(e);
    }
    let mut image = Image::new(vec![Layer::new(layer.finish(), Compression::Gzip)]);
    image.config.entrypoint = Some(entrypoint.iter().map(|s| s.to_string()).collect());
    image
}

/// `/PATH` of each library `ldd` says the host's `program` loads (the dynamic loader included).
fn ldd(program: &str) -> BTreeSet<String> {
    shared_libraries(program).iter().map(|p| p.display().to_string()).collect()
}

#[test]
fn a_dynamic_entrypoint_gives_its_loader_and_libraries_and_a_mount_fetches_them_before_any_read() {
    let served = Served::new(&image(&[("/bin/ls", "usr/bin/ls", 0o755)], vec![], &["ls", "-l"]));
    let set = startup_paths(&served.index());
    assert_eq!(set[0], "/usr/bin/ls", "the program comes first (found in PATH): {set:?}");
    let mut expected = ldd("/bin/ls");
    expected.insert("/usr/bin/ls".into());
    assert_eq!(set.iter().cloned().collect::<BTreeSet<_>>(), expected);
    let (_, verbose, _) = inspect_text(&served.index());
    assert!(verbose.contains(&format!("startup:   {} files", set.len())) && verbose.contains("\n  /usr/bin/ls\n"));

    // The spans of the set load as the mount starts; reading the files afterwards fetches nothing.
    let archive = Archive::open(&served.index()).unwrap();
    let mut spans = BTreeSet::new();
    for ino in archive.startup_set().unwrap() {
        let data = archive.node(ino).unwrap().data_ref().unwrap();
        spans.extend(archive.file_spans(data, 0..data.size).map(|s| s.unwrap().span));
    }
    let addr = common::free_addr();
    let m = served.mount("mnt", &["--metrics", &addr]);
    common::wait_within(Duration::from_secs(60), "the startup set was not prefetched", || {
        metric(&addr, "clip_prefetched_spans_total") >= spans.len() as f64
    });
    let (fetched, requests) = (metric(&addr, "clip_spans_fetched_total"), served.proxy().stats().requests);
    assert_eq!(fetched, spans.len() as f64, "the set's spans, each once");
    for path in &set {
        let bytes = std::fs::read(m.dir.join(&path[1..])).unwrap();
        let host = if path == "/usr/bin/ls" { "/bin/ls" } else { path };
        assert!(bytes == std::fs::read(host).unwrap(), "{path}");
    }
    assert_eq!(metric(&addr, "clip_spans_fetched_total"), fetched, "reading the set fetched spans");
    assert_eq!(served.proxy().stats().requests, requests, "reading the set reached the registry");
    let log = m.stop();
    assert!(log.contains("prefetching the startup set"), "{log}");

    // --no-startup-set: nothing loads until it is read.
    let addr = common::free_addr();
    let cache = served.dir.path().join("cold");
    let m = common::MountProc::start(
        &served.index(),
        &served.dir.path().join("off"),
        &["--cache-dir", s(&cache), "--metrics", &addr, "--no-startup-set"],
    );
    assert!(m.dir.join("usr/bin/ls").is_file());
    assert_eq!(metric(&addr, "clip_prefetched_spans_total"), 0.0);
    m.stop();
}

#[test]
fn a_library_only_the_images_ld_so_cache_names_is_found_there() {
    // libc moved to /opt/glibc, where no standard directory and no RUNPATH leads: only the cache does.
    let mut layer = LayerBuilder::new();
    let mut dirs = BTreeSet::from(["etc".to_owned(), "opt".into(), "opt/glibc".into(), "bin".into()]);
    let mut files = vec![("bin/ls".to_owned(), std::fs::read("/bin/ls").unwrap())];
    for lib in ldd("/bin/ls") {
        let bytes = std::fs::read(&lib).unwrap();
        let path = if lib.ends_with("/libc.so.6") { "opt/glibc/libc.so.6".to_owned() } else { lib[1..].to_owned() };
        let parents: Vec<String> =
            Path::new(&path).ancestors().skip(1).map(|p| p.display().to_string()).filter(|p| !p.is_empty()).collect();
        dirs.extend(parents);
        files.push((path, bytes));
    }
    files.push(("etc/ld.so.cache".into(), ld_so_cache(&[("libc.so.6", "/opt/glibc/libc.so.6")])));
    for d in &dirs {
        layer.dir(d.as_str());
    }
    for (path, bytes) in files {
        layer.entry(Entry::file(path, bytes).mode(0o755));
    }
    let mut image = Image::new(vec![Layer::new(layer.finish(), Compression::Gzip)]);
    image.config.cmd = Some(vec!["ls".into()]);
    let set = startup_paths(&Indexed::new(&image).index());
    assert!(set.contains(&"/opt/glibc/libc.so.6".to_owned()), "{set:?}");
    assert!(set.contains(&"/etc/ld.so.cache".to_owned()), "the loader reads its cache first: {set:?}");
    assert_eq!(set.len(), ldd("/bin/ls").len() + 2, "ls, its libraries and the cache: {set:?}");
}

#[test]
fn after_the_libraries_come_glibcs_locale_data_and_a_python_interpreters_start_modules() {
    let entries = || {
        let mut e: Vec<Entry> = [
            "etc",
            "usr/lib",
            "usr/lib/locale",
            "usr/lib/locale/C.utf8",
            "usr/lib/locale/C.utf8/LC_MESSAGES",
            "usr/share",
            "usr/share/locale",
            "usr/share/zoneinfo",
            "usr/share/zoneinfo/Etc",
            "lib/x86_64-linux-gnu/gconv",
            "usr/lib/python3.11",
            "usr/lib/python3.11/__pycache__",
            "usr/lib/python3.11/encodings",
            "usr/lib/python3.11/encodings/__pycache__",
            "usr/lib/python3",
            "usr/lib/python3/dist-packages",
            "etc/python3.11",
        ]
        .into_iter()
        .map(Entry::dir)
        .collect();
        e.extend([
            Entry::file("usr/lib/locale/C.utf8/LC_CTYPE", "ctype"),
            Entry::file("usr/lib/locale/C.utf8/LC_MESSAGES/SYS_LC_MESSAGES", "messages"),
            Entry::file("usr/share/locale/locale.alias", "aliases"),
            Entry::file("usr/share/zoneinfo/Etc/UTC", "TZif"),
            Entry::symlink("etc/localtime", "/usr/share/zoneinfo/Etc/UTC"),
            Entry::file("lib/x86_64-linux-gnu/gconv/gconv-modules.cache", "gconv"),
            Entry::file("lib/x86_64-linux-gnu/gconv/UTF-16.so", "a module loaded only when asked for"),
            Entry::symlink("usr/bin/python3", "python3.11"),
            Entry::file("usr/lib/python3.11/encodings/__init__.py", "source"),
            Entry::file("usr/lib/python3.11/encodings/__pycache__/__init__.cpython-311.pyc", "bytecode"),
            Entry::file("usr/lib/python3.11/encodings/aliases.py", "source"),
            Entry::file("usr/lib/python3.11/encodings/__pycache__/aliases.cpython-310.pyc", "another version's"),
            Entry::file("usr/lib/python3.11/encodings/utf_8.py", "source"),
            Entry::file("usr/lib/python3.11/encodings/__pycache__/utf_8.cpython-311.pyc", "bytecode"),
            Entry::file("usr/lib/python3.11/encodings/latin_1.py", "a codec imported only when asked for"),
            Entry::file("etc/python3.11/sitecustomize.py", "source"),
            Entry::symlink("usr/lib/python3.11/sitecustomize.py", "/etc/python3.11/sitecustomize.py"),
            Entry::file("usr/lib/python3.11/__pycache__/sitecustomize.cpython-311.pyc", "bytecode"),
            Entry::file("usr/lib/python3.11/os.py", "frozen into 3.11"),
            Entry::file("usr/lib/python3/dist-packages/hook.pth", "import hook"),
            Entry::file("usr/lib/python3/dist-packages/hook.py", "imported only if the .pth says so"),
        ]);
        e
    };
    let programs = [("/usr/bin/python3.11", "usr/bin/python3.11", 0o755), ("/bin/ls", "usr/bin/ls", 0o755)];
    let glibc = [
        "/usr/lib/locale/C.utf8/LC_CTYPE",
        "/usr/lib/locale/C.utf8/LC_MESSAGES/SYS_LC_MESSAGES",
        "/usr/share/locale/locale.alias",
        "/usr/share/zoneinfo/Etc/UTC",
        "/lib/x86_64-linux-gnu/gconv/gconv-modules.cache",
    ];
    let python = [
        "/usr/lib/python3.11/encodings/__pycache__/__init__.cpython-311.pyc",
        "/usr/lib/python3.11/encodings/aliases.py",
        "/usr/lib/python3.11/encodings/__pycache__/utf_8.cpython-311.pyc",
        "/usr/lib/python3.11/__pycache__/sitecustomize.cpython-311.pyc",
        "/usr/lib/python3/dist-packages/hook.pth",
    ];

    let set = startup_paths(&Indexed::new(&image(&programs, entries(), &["python3"])).index());
    let libraries = ldd("/usr/bin/python3.11").len();
    assert_eq!(set[0], "/usr/bin/python3.11", "{set:?}");
    assert_eq!(&set[1 + libraries..], [&glibc[..], &python[..]].concat(), "after python and its libraries: {set:?}");

    // Another glibc program gets the C library's data but no Python modules.
    let set = startup_paths(&Indexed::new(&image(&programs, entries(), &["ls"])).index());
    assert_eq!(&set[1 + ldd("/bin/ls").len()..], glibc, "{set:?}");
}

/// The distinct spans of the files at `paths` in the index at `index`.
fn spans_of(index: &Path, paths: &BTreeSet<String>) -> BTreeSet<clip_format::SpanId> {
    let archive = Archive::open(index).unwrap();
    let mut spans = BTreeSet::new();
    for path in paths {
        let ino = archive.resolve(path.as_bytes()).unwrap().unwrap_or_else(|| panic!("{path} not in the image"));
        let data = archive.node(ino).unwrap().data_ref().unwrap();
        spans.extend(archive.file_spans(data, 0..data.size).map(|s| s.unwrap().span));
    }
    spans
}

#[test]
fn an_applications_own_package_is_found_where_its_top_level_package_lies() {
    // An application outside Python's library: its package imports itself by absolute name, which Python
    // finds because the application's directory is on its path (the script's directory).
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app/shop");
    std::fs::create_dir_all(&app).unwrap();
    let sources = [
        ("__init__.py", "import shop.util\nfrom shop import models\nfrom .missing import nothing\n"),
        ("util.py", "VERSION = 1\n"),
        ("models.py", "from . import util\n"),
        ("admin.py", "import shop.util\n"),
    ];
    for (name, source) in sources {
        std::fs::write(app.join(name), source).unwrap();
    }
    let modules: Vec<_> = sources.iter().map(|(name, _)| compiled_module(&app.join(name), dir.path())).collect();
    let served = Served::new(&Image::new(vec![python_layer(&modules, vec![])]));
    let addr = common::free_addr();
    let m = mount_telling_searches(&served, &addr);
    let init = &modules[0].1;
    std::io::Read::read_exact(&mut std::fs::File::open(m.dir.join(&init[1..])).unwrap(), &mut [0u8; 16]).unwrap();
    searches_done(&addr, 1);
    let requests = served.proxy().stats().requests;
    for (source, cached, compiled) in &modules[..3] {
        assert!(std::fs::read(m.dir.join(&cached[1..])).unwrap() == std::fs::read(compiled).unwrap(), "{source}");
    }
    assert_eq!(served.proxy().stats().requests, requests, "the modules the package imports were not loaded");
    // `shop.admin` is not imported: its read goes to the registry.
    let (source, cached, compiled) = &modules[3];
    assert!(std::fs::read(m.dir.join(&cached[1..])).unwrap() == std::fs::read(compiled).unwrap(), "{source}");
    assert!(served.proxy().stats().requests > requests, "{source} was loaded before it was read");
    m.stop();
}

/// A mount of `served` without its startup set, serving metrics at `addr`.
fn mount_telling_searches(served: &Served, addr: &str) -> common::MountProc {
    let cache = served.cache();
    let args = ["--cache-dir", s(&cache), "--metrics", addr, "--no-startup-set"];
    common::MountProc::start(&served.index(), &served.dir.path().join("mnt"), &args)
}

/// Waits until `searches` searches from opened files have found what they load and ended, and every load
/// they started has too.
fn searches_done(addr: &str, searches: usize) {
    common::wait_within(Duration::from_secs(60), "the searches from the opened files did not end", || {
        metric(addr, "clip_open_searches_total") >= searches as f64 && metric(addr, "clip_loads_ahead") == 0.0
    });
}

#[test]
fn opening_a_program_cold_loads_its_libraries_before_the_loader_asks() {
    // No startup set: the program is opened as a shell or a runtime would exec it, its libraries untouched.
    let served = Served::new(&image(&[("/bin/ls", "usr/bin/ls", 0o755)], vec![], &["ls"]));
    let libraries = ldd("/bin/ls");
    let wanted = spans_of(&served.index(), &libraries.iter().cloned().chain(["/usr/bin/ls".to_owned()]).collect());
    let first = spans_of(&served.index(), &BTreeSet::from(["/usr/bin/ls".to_owned()]));
    assert!(wanted.len() > first.len(), "the libraries lie in other spans than the program: {wanted:?}");
    let addr = common::free_addr();
    let m = mount_telling_searches(&served, &addr);
    let mut head = [0u8; 64];
    std::io::Read::read_exact(&mut std::fs::File::open(m.dir.join("usr/bin/ls")).unwrap(), &mut head).unwrap();
    // The search from the program has found its libraries and every load it started has ended. Without the
    // libraries' loads, only the program's spans would be loaded.
    searches_done(&addr, 1);
    assert!(metric(&addr, "clip_open_prefetch_spans_total") >= wanted.len() as f64);
    // Mapping them now (the loader reads each whole here) fetches nothing more.
    let (fetched, requests) = (metric(&addr, "clip_spans_fetched_total"), served.proxy().stats().requests);
    for lib in &libraries {
        assert!(std::fs::read(m.dir.join(&lib[1..])).unwrap() == std::fs::read(lib).unwrap(), "{lib}");
    }
    assert_eq!(metric(&addr, "clip_spans_fetched_total"), fetched, "reading the libraries fetched spans");
    assert_eq!(served.proxy().stats().requests, requests, "reading the libraries reached the registry");
    m.stop();
}

#[test]
fn looking_into_a_small_library_for_its_libraries_costs_one_request() {
    // `ls` and each of its libraries in a layer of its own, indexed twice: the second `clip index` finds the
    // layers kept as parts, so only its looks into the files (for the startup set) reach the registry. A
    // file's headers are read first and its dynamic segment, near its end, after: a file of at most 512 KiB
    // is loaded whole at the first look, so its layer sees one request (it had seen two).
    let files: Vec<(String, String)> = std::iter::once(("/bin/ls".to_owned(), "usr/bin/ls".to_owned()))
        .chain(ldd("/bin/ls").into_iter().map(|l| (l.clone(), l[1..].to_owned())))
        .collect();
    let layers: Vec<Layer> = files
        .iter()
        .map(|(host, path)| {
            let mut l = LayerBuilder::new();
            let dirs: Vec<&Path> = Path::new(path).ancestors().skip(1).filter(|d| !d.as_os_str().is_empty()).collect();
            for d in dirs.iter().rev() {
                l.dir(d.to_str().unwrap());
            }
            l.entry(Entry::file(path.as_str(), std::fs::read(host).unwrap()).mode(0o755).owner(0, 0));
            Layer::new(l.finish(), Compression::Gzip)
        })
        .collect();
    let mut image = Image::new(layers);
    image.config.entrypoint = Some(vec!["ls".into()]);
    let served = Served::with_span_mib(&image, 1);
    let first = startup_paths(&served.index());
    assert!(first.iter().any(|p| p.ends_with("/ls")), "{first:?}");

    served.proxy().reset_stats();
    let again = served.dir.path().join("again.clip");
    clip_ok(&["index", &served.proxy().image_ref("img:t"), "-o", s(&again), "--span-mib", "1"]);
    assert_eq!(startup_paths(&again), first);
    let a = Archive::open(&again).unwrap();
    let stats = served.proxy().stats();
    let mut small = 0;
    for (layer, (host, path)) in a.meta().layers.iter().zip(&files) {
        let requests = stats.requests_to(&layer.digest.to_string()).len();
        let size = std::fs::metadata(host).unwrap().len();
        if size <= 512 << 10 {
            small += 1;
            assert!(requests <= 1, "{requests} requests to look into /{path} ({size} bytes)");
        }
    }
    assert!(small >= 2, "{files:?}");
}

/// Modules the host's CPython (`/usr/bin/python3`, started without `site`) imports for `statement`, as
/// `(source, bytecode path beside it, bytecode compiled now into dir)` for each from source and the path of
/// each extension module.
fn python_imports(statement: &str, dir: &Path) -> (Vec<(String, String, std::path::PathBuf)>, Vec<String>) {
    let script = format!(
        "import sys\n\
         before = set(sys.modules)\n\
         {statement}\n\
         new = sorted(set(sys.modules) - before)\n\
         import importlib.util as u, py_compile\n\
         for name in new:\n    \
             spec = sys.modules[name].__spec__\n    \
             if spec and spec.origin and spec.origin.endswith('.py'):\n        \
                 compiled = py_compile.compile(spec.origin, cfile=sys.argv[1] + '/' + name + '.pyc', doraise=True)\n        \
                 print(spec.origin, u.cache_from_source(spec.origin), compiled)\n    \
             elif spec and spec.origin and spec.origin.endswith('.so'):\n        \
                 print(spec.origin)"
    );
    let out = std::process::Command::new("/usr/bin/python3").args(["-S", "-c", &script]).arg(dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (mut modules, mut extensions) = (Vec::new(), Vec::new());
    for line in text(&out.stdout).lines() {
        match line.split(' ').collect::<Vec<_>>()[..] {
            [source, cached, compiled] => modules.push((source.to_owned(), cached.to_owned(), compiled.into())),
            [extension] => extensions.push(extension.to_owned()),
            _ => panic!("{line}"),
        }
    }
    (modules, extensions)
}

/// `source` (a host file) compiled by the host's CPython into `dir`: `(source, the path of its cached
/// bytecode beside it, the bytecode compiled now)`.
fn compiled_module(source: &Path, dir: &Path) -> (String, String, std::path::PathBuf) {
    let script = "import importlib.util as u, py_compile, sys\n\
                  print(u.cache_from_source(sys.argv[1]), py_compile.compile(sys.argv[1], cfile=sys.argv[2], doraise=True))";
    let out = std::process::Command::new("/usr/bin/python3")
        .args(["-S", "-c", script, s(source)])
        .arg(dir.join(format!("{}c", s(source).replace('/', "_"))))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = text(&out.stdout);
    let (cached, compiled) = out.trim().split_once(' ').unwrap();
    (s(source).to_owned(), cached.to_owned(), compiled.into())
}

/// A layer of `modules` (each source at its host path, its bytecode at the cached path, each bytecode file
/// followed by a span of noise so that each lies in a span of its own) and `programs`.
fn python_layer(modules: &[(String, String, std::path::PathBuf)], programs: Vec<Entry>) -> Layer {
    let mut files = Vec::new();
    for (i, (source, cached, compiled)) in modules.iter().enumerate() {
        files.push(Entry::file(&source[1..], std::fs::read(source).unwrap()));
        files.push(Entry::file(&cached[1..], std::fs::read(compiled).unwrap()));
        files.push(Entry::file(format!("{}.noise{i}", &cached[1..]), pseudo_random_bytes(i as u64, 1_300_000)));
    }
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    for f in &files {
        dirs.extend(
            Path::new(std::str::from_utf8(f.path()).unwrap())
                .ancestors()
                .skip(1)
                .map(|p| p.display().to_string())
                .filter(|p| !p.is_empty()),
        );
    }
    let mut layer = LayerBuilder::new();
    for d in dirs {
        layer.dir(d.as_str());
    }
    for e in files.into_iter().chain(programs) {
        layer.entry(e);
    }
    Layer::new(layer.finish(), Compression::Gzip)
}

#[test]
fn opening_a_python_module_cold_loads_what_it_imports_before_python_asks() {
    let dir = tempfile::tempdir().unwrap();
    let (modules, extensions) = python_imports("import json, sqlite3", dir.path());
    let pyc = |name: &str| modules.iter().find(|m| m.0.ends_with(name)).map(|m| m.1.clone()).unwrap();
    let opened = [pyc("/json/__init__.py"), pyc("/sqlite3/__init__.py")];
    assert!(modules.len() > opened.len() + 10, "json and sqlite3 import a dozen modules more: {modules:?}");
    assert!(extensions.iter().any(|e| e.contains("_sqlite3")), "{extensions:?}");
    // Modules json and sqlite3 do not import as they load: two imported only in functions (by functools and
    // collections), one unrelated, and one frozen into the interpreter (functools imports it).
    let mut decoys = python_imports("import weakref, heapq, csv", dir.path()).0;
    decoys.retain(|d| ["/weakref.py", "/heapq.py", "/csv.py"].iter().any(|n| d.0.ends_with(n)));
    assert_eq!(decoys.len(), 3, "{decoys:?}");
    let functools = modules.iter().find(|m| m.0.ends_with("/functools.py")).expect("json imports functools");
    let abc = Path::new(&functools.0).with_file_name("abc.py");
    decoys.push(compiled_module(&abc, dir.path()));

    // Each module's bytecode in a span of its own (followed by a span of noise); the decoys in a layer of
    // their own, and the extension modules with their libraries.
    // `_sqlite3` loads libsqlite3 (`_json` loads no library).
    let sqlite = extensions.iter().find(|e| e.contains("/_sqlite3.")).unwrap();
    let mut programs = host_programs(&[(sqlite.as_str(), &sqlite[1..], 0o644)]);
    programs
        .extend(extensions.iter().filter(|e| *e != sqlite).map(|e| Entry::file(&e[1..], std::fs::read(e).unwrap())));
    let mut image = Image::new(vec![python_layer(&modules, programs), python_layer(&decoys, vec![])]);
    image.config.cmd = Some(vec!["python3".into()]);
    let served = Served::with_span_mib(&image, 1);

    let mut libraries = ldd(sqlite);
    libraries.retain(|l| !l.contains("ld-linux"));
    assert!(libraries.iter().any(|l| l.contains("libsqlite3")), "{libraries:?}");
    let wanted: BTreeSet<String> = modules.iter().map(|m| m.1.clone()).chain(libraries.iter().cloned()).collect();
    let spans = spans_of(&served.index(), &wanted);
    let addr = common::free_addr();
    let m = mount_telling_searches(&served, &addr);
    for path in &opened {
        let mut head = [0u8; 16];
        std::io::Read::read_exact(&mut std::fs::File::open(m.dir.join(&path[1..])).unwrap(), &mut head).unwrap();
    }
    // Without the import closure, only the two opened modules' spans would load (a span already on disk as
    // the decoded prefix an earlier read left is not loaded again, so the count may be below the spans').
    searches_done(&addr, opened.len());
    assert!(metric(&addr, "clip_open_prefetch_spans_total") > opened.len() as f64, "only the opened modules loaded");
    assert!(spans.len() > opened.len() + 5, "{spans:?}");
    let (fetched, requests) = (metric(&addr, "clip_spans_fetched_total"), served.proxy().stats().requests);
    for (source, cached, compiled) in &modules {
        let bytes = std::fs::read(m.dir.join(&cached[1..])).unwrap();
        assert!(bytes == std::fs::read(compiled).unwrap(), "{source}");
    }
    for lib in &libraries {
        assert!(std::fs::read(m.dir.join(&lib[1..])).unwrap() == std::fs::read(lib).unwrap(), "{lib}");
    }
    assert_eq!(metric(&addr, "clip_spans_fetched_total"), fetched, "reading the imported modules fetched spans");
    assert_eq!(served.proxy().stats().requests, requests, "reading the imported modules reached the registry");
    // The decoys were left alone: each read now goes to the registry.
    for (source, cached, compiled) in &decoys {
        let requests = served.proxy().stats().requests;
        assert!(std::fs::read(m.dir.join(&cached[1..])).unwrap() == std::fs::read(compiled).unwrap(), "{source}");
        assert!(served.proxy().stats().requests > requests, "{source} was loaded before it was read");
    }
    m.stop();
}

#[test]
fn the_index_knows_what_a_module_imports_so_its_closure_loads_without_reading_the_modules_between() {
    // `json` imports `re`, which alone imports `enum`, `functools`, `copyreg`, `re._compiler`, ...; `sqlite3`
    // imports the extension module `_sqlite3`, which loads libsqlite3. The bytecode of `re` and `_sqlite3`
    // lie in a layer of their own that the registry refuses once the image is indexed: a search would have
    // to read them to find what they import and load; the index knows it from the indexing, when every
    // layer streamed by.
    let dir = tempfile::tempdir().unwrap();
    let (modules, extensions) = python_imports("import json, sqlite3", dir.path());
    let re = modules.iter().position(|m| m.0.ends_with("/re/__init__.py")).expect("json imports re");
    let (mut others, re) = (modules.clone(), vec![modules[re].clone()]);
    others.retain(|m| m.0 != re[0].0);
    let behind_re: Vec<_> =
        ["/enum.py", "/functools.py", "/copyreg.py", "/re/_compiler.py", "/re/_parser.py", "/keyword.py"]
            .iter()
            .filter_map(|name| others.iter().find(|m| m.0.ends_with(name)))
            .collect();
    assert!(behind_re.len() >= 5, "{others:?}");
    let sqlite = extensions.iter().find(|e| e.contains("/_sqlite3.")).expect("sqlite3 imports _sqlite3");
    let mut libraries = ldd(sqlite);
    libraries.retain(|l| l.contains("libsqlite3"));
    assert_eq!(libraries.len(), 1, "{:?}", ldd(sqlite));
    // `_sqlite3` and its libraries below, `_sqlite3` again (the file the image has) in the refused layer.
    let below = python_layer(&others, host_programs(&[(sqlite.as_str(), &sqlite[1..], 0o644)]));
    let refused = python_layer(&re, vec![Entry::file(&sqlite[1..], std::fs::read(sqlite).unwrap())]);
    let served = Served::with_span_mib(&Image::new(vec![below, refused]), 1);
    let index = Archive::open(&served.index()).unwrap();
    let known = |path: &str| {
        let ino = index.resolve(path.as_bytes()).unwrap().unwrap();
        index.next_files().of(ino).is_some()
    };
    assert!(modules.iter().all(|m| known(&m.1)) && known(sqlite), "the index records what each module loads");
    let json: serde_json::Value = serde_json::from_slice(&clip_ok(&["inspect", "--json", s(&served.index())])).unwrap();
    assert_eq!(json["next_files"], index.next_files().len(), "`clip inspect` counts them");
    let refused = index.meta().layers[1].digest.to_string();
    served.proxy().set_faults(vec![Fault::new(FaultKind::Status(404)).path_contains(&refused)]);

    let addr = common::free_addr();
    let m = mount_telling_searches(&served, &addr);
    for name in ["/json/__init__.py", "/sqlite3/__init__.py"] {
        let init = &others.iter().find(|m| m.0.ends_with(name)).unwrap().1;
        std::io::Read::read_exact(&mut std::fs::File::open(m.dir.join(&init[1..])).unwrap(), &mut [0u8; 16]).unwrap();
    }
    searches_done(&addr, 2);
    let requests = served.proxy().stats().requests;
    for (source, cached, compiled) in &others {
        assert!(std::fs::read(m.dir.join(&cached[1..])).unwrap() == std::fs::read(compiled).unwrap(), "{source}");
    }
    for lib in &libraries {
        assert!(std::fs::read(m.dir.join(&lib[1..])).unwrap() == std::fs::read(lib).unwrap(), "{lib}");
    }
    assert_eq!(
        served.proxy().stats().requests,
        requests,
        "a module behind re, or libsqlite3, was read from the registry"
    );
    assert!(std::fs::read(m.dir.join(&re[0].1[1..])).is_err(), "re's layer is refused");
    m.stop();
}

#[test]
fn what_a_library_loads_next_passes_over_a_library_of_another_machine_found_first() {
    // libselinux needs libpcre2-8. A copy of libpcre2-8 built (as its header says) for another machine lies in
    // /usr/local/lib, which the loader searches before the multiarch directory: the loader passes over it, and
    // so must the index's record of what opening libselinux loads next (from what the layer recorded of each
    // file's ELF kind, no file read).
    let libs = ldd("/bin/ls");
    let lib =
        |name: &str| libs.iter().find(|l| l.contains(name)).unwrap_or_else(|| panic!("ls loads no {name}")).clone();
    let (selinux, pcre) = (lib("libselinux.so"), lib("libpcre2-8.so"));
    let mut foreign = std::fs::read(&pcre).unwrap();
    foreign[18..20].copy_from_slice(&183u16.to_le_bytes()); // e_machine: EM_AARCH64
    let pcre_name = pcre.rsplit('/').next().unwrap();
    let extra = vec![
        Entry::dir("usr/local"),
        Entry::dir("usr/local/lib"),
        Entry::file(format!("usr/local/lib/{pcre_name}"), foreign).mode(0o755),
    ];
    let indexed = Indexed::new(&image(&[("/bin/ls", "usr/bin/ls", 0o755)], extra, &["ls"]));
    let index = indexed.index();
    let archive = Archive::open(&index).unwrap();
    let ino = |path: &str| archive.resolve(path.as_bytes()).unwrap().unwrap();
    let next: Vec<_> = archive.next_files().of(ino(&selinux)).expect("libselinux is recorded").collect();
    assert!(next.contains(&clip_format::Next::Load(ino(&pcre))), "{pcre} is not what libselinux loads: {next:?}");
    let foreign = ino(&format!("/usr/local/lib/{pcre_name}"));
    assert!(!next.contains(&clip_format::Next::Load(foreign)), "the other machine's copy was taken: {next:?}");
    assert!(!startup_paths(&index).iter().any(|p| p.starts_with("/usr/local")), "nor by the startup set");
}

#[test]
fn a_first_program_outside_the_startup_set_makes_the_sets_prefetch_yield() {
    let mut served = Served::new(&image(
        &[("/bin/ls", "usr/bin/ls", 0o755), ("/usr/bin/env", "usr/bin/env", 0o755)],
        vec![],
        &["ls"],
    ));
    // A slow link keeps the set's loads in flight while the other program starts.
    served.restart_proxy(Some(ProxyConfig::default().with_rate_mbit(4.0)));
    let m = served.mount("other", &[]);
    let env = std::fs::read(m.dir.join("usr/bin/env")).unwrap();
    assert!(env == std::fs::read("/usr/bin/env").unwrap());
    // The set's files still read right: a read waiting on a dropped load loads the span itself.
    for path in startup_paths(&served.index()) {
        let host = if path == "/usr/bin/ls" { "/bin/ls".to_owned() } else { path.clone() };
        assert!(std::fs::read(m.dir.join(&path[1..])).unwrap() == std::fs::read(&host).unwrap(), "{path}");
    }
    let log = m.stop();
    assert!(log.contains("the first program started is not in the startup set"), "{log}");

    // The set's own program keeps the set going.
    let m = common::MountProc::start(
        &served.index(),
        &served.dir.path().join("same"),
        &["--cache-dir", s(&served.dir.path().join("cold"))],
    );
    assert!(std::fs::read(m.dir.join("usr/bin/ls")).unwrap() == std::fs::read("/bin/ls").unwrap());
    let log = m.stop();
    assert!(!log.contains("not in the startup set"), "{log}");
}

/// `clip -v inspect INDEX`: (success, stdout, stderr).
fn inspect_text(index: &Path) -> (bool, String, String) {
    let out = common::clip(&["-v", "inspect", s(index)]);
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn a_script_entrypoint_gives_its_interpreters_through_env() {
    let script = Entry::file("app/run", "#!/usr/bin/env sh\necho hi\n").mode(0o755);
    let indexed = Indexed::new(&image(
        &[("/usr/bin/env", "usr/bin/env", 0o755), ("/bin/sh", "bin/sh", 0o755)],
        vec![Entry::dir("app"), script],
        &["./run", "x"],
    ));
    let set = startup_paths(&indexed.index());
    // WorkingDir is unset: "./run" is relative to "/", so it is not found; the same image with a WorkingDir
    // finds it. Here the set is empty and the index is fine.
    assert!(set.is_empty(), "{set:?}");

    let script = Entry::file("app/run", "#!/usr/bin/env sh\necho hi\n").mode(0o755);
    let mut with_dir = image(
        &[("/usr/bin/env", "usr/bin/env", 0o755), ("/bin/sh", "bin/sh", 0o755)],
        vec![Entry::dir("app"), script],
        &["./run", "x"],
    );
    with_dir.config.working_dir = Some("/app".into());
    let set = startup_paths(&Indexed::new(&with_dir).index());
    assert_eq!(&set[..2], ["/app/run", "/usr/bin/env"], "the script, then its interpreter and its libraries");
    let mut expected: BTreeSet<String> = ldd("/usr/bin/env").into_iter().chain(ldd("/bin/sh")).collect();
    expected.extend(["/app/run".into(), "/usr/bin/env".into(), "/bin/sh".into()]);
    assert_eq!(set.into_iter().collect::<BTreeSet<_>>(), expected);
}

#[test]
fn the_set_is_found_from_what_the_layers_recorded_as_they_streamed_without_reading_a_file_again() {
    // A script run through `env`, and `sh`: every head, interpreter and library name the set needs, and what
    // the loader's cache maps, was seen as the layers streamed by (and kept in their parts): indexing asks the
    // registry for no range, whether it reads the layers or reuses their parts.
    let script = Entry::file("app/run", "#!/usr/bin/env sh\necho hi\n").mode(0o755);
    let libc = ldd("/bin/sh").into_iter().find(|l| l.contains("/libc.so")).expect("sh loads libc");
    let cache = Entry::file("etc/ld.so.cache", ld_so_cache(&[("libc.so.6", libc.as_str())]));
    let mut image = image(
        &[("/usr/bin/env", "usr/bin/env", 0o755), ("/bin/sh", "bin/sh", 0o755)],
        vec![Entry::dir("app"), script, Entry::dir("etc"), cache],
        &["./run"],
    );
    image.config.working_dir = Some("/app".into());
    let served = Served::new(&image);
    let mut expected: BTreeSet<String> = ldd("/usr/bin/env").into_iter().chain(ldd("/bin/sh")).collect();
    expected.extend(["/app/run".into(), "/usr/bin/env".into(), "/bin/sh".into(), "/etc/ld.so.cache".into()]);
    let parts = served.dir.path().join("parts");
    for pass in ["layers read", "parts reused"] {
        served.proxy().reset_stats();
        let index = served.dir.path().join("again.clip");
        let image_ref = served.proxy().image_ref("img:t");
        clip_ok(&["index", &image_ref, "-o", s(&index), "--parts", s(&parts)]);
        let set = startup_paths(&index);
        assert_eq!(set.iter().cloned().collect::<BTreeSet<_>>(), expected, "{pass}");
        assert_eq!(set, startup_paths(&served.index()), "{pass}: the set the first indexing found");
        let stats = served.proxy().stats();
        assert_eq!(stats.range_requests, 0, "{pass}: {:?}", stats.requests_to("blobs"));
        let layer = Archive::open(&index).unwrap().meta().layers[0].digest.to_string();
        let streams = if pass == "layers read" { 1 } else { 0 };
        assert_eq!(stats.requests_to(&layer).len(), streams, "{pass}: {:?}", stats.requests_to("blobs"));
    }
}

#[test]
fn hostile_entrypoints_give_a_smaller_set_or_none_and_the_image_still_indexes() {
    let ls = std::fs::read("/bin/ls").unwrap();
    let mut absurd = ls.clone();
    absurd[32..40].copy_from_slice(&u64::MAX.to_le_bytes()); // e_phoff far beyond the file
    absurd[56..58].copy_from_slice(&0xffffu16.to_le_bytes()); // e_phnum
    let mut huge_dynamic = ls.clone();
    // Every program header claims a segment of 2^62 bytes.
    let (phoff, phnum) = (u64::from_le_bytes(ls[32..40].try_into().unwrap()) as usize, ls[56] as usize);
    for i in 0..phnum {
        let at = phoff + i * 56 + 32;
        huge_dynamic[at..at + 8].copy_from_slice(&(1u64 << 62).to_le_bytes());
    }
    let cases: Vec<(&str, Vec<Entry>, Vec<&str>)> = vec![
        ("truncated ELF", vec![Entry::file("bin/app", ls[..300].to_vec()).mode(0o755)], vec!["/bin/app"]),
        ("absurd header", vec![Entry::file("bin/app", absurd).mode(0o755)], vec!["/bin/app"]),
        ("absurd segment sizes", vec![Entry::file("bin/app", huge_dynamic).mode(0o755)], vec!["/bin/app"]),
        ("symlink loop", vec![Entry::symlink("bin/app", "app2"), Entry::symlink("bin/app2", "app")], vec![]),
        ("path escaping the root", vec![Entry::symlink("bin/app", "../../../../../bin/ls")], vec![]),
        ("script naming itself", vec![Entry::file("bin/app", "#!/bin/app\n").mode(0o755)], vec!["/bin/app"]),
        ("entrypoint is a directory", vec![Entry::dir("bin/app")], vec![]),
    ];
    for (what, entries, expected) in cases {
        let mut layer = LayerBuilder::new();
        layer.entry(Entry::dir("bin"));
        for e in entries {
            layer.entry(e);
        }
        let mut image = Image::new(vec![Layer::new(layer.finish(), Compression::Gzip)]);
        image.config.entrypoint = Some(vec!["/bin/app".into()]);
        let indexed = Indexed::new(&image);
        assert_eq!(startup_paths(&indexed.index()), expected, "{what}");
    }
}

#[test]
fn a_first_cold_run_publishes_its_profile_and_a_clean_node_replays_it() {
    let registry = Registry::start();
    registry.push(&common::debian_layout(), "bookworm", "debian:test");
    let image = registry.image_ref("debian:test");
    let dir = tempfile::tempdir().unwrap();
    let node = |name: &str| common::node_env(&dir.path().join(name));
    let run = |name: &str| {
        let out = common::clip_node(&["run", &image, "--", "cat", "/etc/os-release"], &node(name));
        assert!(out.status.success(), "clip run failed:\n{}", text(&out.stderr));
        assert!(text(&out.stdout).contains("Debian GNU/Linux 12"));
        text(&out.stderr)
    };
    let err = run("first");
    assert!(err.contains("no startup profile yet; this start records one"), "{err}");
    // The mount ended with the run (last user out), saved the profile and published it.
    let state = dir.path().join("first/state");
    let profile = std::fs::read_dir(state.join("profiles")).unwrap().next().unwrap().unwrap().path();
    let recorded: serde_json::Value = serde_json::from_slice(&std::fs::read(&profile).unwrap()).unwrap();
    assert!(recorded["spans"].as_array().is_some_and(|s| !s.is_empty()), "{recorded}");
    let mount_dir = std::fs::read_dir(state.join("mounts")).unwrap().next().unwrap().unwrap().path();
    let log = std::fs::read_to_string(mount_dir.join("mount.log")).unwrap();
    assert!(log.contains("profile published"), "{log}");

    let err = run("second");
    assert!(err.contains("prefetch profile from registry"), "{err}");
    assert!(!err.contains("this start records one"), "{err}");
    let saved = std::fs::read_dir(dir.path().join("second/state/profiles")).unwrap().next().unwrap().unwrap().path();
    assert_eq!(std::fs::read(saved).unwrap(), std::fs::read(&profile).unwrap());
}

#[test]
fn without_a_registry_the_profile_goes_through_the_s3_index_store() {
    const BUCKET: &str = "startup";
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let indexed = Indexed::new(&common::app_image());
    let image = indexed.reference(); // an OCI layout: no registry to publish to
    let node = |name: &str| {
        let mut env = common::node_env(&indexed.path(name));
        env.extend(s3.env());
        env.push(("CLIP_S3_INDEX_STORE".into(), format!("s3://{BUCKET}/indexes")));
        env
    };
    let first = node("first");
    let err = common::pull_and_gc(&image, &first, common::check_app_tree);
    assert!(err.contains("no startup profile yet; this start records one"), "{err}");
    // `clip gc` unmounted the image: its mount process ends the recording and publishes it.
    let profiles = indexed.path("first/state/profiles");
    let key = std::fs::read_dir(&profiles).unwrap().next().unwrap().unwrap().file_name();
    let digest = key.to_str().unwrap().trim_end_matches(".json").replacen('-', ":", 1);
    let object = format!("indexes/{digest}.profile.json");
    common::wait_within(Duration::from_secs(30), "the profile was not published to S3", || {
        s3.get_object(BUCKET, &object).is_some()
    });
    let published = s3.get_object(BUCKET, &object).unwrap();
    assert_eq!(published, std::fs::read(profiles.join(&key)).unwrap());
    let spans: serde_json::Value = serde_json::from_slice(&published).unwrap();
    assert!(spans["spans"].as_array().is_some_and(|s| !s.is_empty()), "{spans}");

    let second = node("second");
    let err = common::pull_and_gc(&image, &second, common::check_app_tree);
    assert!(err.contains("prefetch profile from S3"), "{err}");
    assert!(!err.contains("this start records one"), "{err}");
}

#[test]
fn a_first_cold_runs_recording_stops_at_its_span_limit() {
    let registry = Registry::start();
    registry.push(&common::debian_layout(), "bookworm", "debian:test");
    let image = registry.image_ref("debian:test");
    let dir = tempfile::tempdir().unwrap();
    // Reads every program in /usr/bin: many more spans than the limit below.
    let recorded_spans = |name: &str, config: &str| -> usize {
        let root = dir.path().join(name);
        std::fs::create_dir_all(&root).unwrap();
        let file = root.join("config.toml");
        std::fs::write(&file, format!("[startup]\npublish_profiles = false\n{config}")).unwrap();
        let mut env = common::node_env(&root);
        env.push(("CLIP_CONFIG".into(), file.display().to_string()));
        let out = common::clip_node(&["run", &image, "--", "sh", "-c", "cat /usr/bin/* > /dev/null"], &env);
        assert!(out.status.success(), "clip run failed:\n{}", text(&out.stderr));
        assert!(text(&out.stderr).contains("this start records one"), "{}", text(&out.stderr));
        let profile = std::fs::read_dir(root.join("state/profiles")).unwrap().next().unwrap().unwrap().path();
        let recorded: serde_json::Value = serde_json::from_slice(&std::fs::read(&profile).unwrap()).unwrap();
        recorded["spans"].as_array().map_or(0, Vec::len)
    };
    let unbounded = recorded_spans("unbounded", "");
    assert!(unbounded > 3, "the workload touches {unbounded} spans: too few to test a limit of 3");
    assert_eq!(recorded_spans("bounded", "record_spans = 3\n"), 3);
}

#[test]
fn a_mount_fetches_a_startup_file_only_as_far_as_it_reaches_into_its_span() {
    // The script is the layer's first file and 3 MiB of incompressible bytes follow it in its span: the
    // set wants a few hundred bytes of that span, and a mount fetches a verified prefix of it, not all of it.
    let mut layer = LayerBuilder::new();
    layer.dir("app");
    layer.entry(Entry::file("app/run", "#!/bin/sh\necho hi\n").mode(0o755));
    layer.entry(Entry::file("app/pad", pseudo_random_bytes(7, 3 << 20)));
    for e in host_programs(&[("/bin/sh", "bin/sh", 0o755)]) {
        layer.entry(e);
    }
    let mut image = Image::new(vec![Layer::new(layer.finish(), Compression::Gzip)]);
    image.config.entrypoint = Some(vec!["/app/run".into()]);
    let served = Served::with_span_mib(&image, 1);
    assert_eq!(startup_paths(&served.index())[0], "/app/run");

    // What fetching the set's spans whole costs: each span's compressed bytes.
    let archive = Archive::open(&served.index()).unwrap();
    let layer_size = archive.meta().layers[0].size;
    let last = archive.layer_spans(clip_format::LayerIndex(0)).unwrap().last().unwrap();
    let mut spans = BTreeSet::new();
    for ino in archive.startup_set().unwrap() {
        let data = archive.node(ino).unwrap().data_ref().unwrap();
        spans.extend(archive.file_spans(data, 0..data.size).map(|s| s.unwrap().span));
    }
    let compressed = |i: clip_format::SpanId| {
        let end = if i == last { layer_size } else { archive.span(i.next()).unwrap().in_offset };
        end - archive.span(i).unwrap().in_offset
    };
    let whole: u64 = spans.iter().map(|&i| compressed(i)).sum();
    let first = archive.find_span(clip_format::LayerIndex(0), 0).unwrap();
    assert!(spans.contains(&first) && compressed(first) > 1 << 20, "the script's span is not the padded one");

    let addr = common::free_addr();
    let m = served.mount("mnt", &["--metrics", &addr]);
    common::wait_within(Duration::from_secs(60), "the startup set was not prefetched", || {
        metric(&addr, "clip_prefetched_spans_total") >= spans.len() as f64
    });
    let fetched = metric(&addr, "clip_fetched_bytes_total");
    assert!(
        fetched + (512 << 10) as f64 <= whole as f64,
        "the set's spans cost {whole} bytes whole, {fetched} fetched"
    );
    let requests = served.proxy().stats().requests;
    assert_eq!(std::fs::read_to_string(m.dir.join("app/run")).unwrap(), "#!/bin/sh\necho hi\n");
    assert_eq!(served.proxy().stats().requests, requests, "reading the script reached the registry");
    m.stop();
}
