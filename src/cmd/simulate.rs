//! `tally simulate`: the provider simulator as a standalone server.

use std::net::SocketAddr;

use anyhow::{Context, Result};

use crate::GlobalArgs;

pub(crate) fn run(global: &GlobalArgs, listen: SocketAddr) -> Result<()> {
    let cfg = super::load_config(global)?;
    super::runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("simulator.bind: cannot listen on {listen}"))?;
        println!(
            "tally provider simulator listening on http://{}",
            listener.local_addr()?
        );
        let sim = tally_simulator::Simulator::new(cfg.simulator);
        tokio::select! {
            r = sim.serve(listener) => r.context("simulator stopped")?,
            _ = tokio::signal::ctrl_c() => {},
        }
        Ok(())
    })
}
