//! Free loopback ports for the processes the suite starts.
//!
//! Like envtest we ask the kernel for an unused port, then release it for the
//! child to bind. All ports of one start are held open together, so they are
//! distinct; another program could still take one in the short gap, and the
//! child's readiness wait then reports that it never came up.

use std::io;
use std::net::{Ipv4Addr, TcpListener};

/// `N` distinct ports on 127.0.0.1 that were free a moment ago.
pub fn free_ports<const N: usize>() -> io::Result<[u16; N]> {
    let listeners = (0..N).map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0))).collect::<io::Result<Vec<_>>>()?;
    let mut ports = [0u16; N];
    for (slot, listener) in ports.iter_mut().zip(&listeners) {
        *slot = listener.local_addr()?.port();
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn ports_are_distinct_nonzero_and_bindable_after_release() {
        let ports: [u16; 6] = free_ports().unwrap();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        assert!(ports.iter().all(|port| *port != 0));
        for port in ports {
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
        }
    }
}
