//! Runs the provider simulator standalone (`cargo run -p tally-simulator --example serve
//! -- 127.0.0.1:9090`); it owns no behaviour of its own and must not grow any.

use std::net::SocketAddr;

use tally_simulator::{SimConfig, Simulator};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9090".to_owned())
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("simulator listening on http://{}", listener.local_addr()?);
    Simulator::new(SimConfig::default()).serve(listener).await
}
