//! brindle-render: renders template resources from the datastore into files, confd-style.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use brindle_render::TemplateResource;
use brindle_render::watch::{self, Template};
use clap::Parser;

/// Renders templates over datastore resources into files, checks and installs them, and
/// reloads whoever reads them, again whenever the keys they depend on change.
///
/// Exit codes: 0 when `--once` rendered everything or the watch ended; 1 on a start-up
/// failure (unreadable resources or templates, datastore unreachable).
#[derive(Parser)]
#[command(version, about, long_about)]
struct Args {
    /// The datastore selection.
    #[arg(long, env = "BRINDLE_DATASTORE")]
    datastore: String,
    /// Holds `conf.d/*.toml` (template resources) and `templates/` (their templates).
    #[arg(long, default_value = "/etc/brindle/render")]
    confdir: PathBuf,
    /// This node's name (templates see it as `node`).
    #[arg(long, env = "NODENAME")]
    node: String,
    /// Render once and exit.
    #[arg(long)]
    once: bool,
    /// How long a burst of changes may last before rendering.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "500ms")]
    debounce: Duration,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .init();
    let resources = TemplateResource::load_dir(&args.confdir.join("conf.d"))?;
    let templates = resources
        .into_iter()
        .map(|resource| {
            let path = args.confdir.join("templates").join(&resource.src);
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("reading template {}", path.display()))?;
            Ok(Template { resource, text })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let store = brindle_datastore::connect(&args.datastore).await.context("connecting to the datastore")?;
        watch::run(store, &templates, &args.node, args.debounce, args.once).await?;
        anyhow::Ok(())
    })
}
