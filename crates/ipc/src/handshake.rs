//! The authkey handshake of `multiprocessing.connection`, as CPython 3.12+ speaks it, with
//! the legacy HMAC-MD5 form of Python 3.11 and earlier on request.
//!
//! Each side proves it holds the key by answering the other's challenge. The challenger sends
//! `#CHALLENGE#` + `{sha256}` + 40 random bytes; the answer is `{sha256}` + HMAC-SHA256(key,
//! `{sha256}` + the 40 bytes), the prefix included, so a peer cannot pick a weaker digest; the
//! challenger replies `#WELCOME#` or `#FAILURE#`. The listener challenges first, then answers
//! the client's challenge. Legacy peers send a bare 20-byte challenge and answer any challenge
//! with a bare 16-byte HMAC-MD5 (a 3.11 client answers our prefixed challenge that way too).
//!
//! Every message here is a frame read with a limit of [`MAX_MESSAGE`] bytes, so before
//! authentication a peer can make us read at most that much (a longer header is refused
//! before its body is read), and every read has the handshake's deadline.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::Sha256;

use crate::end::{DEFAULT_MAX_MESSAGE_SIZE, End};
use crate::error::{AuthError, Error, Result};
use crate::wait::far_future;

/// The longest message a peer may send before it is authenticated (as CPython's
/// `recv_bytes(256)`).
pub(crate) const MAX_MESSAGE: usize = 256;
/// How long a handshake may take unless told otherwise.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

const CHALLENGE: &[u8] = b"#CHALLENGE#";
const WELCOME: &[u8] = b"#WELCOME#";
const FAILURE: &[u8] = b"#FAILURE#";
/// Random bytes in a challenge (CPython's `MESSAGE_LENGTH`).
const NONCE_LEN: usize = 40;
/// A legacy challenge's length, and the legacy answer's (a raw HMAC-MD5).
const LEGACY_CHALLENGE_LEN: usize = 20;
const LEGACY_ANSWER_LEN: usize = 16;
/// The longest digest name CPython knows (`sha3_256`).
const MAX_DIGEST_NAME: usize = 8;

/// What one side of a connection needs for the handshake.
#[derive(Clone)]
pub(crate) struct Handshake {
    pub(crate) authkey: Vec<u8>,
    pub(crate) allow_legacy_md5: bool,
    pub(crate) timeout: Duration,
}

impl std::fmt::Debug for Handshake {
    /// Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("allow_legacy_md5", &self.allow_legacy_md5)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The digest a challenge or an answer names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Digest {
    /// `{sha256}`.
    Sha256,
    /// `{md5}`: a modern message with the legacy digest.
    Md5,
    /// No prefix: a legacy message (16 or 20 bytes), HMAC-MD5.
    Legacy,
}

impl Handshake {
    /// The listener's side: challenge, then answer the client's challenge.
    pub(crate) fn serve(&self, end: &mut End) -> Result<()> {
        self.run(end, |end, deadline| {
            self.deliver_challenge(end, deadline)?;
            self.answer_challenge(end, deadline)
        })
    }

    /// The client's side: answer the listener's challenge, then challenge it.
    ///
    /// Our challenge waits for the listener's verdict on our answer, though sending it along
    /// would save a round trip: a listener that turns us away closes with that challenge
    /// unread, so its kernel resets the connection, and the reset can destroy the
    /// `#FAILURE#` before we read it (the clear error would become `Closed`).
    pub(crate) fn connect(&self, end: &mut End) -> Result<()> {
        self.run(end, |end, deadline| {
            self.answer_challenge(end, deadline)?;
            self.deliver_challenge(end, deadline)
        })
    }

