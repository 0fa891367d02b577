//! What both plugins share: reading the request, version negotiation, logging, and printing
//! exactly one JSON document (the result or the error) on stdout.

use std::io::{Read, Write};
use std::process::ExitCode;

use serde_json::{Value, json};

use crate::config::NetConf;
use crate::env::{Command, Request};
use crate::error::{Error, Result};
use crate::version::{self, Version};

/// One call of a plugin.
#[derive(Debug)]
pub struct Invocation {
    /// The environment's part.
    pub request: Request,
    /// The config on stdin.
    pub conf: NetConf,
    /// The config's version.
    pub version: Version,
    /// The config's bytes, passed on unchanged to a delegated plugin.
    pub stdin: Vec<u8>,
}

impl Invocation {
    /// Fails unless the config's version has the command.
    pub fn require(&self, since: Version, command: &str) -> Result<()> {
        self.version.require(since, command)
    }

    /// A result in the config's version.
    pub fn print(&self, result: &crate::result::CniResult) -> Value {
        result.to_json(self.version, &self.conf.cni_version)
    }
}

/// Runs a plugin: `handle` gets the parsed invocation and returns what to print (nothing for
/// DEL, GC and STATUS).
pub fn run<F>(name: &str, about: &str, handle: F) -> ExitCode
where
    F: AsyncFnOnce(&Invocation) -> Result<Option<Value>>,
{
    if std::env::args().skip(1).any(|a| matches!(a.as_str(), "-h" | "--help" | "--version" | "-V")) {
        println!("{}", help(name, about));
        return ExitCode::SUCCESS;
    }
    let mut error_version = version::LATEST.to_owned();
    match invoke(&mut error_version, handle) {
        Ok(Some(output)) => {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{output}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(code = e.code(), error = %e, "{name} failed");
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{}", e.to_json(&error_version));
            ExitCode::FAILURE
        }
    }
}

/// The largest network config read from stdin: real ones are a few KiB.
const MAX_CONFIG: u64 = 1024 * 1024;

fn invoke<F>(error_version: &mut String, handle: F) -> Result<Option<Value>>
where
    F: AsyncFnOnce(&Invocation) -> Result<Option<Value>>,
{
    let request = Request::from_env(|k| std::env::var(k).ok())?;
    let mut stdin = Vec::new();
    std::io::stdin()
        .take(MAX_CONFIG + 1)
        .read_to_end(&mut stdin)
        .map_err(|e| Error::Io(format!("reading the config on stdin: {e}")))?;
    if stdin.len() as u64 > MAX_CONFIG {
        return Err(Error::Decode(format!("the config on stdin is larger than {} KiB", MAX_CONFIG / 1024)));
    }
    if request.command == Command::Version {
        return Ok(Some(version_answer(&stdin)));
    }
    let conf = NetConf::parse(&stdin)?;
    let version = Version::supported(&conf.cni_version)?;
    error_version.clone_from(&conf.cni_version);
    init_logging(&conf);
    tracing::debug!(command = ?request.command, container = %request.container_id, "request");
    let invocation = Invocation { request, conf, version, stdin };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("starting the runtime: {e}")))?;
    runtime.block_on(handle(&invocation))
}

/// VERSION: the versions spoken, answered in the version the config asked for (or the latest).
fn version_answer(stdin: &[u8]) -> Value {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_owned))
        .filter(|v| version::SUPPORTED.contains(&v.as_str()))
        .unwrap_or_else(|| version::LATEST.to_owned());
    json!({ "cniVersion": asked, "supportedVersions": version::SUPPORTED })
}

fn init_logging(conf: &NetConf) {
    let level = conf.log_level.as_deref().unwrap_or("warn").to_lowercase();
    let filter = tracing_subscriber::EnvFilter::try_new(format!("{level},rtnetlink=warn,netlink_proto=warn"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false);
    let file = conf.log_file_path.as_ref().and_then(|path| {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::OpenOptions::new().create(true).append(true).open(path).ok()
    });
    let _ = match file {
        Some(file) => builder.with_writer(std::sync::Mutex::new(file)).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}

fn help(name: &str, about: &str) -> String {
    format!(
        "{name} {}: {about}\n\n\
         A CNI plugin: container runtimes run it with CNI_COMMAND (ADD, DEL, CHECK, VERSION, GC,\n\
         STATUS), CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_PATH and CNI_ARGS in the environment\n\
         and the network config on stdin. It prints one JSON document on stdout: the result, or a\n\
         CNI error {{\"code\", \"msg\", \"details\"}} with exit status 1.\n\n\
         CNI versions: {}\n\
         Error codes: 1 incompatible version, 2 unsupported field, 3 unknown container,\n\
         4 invalid environment variable, 5 I/O, 6 decode, 7 invalid network config,\n\
         11 try again later, 50 not available (STATUS), 100 no address available,\n\
         101 CHECK found a difference, 999 other (the message says what).",
        env!("CARGO_PKG_VERSION"),
        version::SUPPORTED.join(", ")
    )
}
