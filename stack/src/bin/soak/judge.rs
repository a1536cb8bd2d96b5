//! What the filter must answer for each kind of request, and the verdict on an answer. Pure:
//! every time comes in as an argument (nanoseconds since the Unix epoch, the clock Envoy and the
//! mock read too), so the rules are unit-tested without a stack.

/// The `realm` the soak configures: a challenge carrying it comes from the filter, never from
/// the SR (whose own 401, for a request let through without an identity, has none).
pub const REALM: &str = "soak";

const SECOND: u64 = 1_000_000_000;

/// How far apart two readings of the same clock by two processes may be (loopback, one host).
const CLOCK_SLACK: u64 = SECOND / 20;

/// A refusal the filter answers itself (RFC 6750 §3), recognised by status and challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No credentials: 401 with a bare challenge.
    Missing,
    /// Inactive, unknown, revoked, expired, refresh token: 401 `invalid_token`.
    InvalidToken,
    /// Bad syntax, other scheme, oversized, two headers: 400 `invalid_request`.
    InvalidRequest,
}

impl Refusal {
    /// Whether `status` and `WWW-Authenticate` are this refusal's.
    pub fn matches(self, status: u16, challenge: Option<&str>) -> bool {
        let bare = format!("Bearer realm=\"{REALM}\"");
        let with_error = |code: &str| {
            challenge.is_some_and(|c| c.starts_with(&format!("{bare}, error=\"{code}\"")))
        };
        match self {
            Refusal::Missing => status == 401 && challenge == Some(bare.as_str()),
            Refusal::InvalidToken => status == 401 && with_error("invalid_token"),
            Refusal::InvalidRequest => status == 400 && with_error("invalid_request"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Refusal::Missing => "401 (bare challenge)",
            Refusal::InvalidToken => "401 invalid_token",
            Refusal::InvalidRequest => "400 invalid_request",
        }
    }
}

/// What an answer may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// 200 naming exactly the token's owner.
    Pass,
    /// This refusal.
    Refuse(Refusal),
    /// Either: a revoked token within the cache lifetime of an earlier answer, a token at the
    /// edge of its expiry.
    Either(Refusal),
}

/// A request's kind, with what was known about its token once the answer had arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Active for the whole run.
    Valid,
    /// Revoked mid-run: when the revocation request left and when the server acknowledged it,
    /// each `None` if it had not happened when the answer was read.
    Revoked {
        sent: Option<u64>,
        acked: Option<u64>,
    },
    /// Expires at `exp` (Unix seconds, as the server minted it).
    Expiring { exp: i64 },
    /// Never active: never issued, revoked or expired before the run, a refresh token.
    Inactive,
    /// A malformed `Authorization`.
    Malformed,
    /// No `Authorization`.
    Missing,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Valid => "valid",
            Kind::Revoked { .. } => "revoked mid-run",
            Kind::Expiring { .. } => "expiring mid-run",
            Kind::Inactive => "inactive",
            Kind::Malformed => "malformed",
            Kind::Missing => "missing",
        }
    }
}

/// What the filter must answer for a request of `kind` that left at `start` and was answered
/// at `end`. `window` is how long after a revocation was acknowledged an earlier active answer
/// may still be served from the cache (the cache's `max_ttl_secs`, counted by the filter from
/// when it asked, which was before the acknowledgement; plus a slack for clock readings).
pub fn expect(kind: Kind, start: u64, end: u64, window: u64) -> Expect {
    match kind {
        Kind::Valid => Expect::Pass,
        Kind::Revoked { sent, acked } => {
            // Answered before the revocation even left: the token was active all along.
            if sent.is_none_or(|sent| end < sent) {
                Expect::Pass
            } else if acked.is_some_and(|acked| start >= acked.saturating_add(window)) {
                Expect::Refuse(Refusal::InvalidToken)
            } else {
                Expect::Either(Refusal::InvalidToken)
            }
        }
        Kind::Expiring { exp } => {
            let exp = u64::try_from(exp).unwrap_or(0).saturating_mul(SECOND);
            // The server says active while its clock reads before `exp`; the filter never
            // serves an entry at or after `exp`, whatever the cache holds.
            if end.saturating_add(CLOCK_SLACK) < exp {
                Expect::Pass
            } else if start >= exp.saturating_add(CLOCK_SLACK) {
                Expect::Refuse(Refusal::InvalidToken)
            } else {
                Expect::Either(Refusal::InvalidToken)
            }
        }
        Kind::Inactive => Expect::Refuse(Refusal::InvalidToken),
        Kind::Malformed => Expect::Refuse(Refusal::InvalidRequest),
        Kind::Missing => Expect::Refuse(Refusal::Missing),
    }
}