    fn run(&self, end: &mut End, steps: impl FnOnce(&End, Instant) -> Result<()>) -> Result<()> {
        let deadline = Instant::now().checked_add(self.timeout).unwrap_or_else(far_future);
        end.set_max_message_size(MAX_MESSAGE);
        let result = steps(end, deadline).map_err(|e| match e {
            Error::Timeout => Error::Authentication(AuthError::Timeout(self.timeout)),
            Error::TooLarge { len, .. } => Error::Authentication(AuthError::Protocol(format!(
                "a message of {len} bytes (at most {MAX_MESSAGE} before authentication)"
            ))),
            Error::InvalidHeader { header } => {
                Error::Authentication(AuthError::Protocol(format!("an invalid frame header {header}")))
            }
            e => e,
        });
        end.set_max_message_size(DEFAULT_MAX_MESSAGE_SIZE);
        result
    }

    fn deliver_challenge(&self, end: &End, deadline: Instant) -> Result<()> {
        let mut message = Vec::with_capacity(CHALLENGE.len() + 8 + NONCE_LEN);
        message.extend_from_slice(CHALLENGE);
        message.extend_from_slice(b"{sha256}");
        message.resize(message.len() + NONCE_LEN, 0);
        fill_random(&mut message[CHALLENGE.len() + 8..])?;
        // A few dozen bytes on a fresh connection: the socket's send buffer takes them whatever
        // the peer does, so this never waits.
        end.send_bytes(&message)?;
        let answer = recv(end, deadline)?;
        match self.verify(&message[CHALLENGE.len()..], &answer) {
            Ok(()) => end.send_bytes(WELCOME),
            Err(why) => {
                // The peer learns it failed (Python raises AuthenticationError); a peer already
                // gone does not change why we failed.
                let _ = end.send_bytes(FAILURE);
                Err(Error::Authentication(why))
            }
        }
    }

    /// Checks the peer's `answer` to our challenge `message` (digest prefix included).
    fn verify(&self, message: &[u8], answer: &[u8]) -> std::result::Result<(), AuthError> {
        let (digest, mac) = split_digest(answer)?;
        match digest {
            Digest::Sha256 => hmac_verify::<Hmac<Sha256>>(&self.authkey, message, mac),
            Digest::Md5 | Digest::Legacy if !self.allow_legacy_md5 => Err(AuthError::LegacyMd5),
            Digest::Md5 | Digest::Legacy => hmac_verify::<Hmac<Md5>>(&self.authkey, message, mac),
        }
    }

    fn answer_challenge(&self, end: &End, deadline: Instant) -> Result<()> {
        let message = recv(end, deadline)?;
        let Some(challenge) = message.strip_prefix(CHALLENGE) else {
            return Err(protocol(format!("expected a challenge, got {}", show(&message))));
        };
        if challenge.len() < LEGACY_CHALLENGE_LEN {
            return Err(protocol(format!("a challenge of {} bytes is too short", challenge.len())));
        }
        let (digest, _) = split_digest(challenge).map_err(Error::Authentication)?;
        // A legacy challenge we may not answer in kind gets a SHA-256 answer, as CPython does
        // where MD5 is unavailable: a legacy peer rejects it, a modern one may take it.
        let legacy_refused = matches!(digest, Digest::Md5 | Digest::Legacy) && !self.allow_legacy_md5;
        let answer = match digest {
            Digest::Md5 if self.allow_legacy_md5 => {
                prefixed(b"{md5}", &hmac_of::<Hmac<Md5>>(&self.authkey, challenge))
            }
            Digest::Legacy if self.allow_legacy_md5 => hmac_of::<Hmac<Md5>>(&self.authkey, challenge),
            _ => prefixed(b"{sha256}", &hmac_of::<Hmac<Sha256>>(&self.authkey, challenge)),
        };
        end.send_bytes(&answer)?;
        let reply = recv(end, deadline)?;
        if reply == WELCOME {
            Ok(())
        } else if legacy_refused {
            Err(Error::Authentication(AuthError::LegacyMd5))
        } else if reply == FAILURE {
            Err(Error::Authentication(AuthError::Rejected))
        } else {
            Err(protocol(format!("expected #WELCOME# or #FAILURE#, got {}", show(&reply))))
        }
    }
}

/// Reads one handshake message, waiting until `deadline` at most.
fn recv(end: &End, deadline: Instant) -> Result<Vec<u8>> {
    end.recv_bytes(Some(deadline.saturating_duration_since(Instant::now())))
}

