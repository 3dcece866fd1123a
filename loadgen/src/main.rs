//! `sio-loadgen`: a load generator for Socket.IO servers (Engine.IO v4 / Socket.IO v5) serving
//! the test app of `docs/test-app-protocol.md`. See `bench/README.md`.
//!
//! Every load subcommand prints a human summary on stderr and ONE JSON object (one line) on
//! stdout (`--json FILE` writes it pretty to a file too). `report` turns a `bench/run.sh` result
//! directory into the Markdown table of BENCHMARKS.md.
//!
//! Only loopback addresses are accepted as targets.

mod bcast;
mod common;
mod connect;
mod hold;
mod polling;
mod procs;
mod report;
mod stats;
mod ws;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "sio-loadgen",
    version,
    about = "Socket.IO load generator (connect, fanout, rooms, hold)"
)]
struct Cli {
    /// Runtime worker threads (default: one per core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Open N connections with bounded concurrency: connects/s, failures by kind, latency to
    /// the namespace CONNECT reply (and until upgraded, for polling-upgrade).
    Connect(connect::ConnectArgs),
    /// Receivers + senders emitting `to_all` at rising total rates: deliveries/s, loss, latency.
    Fanout(bcast::FanoutArgs),
    /// Clients in rooms of G; members emit `to_room` to their room at rising total rates.
    Rooms(bcast::RoomsArgs),
    /// N idle websocket connections: server RSS (all processes) per connection.
    Hold(hold::HoldArgs),
    /// Markdown side-by-side table of a bench/run.sh result directory.
    Report(report::ReportArgs),
    /// Merge the JSON results of several `connect` runs (e.g. one measured round each, run in
    /// turn with other servers by bench/run.sh) into one: all their rounds, the median round's
    /// rate, latency percentiles over all rounds, summed failures and CPU.
    ConnectMerge(connect::MergeArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Cmd::Report(a) = &cli.cmd {
        print!("{}", report::render(a)?);
        return Ok(());
    }
    if let Cmd::ConnectMerge(a) = &cli.cmd {
        return common::emit(a.json.as_ref(), &connect::run_merge(a)?);
    }
    let nofile = procs::raise_nofile();
    if nofile < 4096 {
        eprintln!("warning: open-file limit is {nofile}");
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = cli.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.build()?;
    // Start the payload clock before anything is sent.
    let _ = ws::now_us();
    let (json_file, value) = rt.block_on(async move {
        match cli.cmd {
            Cmd::Connect(a) => {
                let f = a.common.json.clone();
                connect::run(a).await.map(|v| (f, v))
            }
            Cmd::Fanout(a) => {
                let f = a.common.json.clone();
                bcast::run_fanout(a).await.map(|v| (f, v))
            }
            Cmd::Rooms(a) => {
                let f = a.common.json.clone();
                bcast::run_rooms(a).await.map(|v| (f, v))
            }
            Cmd::Hold(a) => {
                let f = a.common.json.clone();
                hold::run(a).await.map(|v| (f, v))
            }
            Cmd::Report(_) | Cmd::ConnectMerge(_) => unreachable!("handled above"),
        }
    })?;
    common::emit(json_file.as_ref(), &value)?;
    // Do not wait for lingering connection tasks.
    rt.shutdown_background();
    Ok(())
}
