//! The indexing pipeline: every layer whose part is not in the part store is streamed once (layers in
//! parallel) through blob digest → decompressor with checkpoints → diff_id digest → tar parser into a
//! [`LayerPart`]; then the parts are merged in order into one tree and turned into [`IndexContents`].

use std::cell::{Cell, RefCell};
use std::io::Read;
use std::rc::Rc;
use std::sync::Arc;

use clip_codec::{IndexingReader, Span};
use clip_format::{
    part::MAX_LAYER_MODULES, Compression, ElfNames, FormatError, ImageMeta, IndexContents, LayerIndex, LayerPart,
    LoaderCache, ModuleImports, PartEntries, PartLoads, PartMeta, Platform, ScriptLine, SpanSpec, TarEntry, Windows,
};
use clip_source::{BlobSource, Descriptor, Digest, ResolvedImage};
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest as _, Sha256};
use tracing::{debug, info};

use crate::assemble::{assemble, TreeKind};
use crate::chunks::{ChunkHasher, ChunkRecorder, SharedChunks};
use crate::parts::{keep_part, reused_part, PartStore};
use crate::startup::{
    bytecode_imports, elf_names, is_bytecode, is_shared_object, ldcache, script_line, KnownLoads, PYC_MAX,
};
use crate::tar::{TarError, TarReader};
use crate::IndexError;

/// Reports progress of an indexing run (e.g. to progress bars). All methods have empty defaults.
pub trait Progress: Send + Sync {
    /// Layer `layer` (of `total`) starts streaming.
    fn layer_started(&self, _layer: LayerIndex, _desc: &Descriptor) {}
    /// So far `compressed` bytes read and `files` tar entries parsed in `layer`.
    fn layer_progress(&self, _layer: LayerIndex, _compressed: u64, _files: u64) {}
    /// Layer `layer` is fully read and verified.
    fn layer_done(&self, _layer: LayerIndex) {}
    /// Layer `layer` was not read: its part came from the part store.
    fn layer_reused(&self, _layer: LayerIndex, _desc: &Descriptor) {}
}

/// Default uncompressed bytes per span: 1 MiB. A cold read costs its whole span, so small spans keep lazy
/// starts cheap (a Python start on Debian fetches 1.5x the bytes it reads, against 2.6x with 4 MiB spans);
/// trimmed checkpoint windows (~1.5 KiB each) keep the index near 0.5 % of the image even so.
pub const DEFAULT_SPAN_SIZE: u64 = 1 << 20;

/// How to index.
#[derive(Clone)]
pub struct IndexOptions {
    /// Uncompressed bytes per span (a checkpoint every this many bytes). Default [`DEFAULT_SPAN_SIZE`].
    pub span_size: u64,
    /// Refuse a layer that inflates to more than this many times its compressed size (plus 64 MiB of slack).
    /// 0 disables the check. Default 200.
    pub max_ratio: u64,
    /// Layers read at once. Default 4.
    pub parallel_layers: usize,
    pub progress: Option<Arc<dyn Progress>>,
    /// Where layer parts are kept: a layer whose part is there is not read at all, and every layer read is
    /// kept there. None: every layer is read, nothing is kept.
    pub parts: Option<Arc<dyn PartStore>>,
    /// Take layers' parts from `parts` (true, the default) or read every layer anyway (and refresh the
    /// store with what was read).
    pub reuse: bool,
}

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions {
            span_size: DEFAULT_SPAN_SIZE,
            max_ratio: 200,
            parallel_layers: 4,
            progress: None,
            parts: None,
            reuse: true,
        }
    }
}

/// Where a layer's spans go as the decoder finishes them: the window, compressed at once, into [`Windows`]
/// (which spills to a temporary file), the rest (~80 bytes) into the span table. So indexing holds no raw
/// window beyond the few the decoder is still trimming, whatever the layer's size.
struct SpanSink {
    spans: Vec<SpanSpec>,
    windows: Windows,
    /// Where the windows' digests go (with the compressed chunks' digests).
    chunks: SharedChunks,
}