/// The digest a challenge or answer names, and its payload (CPython's
/// `_get_digest_name_and_payload`): 16 or 20 bytes are legacy whatever they hold; anything
/// else must start with `{name}`.
fn split_digest(message: &[u8]) -> std::result::Result<(Digest, &[u8]), AuthError> {
    if message.len() == LEGACY_ANSWER_LEN || message.len() == LEGACY_CHALLENGE_LEN {
        return Ok((Digest::Legacy, message));
    }
    let name_end = message.iter().take(MAX_DIGEST_NAME + 2).position(|&b| b == b'}');
    let (name, payload) = match (message.first(), name_end) {
        (Some(b'{'), Some(end)) if end > 1 => (&message[1..end], &message[end + 1..]),
        _ => return Err(AuthError::Protocol(format!("no digest prefix in {}", show(message)))),
    };
    match name {
        b"sha256" => Ok((Digest::Sha256, payload)),
        b"md5" => Ok((Digest::Md5, payload)),
        other => Err(AuthError::Protocol(format!(
            "unsupported digest {:?} (mproc speaks sha256, and md5 when allowed)",
            String::from_utf8_lossy(other)
        ))),
    }
}

fn hmac_of<M: Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// Compares in constant time (`verify_slice`).
fn hmac_verify<M: Mac + hmac::digest::KeyInit>(
    key: &[u8],
    message: &[u8],
    answer: &[u8],
) -> std::result::Result<(), AuthError> {
    let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.verify_slice(answer).map_err(|_| AuthError::WrongDigest)
}

fn prefixed(prefix: &[u8], mac: &[u8]) -> Vec<u8> {
    [prefix, mac].concat()
}

fn fill_random(buf: &mut [u8]) -> Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn protocol(what: String) -> Error {
    Error::Authentication(AuthError::Protocol(what))
}

/// A peer's message in an error: its first bytes, escaped.
fn show(message: &[u8]) -> String {
    let shown: String =
        message.iter().take(32).flat_map(|&b| std::ascii::escape_default(b)).map(char::from).collect();
    if message.len() > 32 {
        format!("b\"{shown}\"... ({} bytes)", message.len())
    } else {
        format!("b\"{shown}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_prefixes_as_cpython_reads_them() {
        assert_eq!(split_digest(&[7; 16]).unwrap(), (Digest::Legacy, &[7; 16][..]));
        assert_eq!(split_digest(&[b'{'; 20]).unwrap().0, Digest::Legacy);
        assert_eq!(split_digest(b"{sha256}abc").unwrap(), (Digest::Sha256, &b"abc"[..]));
        assert_eq!(split_digest(b"{md5}abcdefghijklmnop").unwrap().0, Digest::Md5);
        assert!(matches!(split_digest(b"{sha384}abc"), Err(AuthError::Protocol(_))));
        assert!(matches!(split_digest(b"sha256}abc"), Err(AuthError::Protocol(_))));
        assert!(matches!(split_digest(b"{}abc"), Err(AuthError::Protocol(_))));
        assert!(matches!(split_digest(b"{abcdefghijk}abcdefgh"), Err(AuthError::Protocol(_))));
        assert!(matches!(split_digest(b""), Err(AuthError::Protocol(_))));
    }

    /// RFC 4231 test case 2 and RFC 2104's second example: the crates are wired right.
    #[test]
    fn hmac_known_answers() {
        let sha = hmac_of::<Hmac<Sha256>>(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex(&sha), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        let md5 = hmac_of::<Hmac<Md5>>(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex(&md5), "750c783e6ab0b503eaa86e310a5db738");
        assert_eq!(hmac_verify::<Hmac<Md5>>(b"Jefe", b"what do ya want for nothing?", &md5), Ok(()));
        assert_eq!(
            hmac_verify::<Hmac<Md5>>(b"Jeff", b"what do ya want for nothing?", &md5),
            Err(AuthError::WrongDigest)
        );
        assert_eq!(hmac_verify::<Hmac<Sha256>>(b"Jefe", b"what", &sha[..31]), Err(AuthError::WrongDigest));
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
