//! Fuzzes what clip reads from a registry before any layer: manifests and image indexes
//! (`clip_source::parse_manifest`), image configs (`clip_source::parse_image_config`), and the image
//! references and platforms users type. Any bytes give a value or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(clip_source::ParsedManifest::Image { layers, .. }) = clip_source::parse_manifest(data) {
        for layer in &layers {
            // Every layer of an accepted manifest has a compression clip can read.
            layer.compression().expect("accepted layers have a known media type");
        }
    }
    let _ = clip_source::parse_image_config(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(reference) = text.parse::<clip_source::ImageRef>() {
            // What parses displays as something that parses to the same reference.
            let again: clip_source::ImageRef = reference.to_string().parse().expect("a displayed reference parses");
            assert_eq!(again, reference);
        }
        let _ = text.parse::<clip_source::Platform>();
        let _ = text.parse::<clip_source::Digest>();
    }
});