impl SpanSink {
    fn new(chunks: SharedChunks) -> SpanSink {
        SpanSink { spans: Vec::new(), windows: Windows::new(), chunks }
    }

    fn extend(&mut self, spans: Vec<Span>) -> Result<(), FormatError> {
        for s in spans {
            self.chunks.borrow_mut().span(s.checkpoint.in_offset, s.checkpoint.bits, &s.checkpoint.window, s.root);
            let window = self.windows.push(&s.checkpoint.window)?;
            self.spans.push(SpanSpec {
                out_offset: s.checkpoint.out_offset,
                in_offset: s.checkpoint.in_offset,
                bits: s.checkpoint.bits,
                digest: s.digest,
                window,
            });
        }
        Ok(())
    }
}

/// Indexes `image`, reading its layers from `source`; with the index, what its layers' files load (for
/// [`crate::startup::next_files`] once the index is written).
pub async fn index_image(
    image: &ResolvedImage,
    source: Arc<dyn BlobSource>,
    opts: &IndexOptions,
) -> Result<(IndexContents, KnownLoads), IndexError> {
    let mut parts = layer_parts(&image.layers, &image.config.diff_ids, source, opts).await?;
    let loads = KnownLoads::take_from(&mut parts);
    let base = ImageMeta {
        source: image.reference.to_string(),
        manifest_digest: Some(image.manifest_digest),
        platform: Some(Platform {
            os: image.platform.os.clone(),
            architecture: image.platform.architecture.clone(),
            variant: image.platform.variant.clone(),
        }),
        config: image.config.runtime.clone(),
        span_size: opts.span_size,
        layers: Vec::new(),
        data_location: None,
    };
    let media_types: Vec<String> = image.layers.iter().map(|l| l.media_type.clone()).collect();
    let contents = assemble(base, &media_types, parts, TreeKind::Merged)?;
    let (layers, nodes, spans) = (contents.meta.layers.len(), contents.inodes(), contents.spans.len());
    info!(image = %image.reference, layers, nodes, spans, "indexed");
    Ok((contents, loads))
}

/// The parts of the layers `layers` (bottom first; `diff_ids[i]` is layer `i`'s diff_id from the image
/// config): each taken from `opts.parts` when kept there (and `opts.reuse`), else streamed from `source`,
/// checked, and kept there. Layers are read `opts.parallel_layers` at a time.
pub async fn layer_parts(
    layers: &[Descriptor],
    diff_ids: &[Digest],
    source: Arc<dyn BlobSource>,
    opts: &IndexOptions,
) -> Result<Vec<LayerPart>, IndexError> {
    if !(64 << 10..=1 << 30).contains(&opts.span_size) {
        return Err(IndexError::SpanSize(opts.span_size));
    }
    if diff_ids.len() != layers.len() {
        return Err(IndexError::DiffIdCount { diff_ids: diff_ids.len(), layers: layers.len() });
    }
    // Refuse unknown media types before downloading anything.
    let compressions: Vec<Compression> = layers.iter().map(|l| l.compression()).collect::<Result<_, _>>()?;

    let tasks = layers.iter().cloned().zip(compressions).enumerate().map(|(i, (desc, comp))| {
        let source = source.clone();
        let opts = opts.clone();
        let expected_diff = diff_ids[i];
        async move {
            let part = match reused_part(LayerIndex::from_index(i), &desc, &expected_diff, &opts).await {
                Some(part) => part,
                None => {
                    let part = index_layer(LayerIndex::from_index(i), desc, comp, &expected_diff, source, opts.clone())
                        .await?;
                    keep_part(&part, &opts).await;
                    part
                }
            };
            Ok::<_, IndexError>(part)
        }
    });
    futures::stream::iter(tasks).buffered(opts.parallel_layers.max(1)).try_collect().await
}

