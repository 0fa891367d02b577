//! The agent's log filter: `--log` (or BRINDLE_LOG) when given, fixed for the process's life;
//! otherwise built from the resources and changed live: AgentConfiguration's
//! `logSeverityScreen` for the agent (warnings and errors when unset), BGPConfiguration's for
//! the BGP speaker and the agent's BGP glue (the agent's level when unset).

use brindle_datastore::resource::LogSeverity;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// The filter string for the two levels.
pub fn filter(agent: Option<LogSeverity>, bgp: Option<LogSeverity>) -> String {
    let agent = agent.map_or("warn", LogSeverity::directive);
    let bgp = bgp.map_or(agent, LogSeverity::directive);
    format!("{agent},brindle_bgp={bgp},brindle_agent::bgp={bgp}")
}

/// The installed subscriber's filter and how it is chosen.
pub struct Logging {
    handle: reload::Handle<EnvFilter, Registry>,
    fixed: bool,
    agent: Option<LogSeverity>,
    bgp: Option<LogSeverity>,
    current: String,
}

impl Logging {
    /// Installs the subscriber (stderr): `explicit` when given, else warnings and errors until
    /// the resources say otherwise.
    pub fn init(explicit: Option<&str>) -> anyhow::Result<Logging> {
        let current = explicit.map_or_else(|| filter(None, None), str::to_owned);
        let env_filter = EnvFilter::try_new(&current).map_err(|e| anyhow::anyhow!("--log {current:?}: {e}"))?;
        let (layer, handle) = reload::Layer::new(env_filter);
        tracing_subscriber::registry()
            .with(layer)
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init()?;
        Ok(Logging { handle, fixed: explicit.is_some(), agent: None, bgp: None, current })
    }

    /// Sets the agent's level (AgentConfiguration `logSeverityScreen`).
    pub fn set_agent(&mut self, level: Option<LogSeverity>) {
        self.agent = level;
        self.apply();
    }

    /// Sets the BGP level (BGPConfiguration `logSeverityScreen`).
    pub fn set_bgp(&mut self, level: Option<LogSeverity>) {
        self.bgp = level;
        self.apply();
    }

    fn apply(&mut self) {
        let wanted = filter(self.agent, self.bgp);
        if self.fixed || wanted == self.current {
            return;
        }
        let reloaded = EnvFilter::try_new(&wanted)
            .map_err(|e| e.to_string())
            .and_then(|f| self.handle.reload(f).map_err(|e| e.to_string()));
        match reloaded {
            Ok(()) => {
                tracing::info!(filter = %wanted, "log levels changed");
                self.current = wanted;
            }
            Err(e) => tracing::warn!(error = %e, "cannot change the log levels"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bgp_follows_the_agent_unless_set() {
        assert_eq!(filter(None, None), "warn,brindle_bgp=warn,brindle_agent::bgp=warn");
        assert_eq!(filter(Some(LogSeverity::Info), None), "info,brindle_bgp=info,brindle_agent::bgp=info");
        assert_eq!(
            filter(Some(LogSeverity::Error), Some(LogSeverity::Debug)),
            "error,brindle_bgp=debug,brindle_agent::bgp=debug"
        );
    }
}
