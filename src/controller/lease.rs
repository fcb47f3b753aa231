//! Leader election on a `coordination.k8s.io/v1` Lease, with a renew
//! deadline shorter than the lease (client-go's rule), so that a leader cut
//! off from the apiserver stops acting *before* any other replica may take
//! over.
//!
//! Timings ([`LeaseTimings::DEFAULT`]): the Lease lasts 15 s; the leader
//! renews it every 2 s; if no renewal has succeeded for 10 s (the renew
//! deadline, counted from the *start* of the last successful request, so a
//! renewal the apiserver applied but whose answer was lost is on the safe
//! side) the leader steps down at once — even while a request still hangs.
//! A standby takes over only after it has seen the Lease record unchanged
//! for the full 15 s, measured on its own monotonic clock from the moment
//! it first observed that record (never from timestamps another node wrote,
//! so clock skew between nodes cannot shorten it). The observation happens
//! no earlier than the renewal itself, so between the old leader's
//! step-down and the earliest takeover there are at least 15 − 10 = 5 s.
//!
//! Every API call is optimistic (`replace` with the observed
//! `resourceVersion`): two candidates racing for a free Lease cannot both
//! win. The record uses the standard fields (`holderIdentity`,
//! `leaseDurationSeconds`, `acquireTime`, `renewTime`, `leaseTransitions`),
//! so `kubectl get lease` shows the holder as for any controller.

use crate::labels::FIELD_MANAGER;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a Lease lasts, how soon its holder must have renewed it, and
/// how often candidates and the holder try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LeaseTimings {
    /// A standby takes over after seeing the record unchanged this long.
    pub lease_duration: Duration,
    /// The holder steps down when no renewal succeeded for this long.
    /// Must be shorter than `lease_duration`.
    pub renew_deadline: Duration,
    /// Pause between attempts (acquire or renew), jittered by up to 20 %.
    pub retry_period: Duration,
}

impl LeaseTimings {
    /// 15 s lease, 10 s renew deadline, 2 s retry period (client-go's
    /// defaults are 15/10/2 as well).
    pub(crate) const DEFAULT: Self = Self {
        lease_duration: Duration::from_secs(15),
        renew_deadline: Duration::from_secs(10),
        retry_period: Duration::from_secs(2),
    };
}

/// The last Lease record this candidate saw, and when it first saw it.
#[derive(Debug, Clone, PartialEq)]
struct Observed {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    transitions: Option<i32>,
    duration: Option<i32>,
}

impl Observed {
    fn of(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        Self {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            renew_time: spec.renew_time,
            transitions: spec.lease_transitions,
            duration: spec.lease_duration_seconds,
        }
    }
}

/// What one attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// This candidate holds the Lease (acquired or renewed).
    Held,
    /// Another candidate holds a Lease that has not expired.
    HeldByOther,
    /// The write lost a race (409): try again; not a reason to step down
    /// before the renew deadline.
    Conflict,
}

/// Why an attempt did not make (or keep) this candidate the holder.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LeaseError {
    /// An API call failed (unreachable apiserver, 409 from a racing writer).
    #[error("Lease API call failed")]
    Api(#[source] kube::Error),
}

/// One candidate for the Lease `name`.
pub(crate) struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timings: LeaseTimings,
    observed: Option<(Observed, Instant)>,
}

