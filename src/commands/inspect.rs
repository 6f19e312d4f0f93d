//! `clip inspect`: kind, source, layers, spans and sizes of a .clip file; for an index, each layer's part key
//! and whether the part is in the local part directory (the index itself does not record whether a part was
//! reused: it is the same bytes either way), and its startup set (the paths with `-v` or `--json`).

use std::io::Write;

use clip_format::layout;
use clip_image::{load_archive, OpenOptions};

use crate::args::InspectArgs;

/// `verbose` (`-v`): list the startup set's paths, not only count them.
pub async fn run(a: InspectArgs, verbose: bool) -> anyhow::Result<()> {
    let opts = OpenOptions { s3: a.s3.options(), ..OpenOptions::default() };
    let loaded = load_archive(&a.file, &opts).await?;
    let archive = &loaded.archive;
    let meta = archive.meta();
    let file_size = loaded.size;
    let image_size: u64 = meta.layers.iter().map(|l| l.size).sum();
    let windows = archive.section(layout::SEC_WIND).map_or(0, |s| s.stored_len);
    let store = a.parts.store();
    let parts: Vec<(String, bool)> = match archive.kind() {
        clip_format::ArchiveKind::IndexOnly => clip_format::index_part_keys(meta)
            .into_iter()
            .map(|key| {
                let kept = store.path(&key).is_file();
                (key, kept)
            })
            .collect(),
        _ => Vec::new(),
    };
    let startup: Vec<String> = archive
        .startup_set()?
        .into_iter()
        .map(|ino| Ok(String::from_utf8_lossy(&archive.path_of(ino)?).into_owned()))
        .collect::<Result<_, clip_format::FormatError>>()?;
    let mut out = crate::output::stdout();
    if a.json {
        let sections: Vec<_> = archive
            .sections()
            .iter()
            .map(|s| serde_json::json!({"id": s.name(), "offset": s.offset, "stored": s.stored_len, "raw": s.raw_len}))
            .collect();
        let v = serde_json::json!({
            "kind": match archive.kind() { clip_format::ArchiveKind::IndexOnly => "index-only", _ => "data-carrying" },
            "file_size": file_size,
            "mounted_size": archive.mounted_size(),
            "windows_size": windows,
            "image_size": image_size,
            "nodes": archive.node_count(),
            "spans": archive.span_count(),
            "startup_set": startup,
            "next_files": archive.next_files().len(),
            "sections": sections,
            "parts_dir": store.dir(),
            "parts": parts.iter().map(|(key, kept)| serde_json::json!({"key": key, "kept": kept})).collect::<Vec<_>>(),
            "meta": meta,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        out.flush()?;
        return Ok(());
    }
    writeln!(out, "kind:      {}", archive.kind())?;
    writeln!(out, "source:    {}", meta.source)?;
    if let Some(data) = &meta.data_location {
        writeln!(out, "data:      {data} (this file holds the metadata only)")?;
    }
    if let Some(d) = &meta.manifest_digest {
        writeln!(out, "manifest:  {d}")?;
    }
    if let Some(p) = &meta.platform {
        writeln!(
            out,
            "platform:  {}/{}{}",
            p.os,
            p.architecture,
            p.variant.as_ref().map(|v| format!("/{v}")).unwrap_or_default()
        )?;
    }
    writeln!(out, "inodes:    {}", archive.node_count())?;
    writeln!(out, "spans:     {} (every {} MiB)", archive.span_count(), meta.span_size >> 20)?;
    if archive.kind() == clip_format::ArchiveKind::DataCarrying {
        let data = archive.section(layout::SEC_DATA).map_or(0, |s| s.stored_len);
        writeln!(
            out,
            "size:      {file_size} bytes ({} loaded at mount, {data} of file data stored here)",
            archive.mounted_size()
        )?;
    } else {
        writeln!(
            out,
            "size:      {file_size} bytes ({} loaded at mount, {windows} of checkpoint windows) = {:.3}% of the {image_size}-byte image",
            archive.mounted_size(),
            100.0 * file_size as f64 / image_size.max(1) as f64
        )?;
    }
    writeln!(out, "layers:")?;
    for (i, l) in meta.layers.iter().enumerate() {
        writeln!(
            out,
            "  {i:>2} {} {:<5} {:>12} -> {:>12} bytes, {} spans",
            l.digest, l.compression, l.size, l.uncompressed_size, l.span_count
        )?;
        if let Some((key, kept)) = parts.get(i) {
            let state = if *kept { "kept" } else { "not kept" };
            writeln!(out, "     part {key} ({state} in {})", store.dir().display())?;
        }
    }
    let c = &meta.config;
    if !c.entrypoint.is_empty() || !c.cmd.is_empty() {
        writeln!(out, "command:   {:?} {:?}", c.entrypoint, c.cmd)?;
    }
    if archive.kind() == clip_format::ArchiveKind::IndexOnly {
        writeln!(out, "startup:   {} files (fetched at once when a mount starts)", startup.len())?;
        for path in startup.iter().filter(|_| verbose) {
            writeln!(out, "  {path}")?;
        }
        let next = archive.next_files().len();
        writeln!(
            out,
            "next:      {next} modules and libraries whose imports and libraries a mount loads at their first open"
        )?;
    }
    out.flush()?;
    Ok(())
}
