//! Agents syncing through the S3 test server keep going through an outage: the
//! server becomes unreachable, both sides write, it comes back, and both converge
//! with no manual step.
//!
//! The outage is a TCP relay between the agents and the shared S3 test server that
//! the test closes and reopens on the same port: to an agent that is exactly a
//! server that went away and came back, and it leaves the server (which other
//! tests use at the same time) running.

use super::harness::{insert, replica, wait_for, Agent};
use super::{converged, has, CONVERGE};
use crate::store_contract::s3_support;
use anyhow::Result;
use std::io::ErrorKind;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Relays 127.0.0.1:<port> to the S3 server while open.
struct Relay {
    port: u16,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn start(port: u16, upstream: String) -> Result<Relay> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (o, c) = (open.clone(), conns.clone());
        let thread = std::thread::spawn(move || {
            while o.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((down, _)) => {
                        let _ = down.set_nonblocking(false);
                        let Ok(up) = TcpStream::connect(&upstream) else { continue };
                        let mut held = c.lock().unwrap();
                        held.push(down.try_clone().unwrap());
                        held.push(up.try_clone().unwrap());
                        pipe(down.try_clone().unwrap(), up.try_clone().unwrap());
                        pipe(up, down);
                    }
                    // Accept polls so that closing is noticed; nothing waits on time.
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(10)),
                    Err(_) => break,
                }
            }
        });
        Ok(Relay { port, open, conns, thread: Some(thread) })
    }

    /// The server "goes away": no new connections, open ones cut.
    fn close(&mut self) {
        self.open.store(false, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.close();
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}

#[test]
fn agents_over_s3_converge_after_the_server_was_unreachable() -> Result<()> {
    let Some(endpoint) = s3_support::endpoint()? else { return Ok(()) };
    let Some(store) = crate::support::block_on(s3_support::fresh_store("agent-outage"))? else { return Ok(()) };
    let bucket = dimple::store::Store::describe(&store)
        .split(" at ")
        .next()
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_owned();
    let upstream = endpoint.trim_start_matches("http://").trim_end_matches('/').to_owned();
    let mut relay = Relay::start(0, upstream.clone())?;
    let port = relay.port;
    let via = format!("http://127.0.0.1:{port}");
    let env = [("DIMPLE_ENDPOINT", via.as_str())];

    let dir = tempfile::tempdir()?;
    let (a, b) = (replica(dir.path(), "a", &bucket)?, replica(dir.path(), "b", &bucket)?);
    let (agent_a, agent_b) = (Agent::start_with(&a, 1, &env)?, Agent::start_with(&b, 1, &env)?);
    insert(&a, "before", "written before the outage")?;
    agent_b.or_log(wait_for(CONVERGE, "a's row in b", || has(&b, "before", "written before the outage")))?;

    relay.close();
    insert(&a, "during-a", "written in a while offline")?;
    insert(&b, "during-b", "written in b while offline")?;
    for (agent, db) in [(&agent_a, &a), (&agent_b, &b)] {
        agent.or_log(wait_for(CONVERGE, "the agent to notice the outage", || {
            Ok(dimple::agent::inspect(db).last.is_some_and(|s| s.consecutive_failures > 0))
        }))?;
    }
    assert!(!has(&b, "during-a", "written in a while offline")?);

    let _relay = Relay::start(port, upstream)?;
    let res = wait_for(CONVERGE, "convergence after the outage", || converged(&a, &b, 3));
    agent_a.or_log(agent_b.or_log(res))?;
    Ok(())
}
