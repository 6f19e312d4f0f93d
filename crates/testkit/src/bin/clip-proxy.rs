//! `clip-proxy`: the testkit's shaping, counting HTTP proxy ([`clip_testkit::Proxy`]) as a program, for
//! shell benchmarks.
//!
//! ```text
//! clip-proxy --listen 127.0.0.1:5001 --upstream 127.0.0.1:5000 --rate-mbit 100 --rtt-ms 20 --stats-file stats.json
//! ```
//!
//! Runs until SIGTERM or SIGINT. With `--stats-file`, the counters are written there as JSON
//! (`{"requests":..,"blob_requests":..,"blob_bytes":..,"bytes":..,...}`) at start and after every request,
//! atomically, so a script can diff them around each run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use clip_testkit::{Proxy, ProxyConfig};
use nix::sys::signal::{SigSet, Signal};

/// An HTTP/1.1 proxy that caps bandwidth, adds round-trip time and counts the bytes an upstream registry
/// sends.
#[derive(Debug, Parser)]
#[command(name = "clip-proxy")]
struct Args {
    /// Address to listen on (HOST:PORT).
    #[arg(long)]
    listen: String,
    /// Address of the upstream registry (HOST:PORT).
    #[arg(long)]
    upstream: String,
    /// Cap on the bytes sent to clients, in megabits (10^6 bits) per second, shared by all connections.
    #[arg(long)]
    rate_mbit: Option<f64>,
    /// Added round-trip time in milliseconds (half before forwarding a request, half before its response).
    #[arg(long, default_value_t = 0)]
    rtt_ms: u64,
    /// Where to write the counters as JSON after every request.
    #[arg(long)]
    stats_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.rate_mbit.is_some_and(|r| r.is_nan() || r <= 0.0) {
        eprintln!("clip-proxy: --rate-mbit must be a positive number");
        return ExitCode::from(2);
    }

    // Block the signals before any thread starts (threads inherit the mask), then wait for them here.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    if let Err(e) = signals.thread_block() {
        eprintln!("clip-proxy: cannot block SIGTERM/SIGINT: {e}");
        return ExitCode::FAILURE;
    }

    let mut config = ProxyConfig { stats_file: args.stats_file, ..ProxyConfig::default() }
        .with_rtt(Duration::from_millis(args.rtt_ms));
    if let Some(mbit) = args.rate_mbit {
        config = config.with_rate_mbit(mbit);
    }
    let proxy = match Proxy::bind(&args.listen, &args.upstream, config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("clip-proxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("clip-proxy: listening on {} for {}", proxy.addr(), proxy.upstream());
    match signals.wait() {
        Ok(signal) => eprintln!("clip-proxy: {signal}, stopping; {}", proxy.stats().to_json()),
        Err(e) => eprintln!("clip-proxy: waiting for signals failed: {e}"),
    }
    drop(proxy);
    ExitCode::SUCCESS
}
