//! `ledger`: starts a 3-member ledger cluster in this process (each member a Tally
//! server with the ledger's line-protocol front end on its own loopback port, a shared
//! cluster secret between members), runs concurrent transfers from several clients over
//! TCP while the leader is stopped and restarted, and checks the books at the end: money
//! is neither created nor lost, no balance went below zero.

use std::time::{Duration, Instant};

use clap::Parser;
use rand::Rng;
use tally_ledger_example::cluster::{ClusterOptions, LedgerClient, LocalCluster};
use tally_ledger_example::ledger::LedgerReply;

#[derive(Parser, Debug)]
#[command(
    name = "ledger",
    version,
    about = "A replicated ledger on Tally (example database)"
)]
struct Args {
    /// Directory for the replicas' logs and snapshots (default: a temporary directory,
    /// removed at exit).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Accounts opened at the start, each with 1000 units.
    #[arg(long, default_value_t = 20)]
    accounts: usize,
    /// Client threads making transfers.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Transfers per client.
    #[arg(long, default_value_t = 500)]
    transfers: usize,
}

const INITIAL_BALANCE: u64 = 1000;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args = Args::parse();
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("ledger: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let temp = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let root = args
        .dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let options = ClusterOptions {
        snapshot_every: 2000,
        ..ClusterOptions::default()
    };
    let cluster = LocalCluster::start(&root, &options).map_err(|e| e.to_string())?;
    let leader = cluster
        .wait_for_leader(Duration::from_secs(30))
        .ok_or("no leader elected")?;
    let addrs: Vec<String> = cluster
        .client_addrs()
        .iter()
        .map(|addr| addr.to_string())
        .collect();
    println!(
        "cluster: 3 members under {}, clients at {}, leader {leader}",
        root.display(),
        addrs.join(" ")
    );

    let mut setup = LedgerClient::new(cluster.client_addrs());
    for account in 0..args.accounts {
        match setup
            .execute(&format!("open acct{account} {INITIAL_BALANCE}"))
            .map_err(|e| e.to_string())?
        {
            LedgerReply::Done | LedgerReply::Refused(_) => {} // Refused: reopened dir.
            other => return Err(format!("open answered {other:?}")),
        }
    }
    let started = Instant::now();
    let (applied, refused, retries) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..args.clients)
            .map(|_| scope.spawn(|| transfers(&cluster, args.accounts, args.transfers)))
            .collect();
        // Halfway through, the leader's machine "crashes" and comes back.
        std::thread::sleep(Duration::from_millis(500));
        if let Some(leader) = cluster.leader() {
            println!("stopping the leader (node {leader}) under load");
            let _ = cluster.stop(leader);
            std::thread::sleep(Duration::from_millis(800));
            println!("restarting node {leader} from its directory");
            if let Err(error) = cluster.restart(leader) {
                eprintln!("restart failed: {error}");
            }
        }
        workers.into_iter().fold((0, 0, 0), |sum, worker| {
            let (a, r, t) = worker.join().unwrap_or((0, 0, 0));
            (sum.0 + a, sum.1 + r, sum.2 + t)
        })
    });
    println!(
        "transfers: {applied} applied, {refused} refused (insufficient funds), {retries} retried, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let total = match setup.query("total").map_err(|e| e.to_string())? {
        LedgerReply::Amount(total) => total,
        other => return Err(format!("total answered {other:?}")),
    };
    let expected = args.accounts as u64 * INITIAL_BALANCE;
    println!("total: {total} (expected {expected})");
    if total != expected {
        return Err(format!("the books do not balance: {total} != {expected}"));
    }
    let restored_total = snapshot_and_restore(&cluster)?;
    cluster.shutdown().map_err(|e| e.to_string())?;
    if restored_total != expected {
        return Err(format!(
            "the restored books do not balance: {restored_total} != {expected}"
        ));
    }
    println!("ok: no money created or lost");
    Ok(())
}

/// Takes a snapshot on the leader, seeds a new one-member cluster from the file and
/// returns the total it reports.
fn snapshot_and_restore(cluster: &LocalCluster) -> Result<u64, String> {
    let leader = cluster
        .wait_for_leader(Duration::from_secs(30))
        .ok_or("no leader for the snapshot")?;
    let taken = cluster
        .handle(leader)
        .ok_or("the leader stopped")?
        .snapshot_now()
        .map_err(|e| format!("snapshot: {e}"))?;
    let scratch = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let copy = scratch.path().join(&taken.name);
    std::fs::copy(&taken.path, &copy).map_err(|e| format!("copy {}: {e}", taken.path))?;
    let options = ClusterOptions {
        size: 1,
        restore_from: Some(copy),
        ..ClusterOptions::default()
    };
    let restored = LocalCluster::start(&scratch.path().join("restored"), &options)
        .map_err(|e| e.to_string())?;
    let total = match LedgerClient::new(restored.client_addrs())
        .query("total")
        .map_err(|e| e.to_string())?
    {
        LedgerReply::Amount(total) => total,
        other => return Err(format!("total answered {other:?}")),
    };
    println!(
        "snapshot at index {} ({} bytes) restored into a new one-member cluster: total {total}",
        taken.index, taken.size_bytes
    );
    restored.shutdown().map_err(|e| e.to_string())?;
    Ok(total)
}

/// One client's random transfers; returns (applied, refused, retried attempts).
fn transfers(cluster: &LocalCluster, accounts: usize, count: usize) -> (u64, u64, u64) {
    let mut client = LedgerClient::new(cluster.client_addrs());
    let mut rng = rand::thread_rng();
    let (mut applied, mut refused) = (0, 0);
    for _ in 0..count {
        let from = rng.gen_range(0..accounts);
        let to = rng.gen_range(0..accounts);
        let amount = rng.gen_range(1..400);
        match client.execute(&format!("transfer acct{from} acct{to} {amount}")) {
            Ok(LedgerReply::Done) => applied += 1,
            Ok(_) => refused += 1,
            Err(error) => {
                eprintln!("a transfer gave up: {error}");
                break;
            }
        }
    }
    (applied, refused, client.retries)
}