/// Streams one layer on a blocking thread (decompression and parsing are CPU work).
async fn index_layer(
    layer: LayerIndex,
    desc: Descriptor,
    comp: Compression,
    diff_id: &Digest,
    source: Arc<dyn BlobSource>,
    opts: IndexOptions,
) -> Result<LayerPart, IndexError> {
    if let Some(p) = &opts.progress {
        p.layer_started(layer, &desc);
    }
    debug!(%layer, digest = %desc.digest, size = desc.size, "streaming layer");
    let stream = source.open_blob(&desc).await?;
    let reader = tokio_util::io::StreamReader::new(stream.map_err(std::io::Error::other));
    let sync = tokio_util::io::SyncIoBridge::new(reader);
    let d = desc.clone();
    let expected = *diff_id;
    let result = tokio::task::spawn_blocking(move || read_layer(layer, &d, comp, &expected, sync, &opts))
        .await
        .map_err(|e| IndexError::Task(e.to_string()))??;
    Ok(result)
}

/// Running digest and byte count of a stream, shared with whoever wraps the reader.
#[derive(Default)]
struct Tally {
    hash: Sha256,
    count: u64,
}

/// Counts and hashes the bytes that pass through it into a shared [`Tally`].
struct Hashing<R> {
    inner: R,
    tally: Rc<RefCell<Tally>>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut t = self.tally.borrow_mut();
        t.hash.update(&buf[..n]);
        t.count += n as u64;
        Ok(n)
    }
}

/// Stops a decompression bomb: fails the read once output exceeds `max_ratio` × input + 64 MiB. Also moves
/// finished spans into `sink` as they come, so their windows are never held raw for the whole layer.
struct Guard<R: Read> {
    inner: IndexingReader<R>,
    max_ratio: u64,
    tripped: Rc<Cell<bool>>,
    sink: SpanSink,
    /// Why storing a window failed (the read then failed with a bare I/O error).
    sink_error: Option<FormatError>,
}

impl<R: Read> Read for Guard<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Err(err) = self.sink.extend(self.inner.take_spans()) {
            self.sink_error = Some(err);
            return Err(std::io::Error::other("storing checkpoint windows failed"));
        }
        if self.max_ratio > 0 {
            let limit = self.inner.compressed_pos().saturating_mul(self.max_ratio).saturating_add(64 << 20);
            if self.inner.uncompressed_pos() > limit {
                self.tripped.set(true);
                return Err(std::io::Error::other("decompression ratio limit exceeded"));
            }
        }
        Ok(n)
    }
}