/// What came back.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// `None`: no answer (connection refused or reset, timeout, unparsable).
    pub status: Option<u16>,
    pub challenge: Option<String>,
    /// The `sub` the SR saw, from a 200's body.
    pub sub: Option<String>,
    /// Every identity header value the SR saw (its `/api/users/me` echoes them).
    pub identities: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// A 200 that does not name exactly the token's owner, or that carries a forged identity.
    Mismatch,
    /// Any other wrong answer: a 5xx, no answer, a refusal of a valid token, the wrong refusal,
    /// the owner's 200 for a token that must be refused.
    Unexpected,
}

/// The verdict on `answer`, for a request whose token belongs to `owner` (`None`: nobody's)
/// and that carried a forged identity header naming `forged`, if any.
pub fn judge(
    expect: Expect,
    owner: Option<&str>,
    forged: Option<&str>,
    answer: &Answer,
) -> Verdict {
    let Some(status) = answer.status else {
        return Verdict::Unexpected;
    };
    if status == 200 {
        let names_owner = owner.is_some() && answer.sub.as_deref() == owner;
        let forged_through =
            forged.is_some_and(|f| answer.identities.iter().any(|v| v.as_str() == f));
        if !names_owner || forged_through {
            return Verdict::Mismatch;
        }
        return match expect {
            Expect::Pass | Expect::Either(_) => Verdict::Ok,
            Expect::Refuse(_) => Verdict::Unexpected,
        };
    }
    match expect {
        Expect::Pass => Verdict::Unexpected,
        Expect::Refuse(r) | Expect::Either(r) => {
            if r.matches(status, answer.challenge.as_deref()) {
                Verdict::Ok
            } else {
                Verdict::Unexpected
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = SECOND;
    const T0: u64 = 1_800_000_000 * S;
    const WINDOW: u64 = 3 * S;

    fn answer(status: u16, challenge: Option<&str>, sub: Option<&str>) -> Answer {
        Answer {
            status: Some(status),
            challenge: challenge.map(str::to_owned),
            sub: sub.map(str::to_owned),
            identities: sub.map(|s| vec![s.to_owned()]).unwrap_or_default(),
        }
    }

    const INVALID: &str = "Bearer realm=\"soak\", error=\"invalid_token\", error_description=\"x\"";
    const BAD: &str = "Bearer realm=\"soak\", error=\"invalid_request\", error_description=\"x\"";

    #[test]
    fn a_revoked_token_passes_before_the_revocation_and_never_after_the_window() {
        let revoked = |sent, acked| Kind::Revoked { sent, acked };
        // Not sent yet when the answer was read, or sent after it arrived.
        assert_eq!(
            expect(revoked(None, None), T0, T0 + 1, WINDOW),
            Expect::Pass
        );
        assert_eq!(
            expect(revoked(Some(T0 + 2), None), T0, T0 + 1, WINDOW),
            Expect::Pass
        );
        // Sent during the request, acknowledged or not: either.
        let either = Expect::Either(Refusal::InvalidToken);
        assert_eq!(expect(revoked(Some(T0), None), T0, T0 + 1, WINDOW), either);
        assert_eq!(
            expect(revoked(Some(T0), Some(T0 + S)), T0 + S, T0 + 2 * S, WINDOW),
            either
        );
        // Left a full window after the acknowledgement: refused.
        assert_eq!(
            expect(
                revoked(Some(T0), Some(T0 + S)),
                T0 + S + WINDOW,
                T0 + 5 * S,
                WINDOW
            ),
            Expect::Refuse(Refusal::InvalidToken)
        );
        // Sent long ago but never acknowledged: never required to refuse.
        assert_eq!(
            expect(revoked(Some(T0), None), T0 + 60 * S, T0 + 61 * S, WINDOW),
            either
        );
    }

    #[test]
    fn an_expiring_token_passes_before_its_exp_and_never_from_it() {
        let exp = 1_800_000_010_i64;
        let at = 1_800_000_010 * S;
        let kind = Kind::Expiring { exp };
        assert_eq!(expect(kind, at - 2 * S, at - S, WINDOW), Expect::Pass);
        let either = Expect::Either(Refusal::InvalidToken);
        assert_eq!(expect(kind, at - S, at - CLOCK_SLACK / 2, WINDOW), either);
        assert_eq!(expect(kind, at, at + 1, WINDOW), either);
        assert_eq!(
            expect(kind, at + CLOCK_SLACK, at + S, WINDOW),
            Expect::Refuse(Refusal::InvalidToken)
        );
    }

    #[test]
    fn a_200_must_name_exactly_the_owner() {
        let pass = Expect::Pass;
        assert_eq!(
            judge(pass, Some("alice"), None, &answer(200, None, Some("alice"))),
            Verdict::Ok
        );
        for other in [Some("bob"), Some("alice "), Some(""), None] {
            assert_eq!(
                judge(pass, Some("alice"), None, &answer(200, None, other)),
                Verdict::Mismatch,
                "{other:?}"
            );
        }
        // A token nobody owns has no right answer that is a 200.
        let refuse = Expect::Refuse(Refusal::InvalidToken);
        assert_eq!(
            judge(refuse, None, None, &answer(200, None, Some("alice"))),
            Verdict::Mismatch
        );
        // A forged identity that reached the SR beside the right one is a mismatch too.
        let mut both = answer(200, None, Some("alice"));
        both.identities.push("mallory".into());
        assert_eq!(
            judge(pass, Some("alice"), Some("mallory"), &both),
            Verdict::Mismatch
        );
        assert_eq!(
            judge(
                pass,
                Some("alice"),
                Some("mallory"),
                &answer(200, None, Some("alice"))
            ),
            Verdict::Ok
        );
    }

    #[test]
    fn the_owners_200_for_a_token_that_must_be_refused_is_unexpected() {
        let refuse = Expect::Refuse(Refusal::InvalidToken);
        assert_eq!(
            judge(
                refuse,
                Some("alice"),
                None,
                &answer(200, None, Some("alice"))
            ),
            Verdict::Unexpected
        );
        let either = Expect::Either(Refusal::InvalidToken);
        assert_eq!(
            judge(
                either,
                Some("alice"),
                None,
                &answer(200, None, Some("alice"))
            ),
            Verdict::Ok
        );
        assert_eq!(
            judge(
                either,
                Some("alice"),
                None,
                &answer(401, Some(INVALID), None)
            ),
            Verdict::Ok
        );
    }

    #[test]
    fn a_refusal_must_be_the_filters_and_the_right_one() {
        let cases = [
            (Refusal::InvalidToken, 401, Some(INVALID), Verdict::Ok),
            (Refusal::InvalidRequest, 400, Some(BAD), Verdict::Ok),
            (
                Refusal::Missing,
                401,
                Some("Bearer realm=\"soak\""),
                Verdict::Ok,
            ),
            // The SR's own 401 (no challenge): the filter let the request through.
            (Refusal::InvalidToken, 401, None, Verdict::Unexpected),
            (Refusal::Missing, 401, None, Verdict::Unexpected),
            // Right status, wrong error, or another realm.
            (Refusal::InvalidToken, 401, Some(BAD), Verdict::Unexpected),
            (Refusal::Missing, 401, Some(INVALID), Verdict::Unexpected),
            (
                Refusal::InvalidToken,
                401,
                Some("Bearer realm=\"api\", error=\"invalid_token\""),
                Verdict::Unexpected,
            ),
            (Refusal::InvalidRequest, 401, Some(BAD), Verdict::Unexpected),
            // The server failing is never expected.
            (Refusal::InvalidToken, 503, None, Verdict::Unexpected),
        ];
        for (refusal, status, challenge, verdict) in cases {
            assert_eq!(
                judge(
                    Expect::Refuse(refusal),
                    None,
                    None,
                    &answer(status, challenge, None)
                ),
                verdict,
                "{refusal:?} {status} {challenge:?}"
            );
        }
        // A valid token refused, or no answer at all.
        assert_eq!(
            judge(
                Expect::Pass,
                Some("alice"),
                None,
                &answer(401, Some(INVALID), None)
            ),
            Verdict::Unexpected
        );
        assert_eq!(
            judge(Expect::Pass, Some("alice"), None, &Answer::default()),
            Verdict::Unexpected
        );
    }
}
