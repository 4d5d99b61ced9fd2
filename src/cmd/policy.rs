//! `tally policy check`: validate a policy file and summarise its rules.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use tally_enforcer::policy::PolicySet;

#[derive(Subcommand, Debug)]
pub(crate) enum PolicyCommand {
    /// Check a policy file: syntax, fields, CEL expressions; prints every problem.
    Check {
        /// The policy file (YAML).
        file: PathBuf,
    },
}

pub(crate) fn run(cmd: PolicyCommand) -> Result<()> {
    match cmd {
        PolicyCommand::Check { file } => match PolicySet::load(&file) {
            Ok(set) => {
                for w in set.warnings() {
                    println!("warning: {w}");
                }
                for line in set.summary() {
                    println!("{line}");
                }
                println!("{}: {} rule(s), OK", file.display(), set.len());
                Ok(())
            }
            Err(e) => Err(anyhow::anyhow!("{e}")),
        },
    }
}
