//! `tally keys`: make the hashed form of a gateway key for tally.yaml.

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub(crate) enum KeysCommand {
    /// Print the `sha256:` hash of a gateway key secret, for `proxy.keys[].hash`.
    Hash {
        /// The secret (reads stdin if omitted, so it stays out of shell history).
        secret: Option<String>,
    },
}

pub(crate) fn run(cmd: KeysCommand) -> Result<()> {
    match cmd {
        KeysCommand::Hash { secret } => {
            let secret = match secret {
                Some(s) => s,
                None => {
                    let mut s = String::new();
                    std::io::stdin().read_line(&mut s)?;
                    s.trim().to_owned()
                }
            };
            anyhow::ensure!(!secret.is_empty(), "keys.empty: the secret is empty");
            println!("{}", tally_enforcer::keys::hash_secret(&secret));
            Ok(())
        }
    }
}
