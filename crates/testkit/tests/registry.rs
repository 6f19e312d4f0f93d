//! The real registry: start/stop, pushing layouts with skopeo (digests preserved for every compression),
//! multi-platform indexes, basic auth.

use std::process::Command;

use clip_testkit::*;
use serde_json::Value;

/// `skopeo inspect [--raw] docker://REF`, with `extra` arguments, parsed as JSON.
fn inspect(reference: &str, raw: bool, extra: &[&str]) -> (Vec<u8>, Value) {
    let mut cmd = Command::new("skopeo");
    cmd.args(["inspect", "--tls-verify=false"]).args(extra);
    if raw {
        cmd.arg("--raw");
    }
    let out = run(cmd.arg(format!("docker://{reference}")));
    let json = serde_json::from_slice(&out).expect("skopeo inspect prints JSON");
    (out, json)
}

fn digests(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().map(|d| d.as_str().unwrap_or_default().to_owned()).collect()
}

#[test]
fn push_keeps_every_blob_as_built() {
    let registry = Registry::start();
    assert_eq!(registry.get("/v2/", &[]).status, 200);
    let mut layout = OciLayoutBuilder::new();
    for c in Compression::ALL {
        let built = layout.add_image(c.name(), &conformance_image(c));
        registry.push(layout.path(), c.name(), &format!("conformance:{}", c.name()));
        let reference = registry.image_ref(&format!("conformance:{}", c.name()));

        // skopeo sees the layers, with the digests we computed (no recompression: the plain tar layer
        // stays a plain tar, which skopeo would otherwise gzip for a registry).
        let (_, info) = inspect(&reference, false, &[]);
        let want: Vec<String> = built.layers.iter().map(|d| d.digest.to_string()).collect();
        assert_eq!(digests(&info["Layers"]), want, "{c:?}");
        assert_eq!(info["Digest"], built.manifest.digest.as_str(), "{c:?}");
        assert_eq!(info["Env"][2], "CLIP_TEST=conformance");

        // The manifest is byte-identical, with the right media types.
        let (raw, manifest) = inspect(&reference, true, &[]);
        assert_eq!(raw, built.manifest_json, "{c:?}");
        for layer in manifest["layers"].as_array().expect("layers") {
            assert_eq!(layer["mediaType"], clip_testkit::layer_media_type(c));
        }

        // The registry stores the very blob bytes.
        let first = &built.layers[0];
        let stored = std::fs::read(registry.blob_path(&first.digest)).expect("blob in registry storage");
        assert_eq!(Digest::sha256(&stored), first.digest);

        // And serves the manifest over plain HTTP.
        let r = registry.get(&format!("/v2/conformance/manifests/{}", c.name()), &[("Accept", MEDIA_TYPE_MANIFEST)]);
        assert_eq!(r.status, 200);
        assert_eq!(r.body, built.manifest_json);
    }
}

#[test]
fn multi_platform_index_is_pushed_whole() {
    let registry = Registry::start();
    let image = |arch: &str| {
        let tar = LayerBuilder::new().dir("etc").file("etc/arch", format!("{arch}\n")).finish();
        let mut image = Image::new(vec![Layer::new(tar, Compression::Gzip)]);
        image.config.architecture = arch.to_owned();
        if arch == "arm64" {
            image.config.variant = Some("v8".into());
        }
        image
    };
    let mut layout = OciLayoutBuilder::new();
    let built = layout.add_index("multi", &[image("amd64"), image("arm64")]);
    registry.push(layout.path(), "multi", "multi:latest");
    let reference = registry.image_ref("multi:latest");

    let (raw, index) = inspect(&reference, true, &[]);
    assert_eq!(raw, built.index_json);
    assert_eq!(index["mediaType"], MEDIA_TYPE_INDEX);
    let platforms: Vec<(String, String)> = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| (m["platform"]["os"].to_string(), m["platform"]["architecture"].to_string()))
        .collect();
    assert_eq!(platforms, [("\"linux\"".into(), "\"amd64\"".into()), ("\"linux\"".into(), "\"arm64\"".into())]);

    for (platform, manifest) in &built.manifests {
        let mut args = vec!["--override-arch", platform.architecture.as_str()];
        if let Some(v) = &platform.variant {
            args.extend(["--override-variant", v.as_str()]);
        }
        let (_, info) = inspect(&reference, false, &args);
        assert_eq!(info["Architecture"], platform.architecture.as_str());
        assert_eq!(digests(&info["Layers"]), [manifest.layers[0].digest.to_string()]);
    }
    assert_ne!(built.manifests[0].1.layers[0].digest, built.manifests[1].1.layers[0].digest);
}

#[test]
fn auth_registry_rejects_anonymous_and_wrong_credentials() {
    let registry = Registry::start_with_auth("clip", "s3cret");
    let anonymous = http_get(&registry.addr(), "/v2/", &[]).expect("registry answers");
    assert_eq!(anonymous.status, 401);
    assert!(anonymous.header("www-authenticate").is_some_and(|h| h.starts_with("Basic")));
    assert_eq!(registry.get("/v2/", &[]).status, 200);

    let tar = LayerBuilder::new().file("f", "x").finish();
    let mut layout = OciLayoutBuilder::new();
    let built = layout.add_image("v1", &Image::new(vec![Layer::new(tar, Compression::Gzip)]));
    registry.push(layout.path(), "v1", "private:v1");

    let reference = registry.image_ref("private:v1");
    let anon =
        try_run(Command::new("skopeo").args(["inspect", "--tls-verify=false"]).arg(format!("docker://{reference}")));
    assert!(anon.is_err(), "anonymous inspect must fail");
    let wrong = try_run(
        Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--creds", "clip:wrong"])
            .arg(format!("docker://{reference}")),
    );
    assert!(wrong.is_err(), "wrong password must fail");
    let ok = run(Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--raw", "--creds", "clip:s3cret"])
        .arg(format!("docker://{reference}")));
    assert_eq!(ok, built.manifest_json);
}

#[test]
fn registries_run_side_by_side_and_die_on_drop() {
    let a = Registry::start();
    let b = Registry::start();
    assert_ne!(a.addr(), b.addr());
    let addr = a.addr();
    assert_eq!(http_get(&addr, "/v2/", &[]).expect("running").status, 200);
    drop(a);
    assert!(http_get(&addr, "/v2/", &[]).is_err(), "registry still answers after drop");
    assert_eq!(b.get("/v2/", &[]).status, 200);
}

#[test]
fn big_gzip_layer_is_about_50_mib_and_pushes() {
    let layer = big_gzip_layer(50);
    let size = layer.blob().len();
    assert!((48 << 20..56 << 20).contains(&size), "compressed size {size}");
    let files = tar::Archive::new(layer.tar()).entries().expect("entries").count();
    assert!(files > 400, "only {files} entries");

    let registry = Registry::start();
    let mut layout = OciLayoutBuilder::new();
    let built = layout.add_image("big", &Image::new(vec![layer]));
    registry.push(layout.path(), "big", "big:v1");
    let (_, info) = inspect(&registry.image_ref("big:v1"), false, &[]);
    assert_eq!(digests(&info["Layers"]), [built.layers[0].digest.to_string()]);
}
