//! API keys that cannot leak by accident.
//!
//! An [`ApiKey`] prints as `ApiKey(…abcd)` under both `Debug` and `Display`, is not `Serialize`,
//! and hands out the secret only through [`ApiKey::expose`], so a key reaches a log line, an error
//! message, `/status` or a panic only if someone writes `expose()` on purpose. Errors about a key
//! ([`KeyError`]) say what is wrong with it and how to fix it, never what it is.

use std::fmt;
use std::str::FromStr;

/// Keys shorter than this show no characters at all in their tail: four characters of a short
/// key are too large a share of it.
const MIN_LEN_FOR_TAIL: usize = 12;

/// How many trailing characters [`ApiKey::tail`] shows.
const TAIL_CHARS: usize = 4;

/// An API key.
///
/// Construct it with [`ApiKey::new`], [`ApiKey::from_env`] or [`str::parse`]; all three reject
/// empty keys and keys with whitespace or characters outside visible ASCII (such a key can never
/// be sent in an HTTP header, and is almost always a copy-paste accident).
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// Validate and wrap a key.
    ///
    /// # Errors
    ///
    /// [`KeyError::Invalid`] when the key is empty, contains whitespace, or contains a character
    /// that is not visible ASCII. The error never contains the key.
    pub fn new(key: impl Into<String>) -> Result<Self, KeyError> {
        let key = key.into();
        match check(&key) {
            Ok(()) => Ok(Self(key)),
            Err(problem) => Err(KeyError::Invalid(problem)),
        }
    }

    /// Read and validate a key from the environment variable `var`.
    ///
    /// # Errors
    ///
    /// [`KeyError::EnvMissing`] when the variable is not set, [`KeyError::EnvInvalid`] when it is
    /// set but does not hold a valid key (including set but empty, and not valid Unicode). Both
    /// name the variable; neither contains its value.
    pub fn from_env(var: &str) -> Result<Self, KeyError> {
        match std::env::var(var) {
            Ok(value) => match check(&value) {
                Ok(()) => Ok(Self(value)),
                Err(problem) => Err(KeyError::EnvInvalid {
                    var: var.to_owned(),
                    problem,
                }),
            },
            Err(std::env::VarError::NotPresent) => Err(KeyError::EnvMissing {
                var: var.to_owned(),
            }),
            Err(std::env::VarError::NotUnicode(_)) => Err(KeyError::EnvInvalid {
                var: var.to_owned(),
                problem: KeyProblem::NotVisibleAscii,
            }),
        }
    }

    /// The secret itself. The only way to get it: call this where the key goes on the wire, and
    /// nowhere else.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A short, non-secret label: `"…"` followed by the key's last four characters, or `"…"`
    /// alone for keys shorter than 12 characters.
    pub fn tail(&self) -> String {
        let len = self.0.chars().count();
        let mut out = String::from("…");
        if len >= MIN_LEN_FOR_TAIL {
            out.extend(self.0.chars().skip(len - TAIL_CHARS));
        }
        out
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({})", self.tail())
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({})", self.tail())
    }
}

impl FromStr for ApiKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// What is wrong with a key, without saying what the key is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyProblem {
    /// The key is the empty string.
    Empty,
    /// The key contains a space, tab, newline or other whitespace.
    Whitespace,
    /// The key contains a control character or a character outside ASCII.
    NotVisibleAscii,
}

impl fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "the key is empty: set it to an API key from the Anthropic console",
            Self::Whitespace => {
                "the key contains whitespace: remove spaces, tabs and newlines \
                 (a trailing newline from a file or a heredoc is the usual cause)"
            }
            Self::NotVisibleAscii => {
                "the key contains a character that is not visible ASCII: copy the key again \
                 as plain text (smart quotes, non-breaking spaces and control characters are \
                 the usual cause)"
            }
        })
    }
}

