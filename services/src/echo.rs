//! `mod_echo`: replies to every call with its request and answers every send with
//! `{send, X}`. For tests and benchmarks: it measures the channel, not a service.

use std::sync::Arc;

use lib_chan_server::{Event, HandlerFuture, Service, Session};

/// The echo service.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

impl Service for Echo {
    fn start(self: Arc<Self>, mut session: Session) -> HandlerFuture {
        Box::pin(async move {
            while let Some(event) = session.next_event().await {
                match event {
                    Event::Send(x) => {
                        if session.middle_man().send(x).await.is_err() {
                            break;
                        }
                    }
                    Event::Call(call) => {
                        let request = call.request().clone();
                        call.reply(request);
                    }
                    Event::Closed => break,
                }
            }
        })
    }
}
