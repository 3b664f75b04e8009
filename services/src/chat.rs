//! `mod_chat`: IRC Lite, the chat of Programming Erlang, on lib_chan.
//!
//! In the book, a chat client talks to a chat server through lib_chan: it logs in to a
//! group under a nickname, relays lines of text to the group, and hears what every
//! member says. Here one [`Rooms`] per `[[service]]` entry holds the groups, shared by
//! all connections to that entry; each connection is at most one member of one group.
//!
//! | request                   | as a call, the reply              | what the group hears          |
//! |---------------------------|-----------------------------------|-------------------------------|
//! | `{login, Group, Nick}`    | `true`                            | `{joined, Nick, Group}`       |
//! | `{relay, Text}`           | `true`                            | `{msg, Nick, Group, Text}`    |
//! | `logout`                  | `true`                            | `{left, Nick, Group}`         |
//! | `members`                 | the group's nicks, in term order  | nothing                       |
//!
//! What the group hears arrives at each member as a push, `{send, Event}` on the wire.
//! Every member hears every event of its group, its own included: the member who logs
//! in hears its own `joined`, the one who relays hears its own `msg`. A member who logs
//! out is no longer a member, so only the others hear its `left`. When a member's
//! channel closes (the client closes it, the connection drops, the process is killed),
//! it is removed and the others hear `{left, Nick, Group}`.
//!
//! Edge cases, answered to a call with `{error, Ref, Reason}`:
//! - `relay`, `logout` or `members` before `login`: `not_logged_in`;
//! - `login` while logged in (to any group): `already_logged_in`; `logout` first to
//!   change group or nick;
//! - `login` with a nick another member of that group has: `nick_taken` (the same nick
//!   in another group is fine);
//! - a `Group` or `Nick` that is not an atom, a charlist or a UTF-8 binary of 1 to
//!   [`MAX_NAME_LEN`] characters, or any other request: `{bad_request, X}`.
//!
//! `Text` is any term; the book relays strings. Group and nick names compare as terms
//! (`=:=`): `"room"` and `<<"room">>` are two groups.
//!
//! The same requests may come as sends (`lib_chan:cast`), as the book's client sends
//! them: they take effect the same way and nothing is answered, except `members`, whose
//! list comes back as a push. A send that is refused is dropped with a log line.
//!
//! Pushes to a group never wait for a member: each goes out with
//! [`MiddleMan::try_send`], and a member whose outbound queue is full (it stopped
//! reading) is closed and removed, and the others hear that it left. So one stalled
//! client cannot slow a group down or make the server hold its messages.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use lib_chan_protocol::message::snippet;
use lib_chan_protocol::Term;
use lib_chan_server::{Event, HandlerFuture, MiddleMan, Service, Session};

/// The longest group or nick accepted: characters for an atom or a charlist, bytes for
/// a binary.
pub const MAX_NAME_LEN: usize = 64;

/// One chat request, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `{login, Group, Nick}`: join `group` as `nick`.
    Login {
        /// The group to join.
        group: Term,
        /// The name to appear under.
        nick: Term,
    },
    /// `{relay, Text}`: say `Text` to the group.
    Relay(Term),
    /// `logout`: leave the group.
    Logout,
    /// `members`: the nicks in the group.
    Members,
}

impl Request {
    /// Parses a request; `None` for anything mod_chat does not understand, a login with
    /// an unacceptable group or nick included.
    pub fn from_term(t: &Term) -> Option<Request> {
        if t.is_atom("logout") {
            return Some(Request::Logout);
        }
        if t.is_atom("members") {
            return Some(Request::Members);
        }
        match t.as_tuple()? {
            [tag, group, nick] if tag.is_atom("login") && is_name(group) && is_name(nick) => {
                Some(Request::Login {
                    group: group.clone(),
                    nick: nick.clone(),
                })
            }
            [tag, text] if tag.is_atom("relay") => Some(Request::Relay(text.clone())),
            _ => None,
        }
    }
}

