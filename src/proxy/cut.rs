//! A coalesced fill whose body the origin cut short (issue 9, "a failing leader scatters its
//! waiters"). The fill's head had arrived, so its waiters could not be given the failure up
//! front; they used to wake as if the leader had vanished, elect a replacement, and after that
//! one failed too, fetch one by one: 50 waiters made 50 origin requests to a dying origin.
//!
//! The rule now: a waiter takes a stale copy when it may (stale-if-error, grace); otherwise the
//! waiters elect one retry (a cut can be a one-off, such as a reset keep-alive connection), and
//! when the retry is cut too, they all share Kagami's 502 instead of fetching alone. So a cut
//! key costs the origin at most two requests per crowd of waiters.

use std::sync::Arc;

use super::{Outcome, Proxy, Req, Served};
use crate::cache::coalesce::Leader;
use crate::cache::{Entry, Phase};
use crate::origin::OriginError;

/// Tells a cut fill's waiters, with whether this fetch was the key's retry already.
pub(super) fn publish(leader: Option<Leader<Outcome>>) {
    if let Some(leader) = leader {
        let retried = leader.is_retry();
        leader.finish(Outcome::Cut { retried });
    }
}

impl Proxy {
    /// A waiter's answer after its leader's body was cut: a stale copy if allowed; else, once
    /// the retry is `spent`, the shared failure; else `None`, and the waiter joins the retry.
    pub(super) fn after_cut(
        &self,
        req: &Req,
        stale: &Option<Arc<Entry>>,
        phase: Phase,
        spent: bool,
    ) -> Option<Served> {
        if let Some((response, status)) = self.stale_after_failure(req, stale, None) {
            return Some((response, status.collapsed(true)));
        }
        if !spent {
            return None;
        }
        let err = OriginError::Other("the origin cut the response body short".to_string());
        let failure = self.unavailable(&self.sites[req.site], &err);
        Some(self.failed(req, phase, &failure, true))
    }
}
