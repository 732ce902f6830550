//! The `--max-connections` places, and who holds them. A connection holds its [`Slot`]
//! until it is dropped. At the limit, the place of the oldest connection that has not yet
//! sent its HTTP/2 preface goes to the newcomer (that connection is told to close): a real
//! client sends its preface at once, so silent connections are the ones to sacrifice.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::connection::Signals;

pub(super) struct Slots {
    state: Mutex<State>,
}

struct State {
    max: usize,
    /// Places held, by connections awaiting their preface and the others.
    held: usize,
    /// The connections still awaiting their preface, oldest (lowest id) first.
    awaiting_preface: BTreeMap<u64, Arc<Signals>>,
    next_id: u64,
}

pub(super) enum Admission {
    /// A place was free.
    Free(Slot),
    /// The place of the oldest connection awaiting its preface, which is being closed.
    Displacing(Slot),
    /// Every place is held by a connection that has sent its preface.
    Refused,
}

/// One connection's place; given back when dropped.
pub(super) struct Slot {
    id: u64,
    slots: Arc<Slots>,
    signals: Arc<Signals>,
}

impl Slots {
    pub(super) fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            state: Mutex::new(State {
                max,
                held: 0,
                awaiting_preface: BTreeMap::new(),
                next_id: 0,
            }),
        })
    }

    /// A place for a new connection, which is awaiting its preface.
    pub(super) fn admit(self: &Arc<Slots>) -> Admission {
        let mut state = self.lock();
        let displacing = if state.held < state.max {
            state.held += 1;
            false
        } else if let Some((_, oldest)) = state.awaiting_preface.pop_first() {
            // Its place is handed over: `held` stays, and its slot will not give it back.
            oldest.displace();
            true
        } else {
            return Admission::Refused;
        };
        let id = state.next_id;
        state.next_id += 1;
        let signals = Arc::new(Signals::default());
        state.awaiting_preface.insert(id, Arc::clone(&signals));
        let slot = Slot {
            id,
            slots: Arc::clone(self),
            signals,
        };
        if displacing {
            Admission::Displacing(slot)
        } else {
            Admission::Free(slot)
        }
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.lock().held
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned lock still has consistent counts.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Slot {
    pub(super) fn signals(&self) -> &Arc<Signals> {
        &self.signals
    }

    /// The connection has sent its preface: it can no longer be displaced.
    pub(super) fn preface_received(&self) {
        self.slots.lock().awaiting_preface.remove(&self.id);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.slots.lock();
        state.awaiting_preface.remove(&self.id);
        // A displaced connection's place already belongs to the one that displaced it;
        // `displace` is only called under this lock, so the check cannot race with it.
        if !self.signals.is_displaced() {
            state.held -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(admission: Admission) -> Slot {
        match admission {
            Admission::Free(slot) => slot,
            _ => panic!("expected a free place"),
        }
    }

    #[test]
    fn places_are_given_back_when_connections_end() {
        let slots = Slots::new(2);
        let first = admitted(slots.admit());
        first.preface_received();
        let second = admitted(slots.admit());
        second.preface_received();
        assert!(matches!(slots.admit(), Admission::Refused));
        drop(first);
        assert_eq!(slots.held(), 1);
        let third = admitted(slots.admit());
        assert_eq!(slots.held(), 2);
        drop((second, third));
        assert_eq!(slots.held(), 0);
    }

    #[test]
    fn at_the_limit_the_oldest_connection_awaiting_its_preface_makes_room() {
        let slots = Slots::new(3);
        let oldest_silent = admitted(slots.admit());
        let speaking = admitted(slots.admit());
        speaking.preface_received();
        let newer_silent = admitted(slots.admit());

        let Admission::Displacing(newcomer) = slots.admit() else {
            panic!("expected a displacement");
        };
        assert!(oldest_silent.signals().is_displaced());
        assert!(!speaking.signals().is_displaced());
        assert!(!newer_silent.signals().is_displaced());
        assert_eq!(slots.held(), 3);

        // The displaced connection closing gives nothing back: its place is taken.
        drop(oldest_silent);
        assert_eq!(slots.held(), 3);
        newcomer.preface_received();
        let Admission::Displacing(_latest) = slots.admit() else {
            panic!("expected a displacement");
        };
        assert!(newer_silent.signals().is_displaced());
        assert_eq!(slots.held(), 3);
    }

    #[test]
    fn when_every_connection_has_sent_its_preface_a_newcomer_is_refused() {
        let slots = Slots::new(1);
        let only = admitted(slots.admit());
        only.preface_received();
        assert!(matches!(slots.admit(), Admission::Refused));
        assert!(!only.signals().is_displaced());
        assert_eq!(slots.held(), 1);
    }
}
