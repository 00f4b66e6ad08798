//! Client authentication (`--requirepass-file`): Redis's `requirepass` for the default
//! user.
//!
//! Why like this: clients and tools already speak Redis's AUTH (`redis-cli -a`,
//! redis-py's `password=`), so the port accepts the same forms and answers the same
//! error lines. Until a connection authenticates, every command but AUTH, HELLO, PING and
//! QUIT gets `-NOAUTH Authentication required.` (INFO included: an unauthenticated
//! client learns nothing about the cluster). The comparison takes the same time whatever
//! the guess (the `subtle` crate), and every failure is counted (INFO `# Stats`
//! `acl_access_denied_auth`, Redis's name) and logged with the peer address.

use std::fmt;
use std::io::Read;
use std::path::Path;

use subtle::ConstantTimeEq;

use super::connection::Connection;
use super::*;

/// The reply (without `-`) to a command sent before authenticating.
pub const NOAUTH_ERROR: &str = "NOAUTH Authentication required.";
/// The reply (without `-`) to a wrong user name or password.
pub const WRONGPASS_ERROR: &str = "WRONGPASS invalid username-password pair or user is disabled.";
/// The reply (without `-`) to AUTH when no password is configured (Redis's text).
pub const AUTH_NOT_CONFIGURED_ERROR: &str = "ERR AUTH <password> called without any password \
     configured for the default user. Are you sure your configuration is correct?";
/// Largest password file read (a password is a line, not a file of megabytes).
pub const MAX_PASSWORD_FILE_BYTES: u64 = 4096;
/// The only user name: Redis's default user.
pub const DEFAULT_USER: &[u8] = b"default";

/// The password clients must give. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(Vec<u8>);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Why a password file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    /// The file could not be read.
    #[error("cannot read the password file {file}: {source}")]
    Io {
        /// Path of the file.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is larger than `MAX_PASSWORD_FILE_BYTES` (4096; only one byte more is read).
    #[error("the password file {file} is larger than {MAX_PASSWORD_FILE_BYTES} bytes")]
    TooLarge {
        /// Path of the file.
        file: String,
    },
    /// The file holds no password (empty, or only a line ending).
    #[error("the password file {file} holds an empty password")]
    Empty {
        /// Path of the file.
        file: String,
    },
}

impl Password {
    /// A password from bytes; `None` if empty (an empty password would admit everyone).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Option<Password> {
        let bytes = bytes.into();
        (!bytes.is_empty()).then_some(Password(bytes))
    }

    /// The file's content with one trailing newline (`\n` or `\r\n`) stripped; an empty
    /// result is refused.
    pub fn from_file(path: &Path) -> Result<Password, PasswordFileError> {
        let file = path.display().to_string();
        let io_error = |source| PasswordFileError::Io {
            file: file.clone(),
            source,
        };
        let mut content = Vec::new();
        std::fs::File::open(path)
            .map_err(io_error)?
            .take(MAX_PASSWORD_FILE_BYTES + 1)
            .read_to_end(&mut content)
            .map_err(io_error)?;
        if content.len() as u64 > MAX_PASSWORD_FILE_BYTES {
            return Err(PasswordFileError::TooLarge { file });
        }
        if content.ends_with(b"\n") {
            content.pop();
            if content.ends_with(b"\r") {
                content.pop();
            }
        }
        Password::new(content).ok_or(PasswordFileError::Empty { file })
    }

    /// Whether `guess` is the password, in time independent of where they differ (and,
    /// for a guess of another length, of its content).
    pub fn matches(&self, guess: &[u8]) -> bool {
        if guess.len() != self.0.len() {
            // Spend the same work as a comparison of equal lengths.
            let _ = self.0.ct_eq(&self.0);
            return false;
        }
        self.0.ct_eq(guess).into()
    }
}

/// Why an authentication attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No password is configured (Redis refuses AUTH then too).
    #[error("{AUTH_NOT_CONFIGURED_ERROR}")]
    NotConfigured,
    /// Unknown user or wrong password (counted, logged).
    #[error("{WRONGPASS_ERROR}")]
    WrongPass,
}

/// Commands a connection may send before it authenticates.
pub(super) fn allowed_before_auth(lowercase_name: &[u8]) -> bool {
    matches!(lowercase_name, b"auth" | b"hello" | b"ping" | b"quit")
}

impl Connection {
    /// Checks `user` (`None`: the default user) and `password` against the configured
    /// password and marks this connection authenticated on success. A failure is
    /// counted and logged with the peer address; an earlier success stays in force
    /// (like Redis). The hook for `HELLO ... AUTH user pass` as well as for AUTH.
    pub(super) fn authenticate(
        &mut self,
        user: Option<&[u8]>,
        password: &[u8],
        shared: &Shared,
    ) -> Result<(), AuthError> {
        let Some(expected) = &shared.config.requirepass else {
            return Err(AuthError::NotConfigured);
        };
        // Both checks always run: no early exit on the user name.
        let user_ok = user.is_none_or(|name| name == DEFAULT_USER);
        let password_ok = expected.matches(password);
        if user_ok && password_ok {
            self.authenticated = true;
            return Ok(());
        }
        let failures = shared
            .counters
            .auth_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        tracing::warn!(
            node_id = shared.config.node_id,
            remote = %self.remote,
            failures,
            "client authentication failed (wrong user name or password)"
        );
        Err(AuthError::WrongPass)
    }

    /// `AUTH password` or `AUTH user password`.
    pub(super) fn auth_command(&mut self, out: &mut Vec<u8>, args: &[&[u8]], shared: &Shared) {
        let result = match args {
            [password] => self.authenticate(None, password, shared),
            [user, password] => self.authenticate(Some(user), password, shared),
            _ => {
                write_error(out, "ERR wrong number of arguments for 'auth' command");
                return;
            }
        };
        match result {
            Ok(()) => write_simple_string(out, "OK"),
            Err(error) => write_error(out, &error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_file_loses_one_trailing_newline_and_an_empty_one_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pass");
        for (content, expected) in [
            (&b"secret\n"[..], &b"secret"[..]),
            (b"secret\r\n", b"secret"),
            (b"secret", b"secret"),
            (b"two\n\n", b"two\n"),
        ] {
            std::fs::write(&path, content).expect("write");
            let password = Password::from_file(&path).expect("a password");
            assert!(password.matches(expected), "{content:?}");
        }
        for empty in [&b""[..], b"\n", b"\r\n"] {
            std::fs::write(&path, empty).expect("write");
            assert!(matches!(
                Password::from_file(&path),
                Err(PasswordFileError::Empty { .. })
            ));
        }
        std::fs::write(&path, vec![b'x'; MAX_PASSWORD_FILE_BYTES as usize + 1]).expect("write");
        assert!(matches!(
            Password::from_file(&path),
            Err(PasswordFileError::TooLarge { .. })
        ));
        assert!(matches!(
            Password::from_file(&dir.path().join("missing")),
            Err(PasswordFileError::Io { .. })
        ));
    }

    #[test]
    fn only_the_exact_password_matches() {
        let password = Password::new("hunter2").expect("nonempty");
        assert!(password.matches(b"hunter2"));
        for wrong in [&b"hunter"[..], b"hunter22", b"Hunter2", b""] {
            assert!(!password.matches(wrong), "{wrong:?}");
        }
        assert!(Password::new("").is_none());
        assert_eq!(format!("{password:?}"), "Password(<redacted>)");
    }
}