fn read_layer(
    layer: LayerIndex,
    desc: &Descriptor,
    comp: Compression,
    expected_diff: &Digest,
    blob: impl Read,
    opts: &IndexOptions,
) -> Result<LayerPart, IndexError> {
    let digest = || desc.digest;
    let blob_tally = Rc::new(RefCell::new(Tally::default()));
    let tar_tally = Rc::new(RefCell::new(Tally::default()));
    let tripped = Rc::new(Cell::new(false));
    let chunks = SharedChunks::new(RefCell::new(ChunkRecorder::new(comp)));
    let blob = ChunkHasher { inner: blob, chunks: chunks.clone() };
    let inflating = IndexingReader::new(Hashing { inner: blob, tally: blob_tally.clone() }, comp, opts.span_size);
    let guarded = Guard {
        inner: inflating,
        max_ratio: opts.max_ratio,
        tripped: tripped.clone(),
        sink: SpanSink::new(chunks.clone()),
        sink_error: None,
    };
    let mut tar = TarReader::new(Hashing { inner: guarded, tally: tar_tally.clone() });
    // CPython bytecode, shared objects and executables are read as they stream by, for what each imports,
    // loads or runs (see `startup::next`; the startup set is found from them too).
    tar.keep_data(|path, size, mode| {
        (is_bytecode(path) && size <= PYC_MAX)
            || ((is_shared_object(path) || mode & 0o111 != 0) && size <= SHARED_OBJECT_MAX)
            || (path == LOADER_CACHE && size <= ldcache::MAX_CACHE)
    });
    let mut loads = PartLoads::default();
    let mut entries = PartEntries::default();
    let mut last_report = 0u64;
    loop {
        let entry = match tar.next_entry() {
            Ok(Some(entry)) => entry,
            Ok(None) => break,
            Err(source) => {
                if let Some(source) = tar.get_mut().inner.sink_error.take() {
                    return Err(IndexError::Windows { layer, source });
                }
                return Err(tar_error(layer, desc, source, tripped.get(), opts.max_ratio));
            }
        };
        tar.get_mut().inner.inner.set_span_size(span_size_for(&entry.path, opts.span_size));
        entries.push(&entry).map_err(|source| IndexError::Part { layer, source })?;
        if let Some(data) = tar.kept_data() {
            record_loads(&mut loads, &entry, data);
        }
        if let Some(p) = &opts.progress {
            let pos = tar.position();
            if pos - last_report > 1 << 20 {
                last_report = pos;
                p.layer_progress(layer, blob_tally.borrow().count, entries.len() as u64);
            }
        }
    }
    // Whatever follows the end-of-archive blocks still counts for the digests.
    let mut rest = tar.into_inner();
    if let Err(e) = std::io::copy(&mut rest, &mut std::io::sink()) {
        if let Some(source) = rest.inner.sink_error.take() {
            return Err(IndexError::Windows { layer, source });
        }
        let offset = tar_tally.borrow().count;
        return Err(tar_error(layer, desc, TarError::Io { offset, source: e }, tripped.get(), opts.max_ratio));
    }
    let Guard { inner, mut sink, .. } = rest.inner;
    let summary = inner.finish().map_err(|source| IndexError::Codec { layer, digest: digest(), source })?;
    sink.extend(summary.spans).map_err(|source| IndexError::Windows { layer, source })?;
    let diff_id = Digest::from_sha256(std::mem::take(&mut tar_tally.borrow_mut().hash).finalize().into());
    let Tally { hash, count } = std::mem::take(&mut *blob_tally.borrow_mut());
    let actual = Digest::from_sha256(hash.finalize().into());
    if actual != desc.digest {
        return Err(IndexError::BlobDigest { layer, expected: digest(), actual });
    }
    if count != desc.size {
        return Err(IndexError::BlobSize { layer, digest: digest(), expected: desc.size, actual: count });
    }
    if diff_id != *expected_diff {
        return Err(IndexError::DiffId { layer, digest: digest(), expected: *expected_diff, actual: diff_id });
    }
    debug!(%layer, spans = sink.spans.len(), windows = sink.windows.len(), files = entries.len(), "layer indexed");
    if let Some(p) = &opts.progress {
        p.layer_done(layer);
    }
    let meta = PartMeta {
        digest: desc.digest,
        size: desc.size,
        diff_id,
        uncompressed_size: summary.uncompressed_size,
        compression: comp,
        span_size: opts.span_size,
    };
    let chunks = Some(std::mem::replace(&mut *chunks.borrow_mut(), ChunkRecorder::new(comp)).finish());
    Ok(LayerPart { meta, entries, spans: sink.spans, windows: sink.windows, chunks, loads })
}

/// Where the loader's cache is in a layer (its tar path).
const LOADER_CACHE: &[u8] = b"etc/ld.so.cache";

/// The largest shared object or executable read as it streams by (an ELF file's headers and dynamic section
/// are all over it).
const SHARED_OBJECT_MAX: u64 = 16 << 20;

