//! A fake registry in the test process that misbehaves on purpose: it ignores Range headers and
//! cuts bodies short. The real registry honours ranges, so this is the only way to prove the
//! 200-instead-of-206 path streams instead of buffering.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use clip_source::{BlobSource, Descriptor, Digest, RegistrySource, SourceError, SourceOptions};
use common::pattern;
use futures::StreamExt;

/// Serves `blob` for any `/blobs/` path: whole, with status 200, ignoring Range. When `truncate`
/// is set, closes the connection after that many body bytes while announcing the full length.
fn serve(blob: Arc<Vec<u8>>, truncate: Option<usize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let blob = Arc::clone(&blob);
            std::thread::spawn(move || handle(conn, &blob, truncate));
        }
    });
    addr
}

fn handle(mut conn: TcpStream, blob: &[u8], truncate: Option<usize>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => return,
            Ok(_) if header == "\r\n" => break,
            Ok(_) => {}
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("").to_owned();
    if path.contains("/blobs/") {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            blob.len()
        );
        if conn.write_all(head.as_bytes()).is_err() {
            return;
        }
        let body = &blob[..truncate.unwrap_or(blob.len())];
        for chunk in body.chunks(64 * 1024) {
            if conn.write_all(chunk).is_err() {
                return; // the client hung up, as it should once it has its range
            }
        }
    } else {
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
    }
}

async fn source_for(addr: &str) -> RegistrySource {
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("config.json"), "{}").unwrap();
    let opts = SourceOptions { docker_config: Some(empty.path().to_owned()), ..SourceOptions::default() };
    RegistrySource::connect(addr, "repo", &opts).await.unwrap()
}

#[tokio::test]
async fn range_answered_with_the_whole_blob_is_skipped_not_buffered() {
    let size = 32 << 20;
    let blob = Arc::new(pattern(size, 9));
    let desc = Descriptor::new(clip_source::media_types::OCI_LAYER_TAR, Digest::of(&blob), size as u64);
    let addr = serve(Arc::clone(&blob), None);
    let source = source_for(&addr).await;

    let got = source.read_range(&desc, 300_000..300_100).await.unwrap();
    assert_eq!(&got[..], &blob[300_000..300_100]);
    let stats = source.stats();
    assert_eq!(stats.requests, 1);
    assert!(stats.bytes >= 300_100, "{stats:?}");
    assert!(stats.bytes < (size as u64) / 4, "read far past the range: {stats:?}");
}

#[tokio::test]
async fn bodies_cut_short_are_errors() {
    let size = 1 << 20;
    let blob = Arc::new(pattern(size, 10));
    let desc = Descriptor::new(clip_source::media_types::OCI_LAYER_TAR, Digest::of(&blob), size as u64);
    let addr = serve(Arc::clone(&blob), Some(1000));
    let source = source_for(&addr).await;

    let err = source.read_range(&desc, 900..2000).await.unwrap_err();
    assert!(matches!(err, SourceError::Transfer { .. }), "{err}");

    let mut stream = source.open_blob(&desc).await.unwrap();
    let mut received = 0;
    let mut failure = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => received += c.len(),
            Err(e) => failure = Some(e),
        }
    }
    assert_eq!(received, 1000);
    assert!(matches!(failure, Some(SourceError::Transfer { .. })), "{failure:?}");
}
