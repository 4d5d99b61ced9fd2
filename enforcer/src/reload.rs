//! Hot reload of the policy file: checks the file now and then (and whenever asked, e.g.
//! on SIGHUP), and swaps in a new policy when its content changed and it is valid. A file
//! with problems is refused with every problem logged, and the policy in force stays.
//! Connections and requests in flight are untouched (see `PolicyEngine::replace` for what
//! happens to counters). Must not read or write anything but the policy file.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::ProxyState;
use crate::policy::{PolicyEngine, PolicySet};

/// What one check did.
#[derive(Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The file has the content last seen (loaded or refused).
    Unchanged,
    /// A new policy is in force.
    Reloaded { rules: usize },
    /// The new content has problems; the policy in force stays. The message lists them.
    Refused(String),
}

/// Watches one policy file for one engine.
#[derive(Debug)]
pub struct PolicyReloader {
    path: PathBuf,
    /// The content last seen, loaded or refused, so a bad file is reported once.
    seen: Option<Vec<u8>>,
}

impl PolicyReloader {
    /// A reloader for `path`, whose current content is the policy in force.
    pub fn new(path: PathBuf) -> Self {
        let seen = std::fs::read(&path).ok();
        Self { path, seen }
    }

    /// Reload if the file changed.
    pub fn check(&mut self, engine: &PolicyEngine) -> ReloadOutcome {
        let content = match std::fs::read(&self.path) {
            Ok(c) => c,
            Err(e) => {
                // A file being replaced may be missing for a moment; say so once.
                if self.seen.is_none() {
                    return ReloadOutcome::Unchanged;
                }
                self.seen = None;
                return ReloadOutcome::Refused(format!(
                    "policy.read: cannot read policy file {}: {e}",
                    self.path.display()
                ));
            }
        };
        if self.seen.as_deref() == Some(&content[..]) {
            return ReloadOutcome::Unchanged;
        }
        let text = String::from_utf8_lossy(&content).into_owned();
        self.seen = Some(content);
        match PolicySet::parse(&text) {
            Ok(set) => {
                let rules = set.rule_names().len();
                engine.replace(set);
                ReloadOutcome::Reloaded { rules }
            }
            Err(e) => ReloadOutcome::Refused(e.to_string()),
        }
    }

    /// Check every `every` (never when zero) and whenever `trigger` is notified, logging
    /// each reload and refusal, until the task is dropped.
    pub async fn run(mut self, state: Arc<ProxyState>, every: Duration, trigger: Arc<Notify>) {
        let mut tick = tokio::time::interval(if every.is_zero() {
            Duration::from_secs(86_400 * 365)
        } else {
            every
        });
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = trigger.notified() => {}
            }
            match self.check(&state.policy) {
                ReloadOutcome::Unchanged => {}
                ReloadOutcome::Reloaded { rules } => tracing::info!(
                    file = %self.path.display(),
                    rules,
                    "policy reloaded"
                ),
                ReloadOutcome::Refused(problems) => tracing::error!(
                    file = %self.path.display(),
                    "policy.reload_refused: the changed policy file has problems; the policy in force stays:\n{problems}"
                ),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_loaded_and_bad_files_refused_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policies.yaml");
        let allow = "rules:\n  - name: a\n    action: allow\n";
        std::fs::write(&path, allow).unwrap();
        let engine = PolicyEngine::new(PolicySet::load(&path).unwrap());
        let mut r = PolicyReloader::new(path.clone());
        assert_eq!(r.check(&engine), ReloadOutcome::Unchanged);

        std::fs::write(
            &path,
            "rules:\n  - name: b\n    action: deny\n  - name: c\n    action: allow\n",
        )
        .unwrap();
        assert_eq!(r.check(&engine), ReloadOutcome::Reloaded { rules: 2 });
        assert_eq!(engine.policy().rule_names(), ["b", "c"]);

        std::fs::write(
            &path,
            "rules:\n  - name: x\n    action: rate-limit\n    limit: 0\n    window: 1m\n",
        )
        .unwrap();
        let ReloadOutcome::Refused(problems) = r.check(&engine) else {
            panic!("a bad file is refused")
        };
        assert!(problems.contains("policy.bad_limit"), "{problems}");
        assert_eq!(
            engine.policy().rule_names(),
            ["b", "c"],
            "the old policy stays"
        );
        assert_eq!(r.check(&engine), ReloadOutcome::Unchanged, "reported once");

        std::fs::write(&path, allow).unwrap();
        assert_eq!(r.check(&engine), ReloadOutcome::Reloaded { rules: 1 });
    }
}
