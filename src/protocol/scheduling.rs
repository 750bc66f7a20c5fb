//! The `scheduling` setting of every service: the CPU policy its threads
//! run under (applied by `biblioteca_runtime::sched`).

use serde::{Deserialize, Serialize};

/// A service's `scheduling` setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduling {
    /// `SCHED_BATCH`: no wake-up preemption (the default).
    #[default]
    Batch,
    /// `SCHED_OTHER`, the kernel's default.
    Normal,
}

impl Scheduling {
    pub const ALL: [Scheduling; 2] = [Scheduling::Batch, Scheduling::Normal];

    /// The configuration's spelling (what serde reads).
    fn name(self) -> &'static str {
        match self {
            Scheduling::Batch => "batch",
            Scheduling::Normal => "normal",
        }
    }
}

/// The configuration's spelling, for command-line flags.
impl std::str::FromStr for Scheduling {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scheduling::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("{s:?}: expected batch or normal"))
    }
}

impl std::fmt::Display for Scheduling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn config_spelling() {
        #[derive(Deserialize)]
        struct C {
            scheduling: Scheduling,
        }
        let c: C = toml::from_str("scheduling = \"normal\"").unwrap();
        assert_eq!(c.scheduling, Scheduling::Normal);
        let c: C = toml::from_str("scheduling = \"batch\"").unwrap();
        assert_eq!(c.scheduling, Scheduling::Batch);
        assert!(toml::from_str::<C>("scheduling = \"fifo\"").is_err());
        assert_eq!("normal".parse(), Ok(Scheduling::Normal));
        assert_eq!("batch".parse(), Ok(Scheduling::Batch));
        assert!("fifo".parse::<Scheduling>().is_err());
    }
}