/// Why a key was rejected. Messages name the problem (and the variable, for environment
/// lookups) but never contain the key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A key passed in directly is not usable.
    #[error("invalid API key: {0}")]
    Invalid(KeyProblem),
    /// The environment variable is not set.
    #[error("environment variable {var} is not set: export it with your API key")]
    EnvMissing {
        /// The variable's name.
        var: String,
    },
    /// The environment variable is set but does not hold a usable key.
    #[error("environment variable {var} does not hold a valid API key: {problem}")]
    EnvInvalid {
        /// The variable's name.
        var: String,
        /// What is wrong with its value.
        problem: KeyProblem,
    },
}

impl KeyError {
    /// What is wrong with the key, if a key was found at all.
    pub fn problem(&self) -> Option<KeyProblem> {
        match self {
            Self::Invalid(p) | Self::EnvInvalid { problem: p, .. } => Some(*p),
            Self::EnvMissing { .. } => None,
        }
    }
}

fn check(key: &str) -> Result<(), KeyProblem> {
    if key.is_empty() {
        return Err(KeyProblem::Empty);
    }
    // Whitespace first: a stray newline is the common mistake and deserves the precise message.
    if key.chars().any(char::is_whitespace) {
        return Err(KeyProblem::Whitespace);
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(KeyProblem::NotVisibleAscii);
    }
    Ok(())
}

/// What replaces a secret found in text that passes through (an upstream's error message).
pub const REDACTED: &str = "[redacted]";

/// Shortest `sk-…` token taken for a secret: its part after `sk-` has at least this many
/// characters (Anthropic and OpenAI keys have dozens; shorter ones are words like `sk-learn`).
const MIN_SK_TAIL: usize = 16;

/// Removes secrets from text that reaches a client or a log from elsewhere: the configured keys
/// wherever they appear, and anything shaped like an API key (`sk-` and 16 or more of
/// `[A-Za-z0-9_-]`, as `sk-ant-api03-…` and `sk-proj-…` are). An upstream that echoes the key
/// it was sent in an error message ("invalid x-api-key sk-ant-…") must not hand it to every
/// client. Cheap to clone.
#[derive(Clone, Default)]
pub struct Redactor {
    keys: std::sync::Arc<[ApiKey]>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} keys)", self.keys.len())
    }
}

impl Redactor {
    /// A redactor of `keys` (and of every `sk-`-shaped token).
    pub fn new(keys: &[ApiKey]) -> Self {
        let mut keys = keys.to_vec();
        // Longest first: a key that is a prefix of another must not leave the other's tail.
        keys.sort_by_key(|k| std::cmp::Reverse(k.expose().len()));
        Self { keys: keys.into() }
    }

    /// `text` without secrets; borrowed (no copy) when there was none.
    pub fn redact<'a>(&self, text: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        let mut out = std::borrow::Cow::Borrowed(text);
        // A key shorter than 8 characters (a test's) would take ordinary words with it.
        for key in self.keys.iter().filter(|k| k.expose().len() >= 8) {
            if let Some(replaced) = replace_all(&out, key.expose().as_bytes()) {
                out = std::borrow::Cow::Owned(replaced);
            }
        }
        match redact_sk_tokens(&out) {
            Some(replaced) => std::borrow::Cow::Owned(replaced),
            None => out,
        }
    }

    /// [`Redactor::redact`] for text.
    pub fn redact_str<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        match self.redact(text.as_bytes()) {
            std::borrow::Cow::Borrowed(_) => std::borrow::Cow::Borrowed(text),
            // Only ASCII was replaced by ASCII, at ASCII boundaries: still UTF-8.
            std::borrow::Cow::Owned(bytes) => std::borrow::Cow::Owned(
                String::from_utf8(bytes)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            ),
        }
    }
}

