//! `cargo run -p lib_chan_example_embedded`: a program that embeds a lib_chan server.
//!
//! It makes a tokio runtime of its own, starts the server on it from a configuration
//! built in code (port 0, TLS in memory, its own `mod_counter` service), runs a client
//! session against it, prints the transcript, and shuts the server down.

use std::error::Error;

use lib_chan_example_embedded::{session, start};

fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let password = "counter-secret";
    let server = runtime.block_on(start(password, 100))?;
    let addr = server.handle.local_addr();
    println!("listening on {addr}");
    for line in runtime.block_on(session(addr, &server.ca_pem, password))? {
        println!("{line}");
    }
    runtime.block_on(server.handle.shutdown());
    println!("shut down");
    Ok(())
}