impl LeaderElector {
    /// A candidate with `identity` for Lease `name` in `namespace`.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timings: LeaseTimings,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            timings,
            observed: None,
        }
    }

    /// Campaign for and hold the Lease until `shutdown`, publishing whether
    /// this replica may act on `leader`. `false` is published at the latest
    /// `renew_deadline` after the last successful renewal. On shutdown a
    /// held Lease is released so a standby takes over at once.
    pub async fn run(mut self, leader: watch::Sender<bool>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut renewed_at: Option<Instant> = None;
        loop {
            let attempt_start = Instant::now();
            let result = match renewed_at {
                // Holding: the attempt may take only what is left of the deadline.
                Some(last) => {
                    let deadline = last + self.timings.renew_deadline;
                    tokio::select! {
                        r = tokio::time::timeout_at(deadline, self.try_acquire_or_renew()) => r.ok(),
                        _ = &mut shutdown => break,
                    }
                }
                None => tokio::select! {
                    r = tokio::time::timeout(self.timings.renew_deadline, self.try_acquire_or_renew()) => r.ok(),
                    _ = &mut shutdown => break,
                },
            };
            match result {
                Some(Ok(Attempt::Held)) => {
                    if renewed_at.is_none() {
                        tracing::debug!(lease = %self.name, "Lease acquired");
                        leader.send_replace(true);
                    }
                    renewed_at = Some(attempt_start);
                }
                Some(Ok(Attempt::HeldByOther)) => {
                    if renewed_at.take().is_some() {
                        tracing::warn!(lease = %self.name, "another replica holds the Lease");
                        leader.send_replace(false);
                    }
                }
                failed => {
                    if let Some(Err(error)) = &failed {
                        tracing::debug!(lease = %self.name, %error, "Lease attempt failed");
                    }
                    if let Some(last) = renewed_at
                        && Instant::now() >= last + self.timings.renew_deadline
                    {
                        tracing::warn!(
                            lease = %self.name,
                            deadline = ?self.timings.renew_deadline,
                            "could not renew the Lease within its renew deadline: stepping down"
                        );
                        renewed_at = None;
                        leader.send_replace(false);
                    }
                }
            }
            let pause = self
                .timings
                .retry_period
                .mul_f64(rand::random_range(0.8..=1.0));
            let wake = match renewed_at {
                // Never sleep past the deadline: stepping down must not wait.
                Some(last) => (attempt_start + pause).min(last + self.timings.renew_deadline),
                None => attempt_start + pause,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = &mut shutdown => break,
            }
        }
        if renewed_at.is_some() {
            leader.send_replace(false);
            let release = tokio::time::timeout(self.timings.retry_period, self.release());
            match release.await {
                Ok(Ok(())) => tracing::debug!(lease = %self.name, "Lease released"),
                Ok(Err(error)) => {
                    tracing::warn!(lease = %self.name, %error, "could not release the Lease")
                }
                Err(_) => tracing::warn!(lease = %self.name, "releasing the Lease timed out"),
            }
        }
    }

    /// Remember `lease`'s record, restarting the expiry clock when it changed.
    fn observe(&mut self, lease: &Lease) -> Instant {
        let record = Observed::of(lease);
        match &self.observed {
            Some((seen, at)) if *seen == record => *at,
            _ => {
                let now = Instant::now();
                self.observed = Some((record, now));
                now
            }
        }
    }

    fn lease_duration_of(&self, lease: &Lease) -> Duration {
        let ours = self.timings.lease_duration;
        lease
            .spec
            .as_ref()
            .and_then(|s| s.lease_duration_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .map_or(ours, |s| Duration::from_secs(s).max(ours))
    }

    /// Take or renew the Lease if it is ours or free (or expired by our
    /// own observation).
    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, LeaseError> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let Some(lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(LeaseError::Api)?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(now.clone(), now, 0)),
            };
            return match self.api.create(&post_params(), &lease).await {
                Ok(created) => {
                    self.observe(&created);
                    Ok(Attempt::Held)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Conflict),
                Err(e) => Err(LeaseError::Api(e)),
            };
        };
        let seen_at = self.observe(&lease);
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let ours = holder == Some(self.identity.as_str());
        if let Some(other) = holder
            && !ours
            && seen_at.elapsed() < self.lease_duration_of(&lease)
        {
            tracing::trace!(lease = %self.name, holder = other, "Lease held by another replica");
            return Ok(Attempt::HeldByOther);
        }
        let (acquired, transitions) = if ours {
            (spec.acquire_time.unwrap_or_else(|| now.clone()), 0)
        } else {
            (now.clone(), 1)
        };
        let transitions = spec.lease_transitions.unwrap_or(0) + transitions;
        let mut next = lease.clone();
        next.spec = Some(self.spec(acquired, now, transitions));
        match self.api.replace(&self.name, &post_params(), &next).await {
            Ok(written) => {
                self.observe(&written);
                Ok(Attempt::Held)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Conflict),
            Err(e) => Err(LeaseError::Api(e)),
        }
    }

    fn spec(&self, acquired: MicroTime, renewed: MicroTime, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: i32::try_from(self.timings.lease_duration.as_secs()).ok(),
            acquire_time: Some(acquired),
            renew_time: Some(renewed),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Give the Lease up (only if still ours) so a standby need not wait.
    async fn release(&mut self) -> Result<(), LeaseError> {
        let Some(lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(LeaseError::Api)?
        else {
            return Ok(());
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        let mut next = lease.clone();
        next.spec = Some(LeaseSpec {
            holder_identity: None,
            renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            ..spec
        });
        self.api
            .replace(&self.name, &post_params(), &next)
            .await
            .map_err(LeaseError::Api)?;
        Ok(())
    }
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_steps_down_before_a_standby_may_take_over() {
        let t = LeaseTimings::DEFAULT;
        assert!(t.renew_deadline + t.retry_period < t.lease_duration);
        assert!(t.lease_duration - t.renew_deadline >= Duration::from_secs(5));
    }
}