/// Records what the file `entry` (its bytes `data`) loads: the imports of CPython bytecode, the names an
/// ELF file gives the loader, the `#!` line of a script; a file that is none of these (bytecode of an
/// unknown version, a data file) is left out.
fn record_loads(loads: &mut PartLoads, entry: &TarEntry, data: &[u8]) {
    let data_offset = entry.data_offset;
    if entry.path == LOADER_CACHE {
        let utf8 = |b: Vec<u8>| String::from_utf8(b).ok();
        let mut libraries: Vec<(String, Vec<String>)> = ldcache::parse(data)
            .into_iter()
            .filter_map(|(name, paths)| Some((utf8(name)?, paths.into_iter().filter_map(utf8).collect())))
            .collect();
        libraries.sort();
        loads.loader_caches.push(LoaderCache { data_offset, libraries });
    } else if is_bytecode(&entry.path) {
        if loads.bytecode.len() < MAX_LAYER_MODULES {
            if let Some((version, imports)) = bytecode_imports(data) {
                loads.bytecode.push(ModuleImports { data_offset, version, imports });
            }
        }
    } else if let Some(line) = script_line(data) {
        if let (Ok(line), true) = (std::str::from_utf8(line), loads.scripts.len() < MAX_LAYER_MODULES) {
            loads.scripts.push(ScriptLine { data_offset, line: line.to_owned() });
        }
    } else if loads.elf_files.len() < MAX_LAYER_MODULES {
        let Some((kind, names, interp)) = elf_names(data) else { return };
        let strings = |list: Vec<Vec<u8>>| list.into_iter().filter_map(|s| String::from_utf8(s).ok()).collect();
        loads.elf_files.push(ElfNames {
            data_offset,
            class64: kind.class64,
            big_endian: kind.big_endian,
            machine: kind.machine.0,
            needed: strings(names.needed),
            runpath: strings(names.runpath),
            rpath: strings(names.rpath),
            interp: interp.and_then(|i| String::from_utf8(i).ok()),
        });
    }
}

/// Spans over what a container seldom reads at start are this many times the span size.
const COLD_FACTOR: u64 = 8;
/// Path prefixes of documentation and translations.
const COLD_PREFIXES: [&[u8]; 6] = [
    b"usr/share/doc/",
    b"usr/share/man/",
    b"usr/share/info/",
    b"usr/share/locale/",
    b"usr/share/i18n/",
    b"usr/share/help/",
];

/// The span size wanted over the entry at `path`. A read costs the compressed bytes from the checkpoint
/// before it, so checkpoints are worth most where programs and libraries are: documentation and
/// translations get spans eight times as long, which on a Debian image with Python takes a sixth of the
/// checkpoints off for the same bytes fetched.
fn span_size_for(path: &[u8], span_size: u64) -> u64 {
    if COLD_PREFIXES.iter().any(|p| path.starts_with(p)) {
        span_size.saturating_mul(COLD_FACTOR)
    } else {
        span_size
    }
}

