//! Revisions (PROTOCOL.md section 7.1): what a key's state is at a revision, when a
//! conditional store or delete may go ahead, what a `{watch, K, Since}` must push at once,
//! and the bounded record of deletions that dates an absent key.
//!
//! Each name space counts its changes: its revision is 0 before the first and grows by one
//! with every store, every delete of a present key, and every owner-bound name removed
//! because its owner went. Each key keeps the revision of its last change (`ModRev`). A
//! deleted key is remembered as a *tombstone* (key and deletion revision) so that a watcher
//! coming back can be told of the deletion; the tombstones are bounded
//! ([`MAX_TOMBSTONES`]): the oldest are forgotten first, and the store remembers the
//! highest revision it forgot (its *floor*). An absent key without a tombstone has
//! certainly not changed after the floor; before it, the store cannot tell.
//!
//! The stores (memory, file, Redis) keep these numbers each in their own way and report
//! a key as a [`KeyState`]; the rules on it live here, once.

use std::collections::{BTreeMap, HashMap};

use lib_chan_protocol::Term;

use super::store::answer;

/// How many deletions a name space dates, at most (memory, file and Redis alike). A
/// watcher away for fewer deletions than this is told exactly which of its keys went.
pub const MAX_TOMBSTONES: usize = 100_000;

/// A revision as a term (an integer; revisions stay far below `i64::MAX`).
pub fn rev_term(rev: u64) -> Term {
    Term::Int(i64::try_from(rev).unwrap_or(i64::MAX))
}

/// A revision from a request: a non-negative integer.
pub fn rev_of(t: &Term) -> Option<u64> {
    t.as_int().and_then(|i| u64::try_from(i).ok())
}

/// A key as a store sees it at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyState {
    /// Its value, if present.
    pub value: Option<Term>,
    /// The revision of its last change: its store, or its deletion while the tombstone is
    /// kept; 0 when the store knows of none.
    pub mod_rev: u64,
    /// The name space's current revision.
    pub revision: u64,
    /// The highest revision of a forgotten deletion (0: none forgotten).
    pub floor: u64,
}

impl KeyState {
    /// `{ok, V}` or `undefined`.
    pub fn answer(&self) -> Term {
        answer(self.value.as_ref())
    }

    /// The reply to `{get, K}`: `{ok, Value, ModRev}`, or `{undefined, Rev}` with the
    /// current revision.
    pub fn get_reply(&self) -> Term {
        match &self.value {
            Some(v) => Term::tuple([Term::atom("ok"), v.clone(), rev_term(self.mod_rev)]),
            None => Term::tuple([Term::atom("undefined"), rev_term(self.revision)]),
        }
    }

    /// Whether `#{if_revision => R}` lets a change go ahead: the key's `ModRev` is `R`,
    /// or the key is absent and `R` is 0.
    pub fn admits(&self, if_revision: u64) -> bool {
        match &self.value {
            // (A present key's last change is never at revision 0.)
            Some(_) => self.mod_rev == if_revision && if_revision != 0,
            None => if_revision == 0 || (self.mod_rev != 0 && self.mod_rev == if_revision),
        }
    }

    /// `{conflict, Answer, ModRev}`, for a condition this state does not admit.
    pub fn conflict(&self) -> Term {
        Term::tuple([
            Term::atom("conflict"),
            self.answer(),
            rev_term(self.mod_rev),
        ])
    }

    /// For `{watch, K, Since}`: the revision to push the current state with, when the key
    /// changed after `since` or the store cannot prove it did not; `None` when nothing is
    /// to be pushed.
    pub fn changed_since(&self, since: u64) -> Option<u64> {
        let dated = self.value.is_some() || self.mod_rev != 0;
        if since > self.revision {
            // A revision this name space never reached (a memory store restarted, another
            // store): nothing can be proved.
            return Some(if dated { self.mod_rev } else { self.revision });
        }
        if dated {
            return (self.mod_rev > since).then_some(self.mod_rev);
        }
        // Absent and undated: unchanged since the floor at least.
        (since < self.floor).then_some(self.revision)
    }
}

/// What a (possibly conditional) store or delete did.
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    /// Done (or, for a delete of an absent key, nothing to do).
    Done,
    /// The condition did not hold: nothing changed. The key's state then.
    Conflict(KeyState),
}

impl Written {
    /// The call's reply: `true`, or `{conflict, Answer, ModRev}`.
    pub fn reply(&self) -> Term {
        match self {
            Written::Done => Term::atom("true"),
            Written::Conflict(state) => state.conflict(),
        }
    }
}