/// Every occurrence of `needle` in `text` replaced by [`REDACTED`]; `None` when there is none.
fn replace_all(text: &[u8], needle: &[u8]) -> Option<Vec<u8>> {
    if needle.is_empty() || text.len() < needle.len() {
        return None;
    }
    let first = text.windows(needle.len()).position(|w| w == needle)?;
    let mut out = Vec::with_capacity(text.len());
    out.extend_from_slice(&text[..first]);
    let mut rest = &text[first..];
    while !rest.is_empty() {
        if rest.starts_with(needle) {
            out.extend_from_slice(REDACTED.as_bytes());
            rest = &rest[needle.len()..];
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    Some(out)
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// `sk-` tokens ([`MIN_SK_TAIL`] or more key characters after `sk-`, at a word start or with a
/// digit among them) replaced by `sk-` + [`REDACTED`]; `None` when there is none.
fn redact_sk_tokens(text: &[u8]) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut i = 0;
    while i + 3 <= text.len() {
        if &text[i..i + 3] == b"sk-" {
            let tail = text[i + 3..]
                .iter()
                .take_while(|&&b| is_key_byte(b))
                .count();
            // Glued to a word before it ("keysk-…"), it is a key only if it looks random (a
            // digit in it): "task-scheduler-configuration" is a word.
            let at_start = i == 0 || !is_key_byte(text[i - 1]);
            let random = text[i + 3..i + 3 + tail].iter().any(u8::is_ascii_digit);
            if tail >= MIN_SK_TAIL && (at_start || random) {
                let buf = out.get_or_insert_with(|| Vec::with_capacity(text.len()));
                buf.extend_from_slice(&text[copied..i]);
                buf.extend_from_slice(b"sk-");
                buf.extend_from_slice(REDACTED.as_bytes());
                i += 3 + tail;
                copied = i;
                continue;
            }
            // Not a key, and no `sk-` inside this run can be one either (it follows a key
            // character, its tail is shorter and has no digit the whole tail lacks): skip the
            // run, or `sk-sk-sk-…` costs a scan of the run per `sk-` (quadratic).
            i += 3 + tail;
            continue;
        }
        i += 1;
    }
    let mut buf = out?;
    buf.extend_from_slice(&text[copied..]);
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-ant-api03-SECRETSECRETSECRET-wxyz";

    #[test]
    fn accepts_a_plain_key_and_exposes_it() {
        let k = ApiKey::new(KEY).unwrap();
        assert_eq!(k.expose(), KEY);
        let parsed: ApiKey = KEY.parse().unwrap();
        assert_eq!(parsed.expose(), KEY);
    }

    #[test]
    fn debug_and_display_show_only_the_tail() {
        let k = ApiKey::new(KEY).unwrap();
        assert_eq!(format!("{k:?}"), "ApiKey(…wxyz)");
        assert_eq!(format!("{k}"), "ApiKey(…wxyz)");
        assert_eq!(format!("{k:#?}"), "ApiKey(…wxyz)");
        for shown in [
            format!("{k:?}"),
            format!("{k}"),
            format!("{:?}", vec![k.clone()]),
        ] {
            assert!(!shown.contains(KEY), "{shown}");
            assert!(!shown.contains("SECRET"), "{shown}");
        }
    }

    #[test]
    fn tail_hides_short_keys_entirely() {
        assert_eq!(ApiKey::new(KEY).unwrap().tail(), "…wxyz");
        assert_eq!(ApiKey::new("abcdefghijkl").unwrap().tail(), "…ijkl"); // 12 chars
        assert_eq!(ApiKey::new("abcdefghijk").unwrap().tail(), "…"); // 11 chars
        assert_eq!(ApiKey::new("k").unwrap().tail(), "…");
        assert_eq!(format!("{:?}", ApiKey::new("short").unwrap()), "ApiKey(…)");
    }

    #[test]
    fn rejects_bad_keys_without_echoing_them() {
        let cases = [
            ("", KeyProblem::Empty),
            ("sk-ant-SECRETSECRET\n", KeyProblem::Whitespace),
            (" sk-ant-SECRETSECRET", KeyProblem::Whitespace),
            ("sk-ant-SECRET SECRET", KeyProblem::Whitespace),
            ("sk-ant-SECRET\tSECRET", KeyProblem::Whitespace),
            ("sk-ant-SECRET\u{a0}SECRET", KeyProblem::Whitespace),
            ("sk-ant-SECRET\u{201c}SECRET", KeyProblem::NotVisibleAscii),
            ("sk-ant-SECRET\u{7f}SECRET", KeyProblem::NotVisibleAscii),
            ("sk-ant-SECRET\u{0}SECRET", KeyProblem::NotVisibleAscii),
        ];
        for (input, problem) in cases {
            let err = ApiKey::new(input).unwrap_err();
            assert_eq!(err, KeyError::Invalid(problem), "{input:?}");
            assert_eq!(err.problem(), Some(problem));
            for shown in [err.to_string(), format!("{err:?}")] {
                assert!(!shown.contains("SECRET"), "{shown}");
            }
            assert!(err.to_string().starts_with("invalid API key: "), "{err}");
        }
        assert!(ApiKey::new("").unwrap_err().to_string().contains("empty"));
        assert!(ApiKey::new("a b")
            .unwrap_err()
            .to_string()
            .contains("whitespace"));
    }

    // One test touches the environment, with variable names no other test uses, so parallel
    // tests cannot race on them.
    #[test]
    fn from_env_names_the_variable_never_the_value() {
        let good = "SEAWALL_SECRET_TEST_GOOD";
        let bad = "SEAWALL_SECRET_TEST_BAD";
        let empty = "SEAWALL_SECRET_TEST_EMPTY";
        let missing = "SEAWALL_SECRET_TEST_MISSING";
        // Only std touches the environment in these tests, and std serialises its own access.
        std::env::set_var(good, KEY);
        std::env::set_var(bad, "sk-ant-SECRETSECRET\n");
        std::env::set_var(empty, "");
        std::env::remove_var(missing);

        assert_eq!(ApiKey::from_env(good).unwrap().expose(), KEY);

        let err = ApiKey::from_env(bad).unwrap_err();
        assert_eq!(
            err,
            KeyError::EnvInvalid {
                var: bad.into(),
                problem: KeyProblem::Whitespace
            }
        );
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(shown.contains(bad), "{shown}");
            assert!(!shown.contains("SECRET\n") && !shown.contains("SECRETSECRET"));
        }

        let err = ApiKey::from_env(empty).unwrap_err();
        assert_eq!(err.problem(), Some(KeyProblem::Empty));
        assert!(err.to_string().contains(empty));

        let err = ApiKey::from_env(missing).unwrap_err();
        assert_eq!(
            err,
            KeyError::EnvMissing {
                var: missing.into()
            }
        );
        assert_eq!(err.problem(), None);
        assert!(err.to_string().contains(missing));
        assert!(err.to_string().contains("not set"));

        std::env::remove_var(good);
        std::env::remove_var(bad);
        std::env::remove_var(empty);
    }

    #[test]
    fn a_key_that_is_a_prefix_of_another_leaves_nothing_of_either() {
        let short = ApiKey::new("abcdefgh12345678").unwrap();
        let long = ApiKey::new("abcdefgh12345678-and-more-9").unwrap();
        let r = Redactor::new(&[short, long]);
        let out = r.redact_str("keys abcdefgh12345678-and-more-9 and abcdefgh12345678.");
        assert!(!out.contains("and-more"), "{out}");
        assert!(!out.contains("12345678"), "{out}");
    }

    #[test]
    fn a_long_run_of_sk_dashes_is_read_once_and_left_alone_or_redacted_whole() {
        // Glued to a word and without a digit: not a key, whatever its length.
        let run = format!("a{}", "sk-".repeat(100_000));
        assert!(matches!(
            Redactor::default().redact(run.as_bytes()),
            std::borrow::Cow::Borrowed(_)
        ));
        // At a word start it is one key, redacted whole.
        let run = format!(" {} end", "sk-".repeat(1000));
        let out = Redactor::default().redact_str(&run).into_owned();
        assert_eq!(out, format!(" sk-{REDACTED} end"));
    }
}