/// Why mod_chat refused a request: the `Reason` of `{error, Ref, Reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `relay`, `logout` or `members` from a connection that is in no group.
    NotLoggedIn,
    /// `login` from a connection already in a group.
    AlreadyLoggedIn,
    /// `login` with a nick that another member of the group has.
    NickTaken,
}

impl Refusal {
    /// The reason as a term: `not_logged_in`, `already_logged_in` or `nick_taken`.
    pub fn reason(self) -> Term {
        Term::atom(match self {
            Refusal::NotLoggedIn => "not_logged_in",
            Refusal::AlreadyLoggedIn => "already_logged_in",
            Refusal::NickTaken => "nick_taken",
        })
    }
}

/// An atom, a charlist or a UTF-8 binary of 1 to [`MAX_NAME_LEN`] characters.
fn is_name(t: &Term) -> bool {
    let fits = |n: usize| (1..=MAX_NAME_LEN).contains(&n);
    match t {
        Term::Atom(a) => fits(a.as_str().chars().count()),
        Term::Binary(b) => fits(b.len()) && std::str::from_utf8(b).is_ok(),
        Term::List(_) => t.as_charlist().is_some_and(|s| fits(s.chars().count())),
        _ => false,
    }
}

/// `{joined, Nick, Group}`.
fn joined(nick: &Term, group: &Term) -> Term {
    Term::tuple([Term::atom("joined"), nick.clone(), group.clone()])
}

/// `{left, Nick, Group}`.
fn left(nick: &Term, group: &Term) -> Term {
    Term::tuple([Term::atom("left"), nick.clone(), group.clone()])
}

/// `{msg, Nick, Group, Text}`.
fn msg(nick: &Term, group: &Term, text: Term) -> Term {
    Term::tuple([Term::atom("msg"), nick.clone(), group.clone(), text])
}

/// A member of a group: which connection, and how to reach it.
struct Member {
    connection: u64,
    middle_man: MiddleMan,
}

/// Every group of one service entry: group name to nick to member.
#[derive(Default)]
struct Groups {
    groups: HashMap<Term, BTreeMap<Term, Member>>,
}

impl Groups {
    /// True when `nick` in `group` is this connection.
    fn is_member(&self, group: &Term, nick: &Term, connection: u64) -> bool {
        self.groups
            .get(group)
            .and_then(|members| members.get(nick))
            .is_some_and(|m| m.connection == connection)
    }

    /// Pushes `event` to every member of `group`. Called with the lock held, so every
    /// member hears the group's events in one order. A push never waits: a member whose
    /// queue is full is closed, and one whose channel is closed is dropped; either way
    /// it is removed and the rest hear that it left (which may drop others in turn).
    fn broadcast(&mut self, group: &Term, event: Term) {
        let mut events = VecDeque::from([event]);
        while let Some(event) = events.pop_front() {
            let Some(members) = self.groups.get_mut(group) else {
                return;
            };
            let mut gone = Vec::new();
            // A member that cannot take the event (gone, or too slow: closed with
            // {error, slow_consumer}) leaves the group, and the others are told.
            members.retain(|nick, m| {
                let kept = m.middle_man.try_send_or_close(event.clone());
                if !kept {
                    gone.push(nick.clone());
                }
                kept
            });
            if members.is_empty() {
                self.groups.remove(group);
                return;
            }
            events.extend(gone.iter().map(|nick| left(nick, group)));
        }
    }
}

/// The groups of one `[[service]]` entry, shared by all its connections.
#[derive(Default)]
pub struct Rooms {
    groups: Mutex<Groups>,
}

impl std::fmt::Debug for Rooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rooms").finish_non_exhaustive()
    }
}