/// The deletions a name space in memory dates: at most [`MAX_TOMBSTONES`], the oldest
/// forgotten first.
#[derive(Debug, Default)]
pub struct Tombstones {
    by_key: HashMap<Term, u64>,
    by_rev: BTreeMap<u64, Term>,
    floor: u64,
}

impl Tombstones {
    /// `key` was deleted at revision `rev`.
    pub fn insert(&mut self, key: Term, rev: u64) {
        if let Some(old) = self.by_key.insert(key.clone(), rev) {
            self.by_rev.remove(&old);
        }
        self.by_rev.insert(rev, key);
        while self.by_rev.len() > MAX_TOMBSTONES {
            if let Some((rev, key)) = self.by_rev.pop_first() {
                self.by_key.remove(&key);
                self.floor = self.floor.max(rev);
            }
        }
    }

    /// `key` is present again: its deletion no longer dates it.
    pub fn remove(&mut self, key: &Term) {
        if let Some(rev) = self.by_key.remove(key) {
            self.by_rev.remove(&rev);
        }
    }

    /// The revision `key` was deleted at, if remembered.
    pub fn get(&self, key: &Term) -> Option<u64> {
        self.by_key.get(key).copied()
    }

    /// True when no deletion is dated (a store then has no tombstone to clear).
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The highest revision of a forgotten deletion.
    pub fn floor(&self) -> u64 {
        self.floor
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lib_chan_protocol::term;

    fn present(mod_rev: u64, revision: u64) -> KeyState {
        KeyState {
            value: Some(term!(v)),
            mod_rev,
            revision,
            floor: 0,
        }
    }

    fn absent(mod_rev: u64, revision: u64, floor: u64) -> KeyState {
        KeyState {
            value: None,
            mod_rev,
            revision,
            floor,
        }
    }

    #[test]
    fn conditions_hold_on_the_last_change_or_on_absence() {
        assert!(present(5, 9).admits(5));
        assert!(!present(5, 9).admits(4) && !present(5, 9).admits(0));
        assert!(absent(0, 9, 0).admits(0));
        assert!(!absent(0, 9, 0).admits(9));
        // A dated deletion: its revision, or 0 (absent), both hold.
        assert!(absent(7, 9, 0).admits(7) && absent(7, 9, 0).admits(0));
        assert!(!absent(7, 9, 0).admits(6));
        assert_eq!(present(5, 9).conflict().to_string(), "{conflict,{ok,v},5}");
        assert_eq!(
            absent(0, 9, 0).conflict().to_string(),
            "{conflict,undefined,0}"
        );
        assert_eq!(present(5, 9).get_reply().to_string(), "{ok,v,5}");
        assert_eq!(absent(7, 9, 0).get_reply().to_string(), "{undefined,9}");
    }

    #[test]
    fn a_watch_from_a_revision_pushes_exactly_what_changed_after_it() {
        // Present: pushed when changed after Since.
        assert_eq!(present(5, 9).changed_since(4), Some(5));
        assert_eq!(present(5, 9).changed_since(5), None);
        assert_eq!(present(5, 9).changed_since(9), None);
        // A dated deletion, likewise.
        assert_eq!(absent(7, 9, 0).changed_since(6), Some(7));
        assert_eq!(absent(7, 9, 0).changed_since(7), None);
        // Undated absence: unchanged after the floor; before it, pushed with the revision.
        assert_eq!(absent(0, 9, 0).changed_since(0), None);
        assert_eq!(absent(0, 9, 3).changed_since(3), None);
        assert_eq!(absent(0, 9, 3).changed_since(2), Some(9));
        // A Since the name space never reached proves nothing.
        assert_eq!(present(5, 9).changed_since(12), Some(5));
        assert_eq!(absent(0, 9, 0).changed_since(12), Some(9));
    }

    #[test]
    fn tombstones_are_bounded_and_raise_the_floor() {
        let mut t = Tombstones::default();
        for i in 1..=(MAX_TOMBSTONES as u64 + 2) {
            t.insert(Term::Int(i as i64), i);
        }
        assert_eq!(t.floor(), 2);
        assert_eq!(t.get(&Term::Int(1)), None);
        assert_eq!(t.get(&Term::Int(3)), Some(3));
        // Deleted again later: one tombstone, the later revision.
        t.insert(Term::Int(3), 500_000);
        assert_eq!(t.get(&Term::Int(3)), Some(500_000));
        t.remove(&Term::Int(3));
        assert_eq!(t.get(&Term::Int(3)), None);
        assert_eq!(t.by_rev.len(), t.by_key.len());
    }
}
