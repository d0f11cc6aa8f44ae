//! The surge bench's profiles: what one run measures (pages, visitors, phases), chosen with
//! KAGAMI_SURGE_PROFILE.

use super::Phase;

/// What one run measures (see the module doc).
pub struct Profile {
    pub name: &'static str,
    /// Every page this size (no PDFs); None: the municipal mix.
    pub page_size: Option<usize>,
    /// Visitors pause 0.5-1.5 s between page views; false: a closed loop.
    pub think: bool,
    /// Requests come through a trusted proxy (127.0.0.1) with one of this many client addresses
    /// in `X-Forwarded-For`; None: each visitor connects from an address of its own.
    pub forwarded: Option<usize>,
    pub health_check: bool,
    /// The phases in order, with their length in seconds.
    pub phases: Vec<(Phase, u64)>,
}

impl Profile {
    pub fn from_env(secs: u64) -> Result<Profile, String> {
        match std::env::var("KAGAMI_SURGE_PROFILE").as_deref() {
            Err(_) | Ok("surge") => {
                let (ramp, overloaded, outage) = (secs * 3 / 10, secs / 4, secs / 4);
                Ok(Profile {
                    name: "surge",
                    page_size: None,
                    think: true,
                    forwarded: None,
                    health_check: true,
                    phases: vec![
                        (Phase::Ramp, ramp),
                        (Phase::Overloaded, overloaded),
                        (Phase::Outage, outage),
                        (Phase::Recovery, secs - ramp - overloaded - outage),
                    ],
                })
            }
            Ok("issue9") => Ok(Profile {
                name: "issue9",
                page_size: Some(16 * 1024),
                think: false,
                forwarded: Some(20_000),
                health_check: false,
                phases: vec![
                    (Phase::Overloaded, secs / 3),
                    (Phase::Outage, secs / 3),
                    (Phase::Recovery, secs - 2 * (secs / 3)),
                ],
            }),
            Ok(other) => Err(format!(
                "KAGAMI_SURGE_PROFILE={other}: expected `surge` or `issue9`"
            )),
        }
    }

    pub fn default_clients(&self) -> u64 {
        if self.think {
            2000
        } else {
            500
        }
    }
}