/// Sorts a failure seen through the tar parser: a tripped ratio guard, a decoder error, a read error
/// from the source, or a tar format problem.
fn tar_error(layer: LayerIndex, desc: &Descriptor, err: TarError, tripped: bool, ratio: u64) -> IndexError {
    let digest = desc.digest;
    if tripped {
        return IndexError::Ratio { layer, digest, ratio };
    }
    match err {
        TarError::Io { source, .. } => {
            if !source.get_ref().is_some_and(|e| e.is::<clip_codec::CodecError>()) {
                return IndexError::Read { layer, digest, source };
            }
            match source.into_inner().map(|e| e.downcast::<clip_codec::CodecError>()) {
                Some(Ok(codec)) => IndexError::Codec { layer, digest, source: *codec },
                _ => IndexError::Read { layer, digest, source: std::io::Error::other("decoder failed") },
            }
        }
        other => IndexError::Tar { layer, digest, source: other },
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    /// Text with long-distance repeats: windows are referenced, so they survive trimming.
    fn text(len: usize) -> Vec<u8> {
        let words = ["alpha ", "beta ", "gamma\n", "delta ", "epsilon ", "zeta\n", "eta ", "theta "];
        let mut seed = 0x2545_f491u32;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            out.extend_from_slice(words[(seed >> 16) as usize % words.len()].as_bytes());
            if seed % 5 == 0 {
                out.extend_from_slice(format!("{seed:x}").as_bytes());
            }
        }
        out.truncate(len);
        out
    }

    #[test]
    fn spans_leave_the_decoder_with_stored_windows_while_the_layer_streams() {
        let data = text(8 << 20);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let blob = gz.finish().unwrap();
        let span_size = 64 << 10;
        let mut guard = Guard {
            inner: IndexingReader::new(&blob[..], Compression::Gzip, span_size),
            max_ratio: 0,
            tripped: Rc::default(),
            sink: SpanSink::new(SharedChunks::new(RefCell::new(ChunkRecorder::new(Compression::Gzip)))),
            sink_error: None,
        };
        // Half the layer: every span but the few whose windows are still being trimmed is already stored.
        let mut buf = vec![0u8; 64 << 10];
        let mut read = 0;
        while read < data.len() / 2 {
            read += guard.read(&mut buf).unwrap();
        }
        let stored = guard.sink.spans.len();
        assert!(guard.inner.take_spans().is_empty(), "the decoder held back finished spans");
        let raw = (stored - 1) * 32 * 1024;
        assert!(
            guard.sink.windows.len() < raw as u64 / 4,
            "windows are stored compressed: {} bytes for {stored} spans",
            guard.sink.windows.len()
        );

        std::io::copy(&mut guard.by_ref(), &mut std::io::sink()).unwrap();
        let Guard { inner, mut sink, .. } = guard;
        sink.extend(inner.finish().unwrap().spans).unwrap();
        // Spans end at the first block boundary past `span_size`, so they are about equally long here.
        let cut_by_half = read * sink.spans.len() / data.len();
        assert!(sink.spans.len() > 20, "{} spans", sink.spans.len());
        assert!(stored + 2 >= cut_by_half, "{stored} spans stored after about {cut_by_half} were cut");
        assert!(sink.spans.windows(2).all(|w| w[0].out_offset < w[1].out_offset));
        assert!(sink.spans[1..].iter().all(|s| s.window.len > 0), "every later span resumes with a window");
    }

    #[test]
    fn documentation_and_translations_get_an_eighth_of_the_checkpoints() {
        // 64 translations, then 64 modules, 32 KiB each (4-bit noise: deflate blocks end every few dozen
        // KiB), in a real tar, gzipped.
        let mut builder = tar::Builder::new(Vec::new());
        let mut seed = 7u32;
        let noise: Vec<u8> = (0..4 << 20)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                b'a' + (seed >> 16) as u8 % 16
            })
            .collect();
        let names = (0..64).map(|i| format!("usr/share/locale/l{i}/LC_MESSAGES/pkg.mo"));
        let names: Vec<String> = names.chain((0..64).map(|i| format!("usr/lib/python3/m{i}.py"))).collect();
        for (i, name) in names.iter().enumerate() {
            let mut header = tar::Header::new_ustar();
            header.set_size(32 << 10);
            header.set_mode(0o644);
            builder.append_data(&mut header, name, &noise[i << 15..][..32 << 10]).unwrap();
        }
        let tar = builder.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).unwrap();
        let blob = gz.finish().unwrap();
        let desc = Descriptor::new("application/vnd.oci.image.layer.v1.tar+gzip", Digest::of(&blob), blob.len() as u64);
        let opts = IndexOptions { span_size: 64 << 10, ..IndexOptions::default() };
        let part = read_layer(LayerIndex(0), &desc, Compression::Gzip, &Digest::of(&tar), &blob[..], &opts).unwrap();
        // Where the first module's header starts: 64 entries of a header and 32 KiB.
        let code_start = 64 * (512 + (32 << 10));
        let starts = part.spans.iter().map(|s| s.out_offset).skip(1);
        let (docs, code) = starts.fold((0, 0), |(d, c), at| if at < code_start { (d + 1, c) } else { (d, c + 1) });
        // 2 MiB each: 32 spans of 64 KiB over the code, 4 of 512 KiB over the translations; cuts come up to
        // a deflate block late, and the size changes once the tar parser has read a header, up to 128 KiB
        // behind the decoder.
        assert!((20..=33).contains(&code), "{code} checkpoints over the code");
        assert!((2..=6).contains(&docs), "{docs} checkpoints over the translations");
    }
}
