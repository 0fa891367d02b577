//! brindle-bgp: brindle's BGP speaker on its own, for debugging and interop testing.
//!
//! Exit codes: 0 success, 1 a runtime failure (cannot listen, speaker unreachable),
//! 2 a usage or configuration error.

mod config;
mod control;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use brindle_bgp::speaker::Speaker;
use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};

/// brindle's BGP-4 speaker, standalone.
#[derive(Parser)]
#[command(version, about, after_help = "Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the speaker until SIGTERM or SIGINT (a graceful shutdown: peers are told why).
    Run {
        /// The TOML configuration.
        #[arg(long)]
        config: PathBuf,
        /// Log level (error, warn, info, debug, trace).
        #[arg(long, default_value = "warn", env = "BRINDLE_LOG")]
        log: String,
    },
    /// Show the peers of a running speaker.
    Status {
        /// The speaker's control socket.
        #[arg(long, default_value = "/run/brindle-bgp.sock")]
        socket: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the routes of a running speaker.
    Routes {
        /// The speaker's control socket.
        #[arg(long, default_value = "/run/brindle-bgp.sock")]
        socket: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One thread, as BIRD: the speaker's tasks hand work to each other constantly, and
    // cross-thread wake-ups cost more than they parallelise.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("brindle-bgp: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Run { config, log } => run(config, &log).await,
            Command::Status { socket, json } => show(&socket, "status", json).await,
            Command::Routes { socket, json } => show(&socket, "routes", json).await,
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("brindle-bgp: {e:#}");
            let usage = e.chain().any(|c| c.is::<config::ConfigError>());
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

async fn run(path: PathBuf, log: &str) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(log))
        .with_writer(std::io::stderr)
        .init();
    let config = config::Config::load(&path)?;
    let originations = config.originations()?;
    let speaker = Speaker::start(config.speaker()).await?;
    speaker.set_peers(config.peers()).await?;
    for (prefix, attrs) in originations {
        speaker.originate(prefix, attrs).await?;
    }
    let socket = config.control_socket.clone();
    let control = tokio::spawn({
        let speaker = speaker.clone();
        async move { control::serve(&socket, speaker).await }
    });
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        result = control => {
            result.context("control socket task")??;
        }
    }
    speaker.shutdown("brindle-bgp is stopping").await?;
    let _ = std::fs::remove_file(&config.control_socket);
    Ok(())
}

async fn show(socket: &std::path::Path, what: &str, json: bool) -> anyhow::Result<()> {
    let value = control::request(socket, what).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let empty = Vec::new();
    if what == "status" {
        println!(
            "{:<24} {:>10} {:<12} {:<11} {:>8} {:>8} {:>8}  LAST ERROR",
            "PEER", "AS", "STATE", "BFD", "RECV", "ACCEPT", "SENT"
        );
        for p in value["peers"].as_array().unwrap_or(&empty) {
            println!(
                "{:<24} {:>10} {:<12} {:<11} {:>8} {:>8} {:>8}  {}",
                p["address"].as_str().unwrap_or("?"),
                p["asn"].as_u64().unwrap_or(0),
                p["state"].as_str().unwrap_or("?"),
                p["bfd"]["state"].as_str().unwrap_or("-"),
                p["prefixes_received"].as_u64().unwrap_or(0),
                p["prefixes_accepted"].as_u64().unwrap_or(0),
                p["prefixes_advertised"].as_u64().unwrap_or(0),
                p["last_error"].as_str().unwrap_or("-"),
            );
        }
    } else {
        println!("{:<2} {:<24} {:<24} {:<24} AS PATH", "", "PREFIX", "NEXT HOP", "FROM");
        for r in value["routes"].as_array().unwrap_or(&empty) {
            let path: Vec<String> = r["as_path"].as_array().unwrap_or(&empty).iter().map(ToString::to_string).collect();
            println!(
                "{:<2} {:<24} {:<24} {:<24} {}",
                match (r["best"].as_bool(), r["stale"].as_bool()) {
                    (Some(true), Some(true)) => "*s",
                    (Some(true), _) => "*",
                    (_, Some(true)) => "s",
                    _ => "",
                },
                r["prefix"].as_str().unwrap_or("?"),
                r["next_hop"].as_str().unwrap_or("-"),
                r["peer"].as_str().unwrap_or("local"),
                path.join(" "),
            );
        }
    }
    Ok(())
}