impl Rooms {
    fn lock(&self) -> MutexGuard<'_, Groups> {
        // Every change is made whole under the lock and a push cannot panic, so a
        // poisoned lock still guards consistent data.
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The nicks in `group`, in term order; empty when nobody is in it.
    pub fn members(&self, group: &Term) -> Vec<Term> {
        self.lock()
            .groups
            .get(group)
            .map(|members| members.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The groups with at least one member, in term order.
    pub fn groups(&self) -> Vec<Term> {
        let mut groups: Vec<Term> = self.lock().groups.keys().cloned().collect();
        groups.sort();
        groups
    }

    /// Adds `middle_man`'s connection to `group` as `nick`; everyone, the newcomer
    /// included, hears `{joined, Nick, Group}`.
    fn join(&self, group: &Term, nick: &Term, middle_man: &MiddleMan) -> Result<(), Refusal> {
        let mut groups = self.lock();
        let members = groups.groups.entry(group.clone()).or_default();
        if members.contains_key(nick) {
            return Err(Refusal::NickTaken);
        }
        members.insert(
            nick.clone(),
            Member {
                connection: middle_man.connection_id(),
                middle_man: middle_man.clone(),
            },
        );
        groups.broadcast(group, joined(nick, group));
        Ok(())
    }

    /// Says `text` to `group` as `nick`, if `connection` is that member.
    fn relay(&self, group: &Term, nick: &Term, connection: u64, text: Term) -> Result<(), Refusal> {
        let mut groups = self.lock();
        if !groups.is_member(group, nick, connection) {
            return Err(Refusal::NotLoggedIn);
        }
        groups.broadcast(group, msg(nick, group, text));
        Ok(())
    }

    /// Removes `nick` from `group` if `connection` is that member, and tells the rest.
    fn leave(&self, group: &Term, nick: &Term, connection: u64) -> Result<(), Refusal> {
        let mut groups = self.lock();
        if !groups.is_member(group, nick, connection) {
            return Err(Refusal::NotLoggedIn);
        }
        if let Some(members) = groups.groups.get_mut(group) {
            members.remove(nick);
            if members.is_empty() {
                groups.groups.remove(group);
            }
        }
        groups.broadcast(group, left(nick, group));
        Ok(())
    }

    /// True when `nick` in `group` is `connection`.
    fn is_member(&self, group: &Term, nick: &Term, connection: u64) -> bool {
        self.lock().is_member(group, nick, connection)
    }
}

/// The chat service: one per `[[service]]` entry with `handler = "mod_chat"`.
#[derive(Debug, Default)]
pub struct Chat {
    rooms: Arc<Rooms>,
}

impl Chat {
    /// A chat service with no groups yet.
    pub fn new() -> Chat {
        Chat::default()
    }

    /// Its groups, e.g. to look at from other code.
    pub fn rooms(&self) -> &Arc<Rooms> {
        &self.rooms
    }
}

/// One connection's membership; leaving the group when the handler ends, however it
/// ends (the channel closed, the handler panicked), is its `Drop`.
struct Membership {
    rooms: Arc<Rooms>,
    middle_man: MiddleMan,
    /// `(Group, Nick)` once logged in.
    joined: Option<(Term, Term)>,
}

impl Membership {
    /// Where this connection is, checked against the shared state: a member that was
    /// dropped for not keeping up is in no group any more.
    fn current(&mut self) -> Result<(Term, Term), Refusal> {
        let connection = self.middle_man.connection_id();
        match self.joined.take() {
            Some((group, nick)) if self.rooms.is_member(&group, &nick, connection) => {
                self.joined = Some((group.clone(), nick.clone()));
                Ok((group, nick))
            }
            _ => Err(Refusal::NotLoggedIn),
        }
    }

    /// Carries out `request` and returns its answer.
    fn apply(&mut self, request: Request) -> Result<Term, Refusal> {
        let connection = self.middle_man.connection_id();
        match request {
            Request::Login { group, nick } => {
                if self.current().is_ok() {
                    return Err(Refusal::AlreadyLoggedIn);
                }
                self.rooms.join(&group, &nick, &self.middle_man)?;
                self.joined = Some((group, nick));
            }
            Request::Relay(text) => {
                let (group, nick) = self.current()?;
                self.rooms.relay(&group, &nick, connection, text)?;
            }
            Request::Logout => {
                let (group, nick) = self.current()?;
                self.joined = None;
                self.rooms.leave(&group, &nick, connection)?;
            }
            Request::Members => {
                let (group, _) = self.current()?;
                return Ok(Term::list(self.rooms.members(&group)));
            }
        }
        Ok(Term::atom("true"))
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        if let Some((group, nick)) = self.joined.take() {
            // Not a member any more (dropped as a slow reader) is fine: nothing to do.
            let _ = self
                .rooms
                .leave(&group, &nick, self.middle_man.connection_id());
        }
    }
}

impl Service for Chat {
    fn start(self: Arc<Self>, mut session: Session) -> HandlerFuture {
        Box::pin(async move {
            let mut membership = Membership {
                rooms: Arc::clone(&self.rooms),
                middle_man: session.middle_man().clone(),
                joined: None,
            };
            while let Some(event) = session.next_event().await {
                match event {
                    Event::Call(call) => match Request::from_term(call.request()) {
                        Some(request) => match membership.apply(request) {
                            Ok(reply) => call.reply(reply),
                            Err(refusal) => call.fail(refusal.reason()),
                        },
                        None => call.bad_request(),
                    },
                    Event::Send(x) => {
                        let Some(request) = Request::from_term(&x) else {
                            tracing::info!(peer = %session.middle_man().peer(),
                                request = %snippet(&x, 80), "chat ignored an unknown send");
                            continue;
                        };
                        let answers = request == Request::Members;
                        match membership.apply(request) {
                            Ok(reply) if answers => {
                                if session.middle_man().send(reply).await.is_err() {
                                    break;
                                }
                            }
                            Ok(_) => {}
                            Err(refusal) => {
                                tracing::info!(peer = %session.middle_man().peer(),
                                    request = %snippet(&x, 80), reason = %refusal.reason(),
                                    "chat refused a send");
                            }
                        }
                    }
                    Event::Closed => break,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lib_chan_protocol::{parse, term};

    fn p(s: &str) -> Option<Request> {
        Request::from_term(&parse(s).unwrap())
    }

    #[test]
    fn requests_parse_with_the_books_terms() {
        assert_eq!(
            p(r#"{login, "general", "joe"}"#),
            Some(Request::Login {
                group: term!("general"),
                nick: term!("joe")
            })
        );
        assert_eq!(
            p(r#"{login, general, <<"joe">>}"#),
            Some(Request::Login {
                group: term!(general),
                nick: Term::binary("joe")
            })
        );
        assert_eq!(
            p(r#"{relay, "hello"}"#),
            Some(Request::Relay(term!("hello")))
        );
        assert_eq!(
            p("{relay, {any, term}}"),
            Some(Request::Relay(term!({any, term})))
        );
        assert_eq!(p("logout"), Some(Request::Logout));
        assert_eq!(p("members"), Some(Request::Members));
    }

    #[test]
    fn bad_names_and_unknown_requests_do_not_parse() {
        assert_eq!(p(r#"{login, "", "joe"}"#), None);
        assert_eq!(p(r#"{login, "room", []}"#), None);
        assert_eq!(p(r#"{login, "room", 42}"#), None);
        assert_eq!(p(r#"{login, "room", {joe}}"#), None);
        assert_eq!(p(r#"{login, "room", <<255>>}"#), None);
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert_eq!(p(&format!(r#"{{login, "room", "{long}"}}"#)), None);
        let longest = "x".repeat(MAX_NAME_LEN);
        assert!(p(&format!(r#"{{login, "room", "{longest}"}}"#)).is_some());
        assert_eq!(p(r#"{login, "room"}"#), None);
        assert_eq!(p(r#"{relay, "a", "b"}"#), None);
        assert_eq!(p("{logout}"), None);
        assert_eq!(p("login"), None);
    }

    #[test]
    fn refusals_are_the_documented_atoms() {
        assert_eq!(Refusal::NotLoggedIn.reason(), term!(not_logged_in));
        assert_eq!(Refusal::AlreadyLoggedIn.reason(), term!(already_logged_in));
        assert_eq!(Refusal::NickTaken.reason(), term!(nick_taken));
    }

    #[test]
    fn an_empty_service_has_no_groups() {
        let chat = Chat::new();
        assert!(chat.rooms().groups().is_empty());
        assert!(chat.rooms().members(&term!("room")).is_empty());
    }
}
