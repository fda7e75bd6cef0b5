//! Open connections per client address, for the dashboard: behind a proxy, whether the node sees
//! each client's own address (`trusted_proxies` set right) or every client as the proxy.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Connections per address; an address leaves the map with its last connection, so the map
/// never holds more entries than the node holds connections.
#[derive(Debug, Default)]
pub struct ClientAddresses {
    counts: Mutex<HashMap<IpAddr, u32>>,
}

/// One connection's place in [`ClientAddresses`], released when dropped (however the
/// connection ends).
#[derive(Debug)]
pub struct AddressGuard {
    registry: Arc<ClientAddresses>,
    address: IpAddr,
}

impl ClientAddresses {
    /// Counts a connection from `address` until the guard is dropped.
    pub fn open(self: &Arc<Self>, address: IpAddr) -> AddressGuard {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry(address).or_insert(0) += 1;
        AddressGuard {
            registry: self.clone(),
            address,
        }
    }

    /// The `n` addresses with the most connections (most first, then by address), and how many
    /// addresses there are in all.
    pub fn top(&self, n: usize) -> (Vec<(String, u32)>, usize) {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let total = counts.len();
        let mut all: Vec<(IpAddr, u32)> = counts.iter().map(|(a, c)| (*a, *c)).collect();
        drop(counts);
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        let top = all.into_iter().map(|(a, c)| (a.to_string(), c)).collect();
        (top, total)
    }
}

impl AddressGuard {
    /// The client's address.
    pub fn address(&self) -> IpAddr {
        self.address
    }
}

impl Drop for AddressGuard {
    fn drop(&mut self) {
        let mut counts = self
            .registry
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_the_guards() {
        let registry = Arc::new(ClientAddresses::default());
        let a: IpAddr = "127.0.1.1".parse().unwrap();
        let b: IpAddr = "127.0.1.2".parse().unwrap();
        let first = registry.open(a);
        let second = registry.open(a);
        let third = registry.open(b);
        assert_eq!(
            registry.top(10),
            (vec![("127.0.1.1".into(), 2), ("127.0.1.2".into(), 1)], 2)
        );
        assert_eq!(registry.top(1).0.len(), 1);
        drop((first, third));
        assert_eq!(registry.top(10), (vec![("127.0.1.1".into(), 1)], 1));
        drop(second);
        assert_eq!(registry.top(10), (vec![], 0));
    }
}
