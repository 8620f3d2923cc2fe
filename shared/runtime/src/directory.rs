//! The machines a node can route to besides its configured peers: the planner's directory of
//! registered machines (id, tier, enrolled name, address), as the last plan answer or
//! registration answer listed it. Nodes connect only to machines listed here (never to an
//! address a request carries), and check that each carries its listed name.

use std::collections::HashMap;
use std::sync::Mutex;

use scission_core::wire::message::{CONFIGURED, MachineEntry, MachineId};

use crate::peer::Peer;

/// A registered machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    /// Its tier.
    pub tier: u8,
    /// Where it is, and the name its certificate carries.
    pub peer: Peer,
}

/// The directory, shared by the tasks that route (and replaced on every answer that lists it).
#[derive(Debug, Default)]
pub struct Directory {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    own: Option<MachineId>,
    machines: HashMap<MachineId, Machine>,
}

/// Why a directory entry cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("machine {id} ('{name}'): its address '{addr}' is not an IP address and port")]
pub struct BadEntry {
    id: MachineId,
    name: String,
    addr: String,
}

impl Directory {
    /// Replaces the listed machines with `entries` (entries whose address does not parse are
    /// left out, and returned).
    pub fn learn(&self, entries: &[MachineEntry<'_>]) -> Vec<BadEntry> {
        let mut bad = Vec::new();
        let mut machines = HashMap::new();
        for e in entries {
            match e.addr.parse() {
                Ok(addr) => {
                    machines.insert(e.id, Machine { tier: e.tier, peer: Peer::new(addr, e.name) });
                }
                Err(_) => bad.push(BadEntry { id: e.id, name: e.name.to_string(), addr: e.addr.to_string() }),
            }
        }
        if let Ok(mut state) = self.state.lock() {
            state.machines = machines;
        }
        bad
    }

    /// Records the id the planner gave this node.
    pub fn set_own(&self, id: MachineId) {
        if let Ok(mut state) = self.state.lock() {
            state.own = Some(id);
        }
    }

    /// The id the planner gave this node, once registered.
    pub fn own(&self) -> Option<MachineId> {
        self.state.lock().ok().and_then(|s| s.own)
    }

    /// Machine `id` of tier `tier`, if listed there.
    pub fn machine(&self, tier: u8, id: MachineId) -> Option<Machine> {
        if id == CONFIGURED {
            return None;
        }
        self.state.lock().ok()?.machines.get(&id).filter(|m| m.tier == tier).cloned()
    }

    /// The tier of listed machine `id`.
    pub fn tier_of(&self, id: MachineId) -> Option<u8> {
        self.state.lock().ok()?.machines.get(&id).map(|m| m.tier)
    }

    /// The listed name of machine `id` (for messages and reports).
    pub fn name(&self, id: MachineId) -> Option<String> {
        self.state.lock().ok()?.machines.get(&id).map(|m| m.peer.name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_machines_by_tier_and_replaces_them_on_every_answer() {
        let directory = Directory::default();
        let entry = |id, tier, name, addr| MachineEntry { id, tier, name, addr };
        let bad = directory.learn(&[entry(3, 1, "edge-b", "127.0.0.1:4434"), entry(4, 2, "cloud-b", "not an address")]);
        assert_eq!(bad.len(), 1, "an unusable address is reported, not routed to");
        assert_eq!(directory.machine(1, 3).map(|m| m.peer.name), Some("edge-b".to_string()));
        assert!(directory.machine(2, 3).is_none(), "a machine is found on its own tier only");
        assert!(directory.machine(1, CONFIGURED).is_none(), "the configured peer is not in the directory");
        directory.learn(&[entry(5, 2, "cloud-b", "127.0.0.1:4433")]);
        assert!(directory.machine(1, 3).is_none(), "a machine no longer listed is gone");
        assert_eq!(directory.name(5).as_deref(), Some("cloud-b"));
    }
}
