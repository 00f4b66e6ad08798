//! One set of size limits for a Tally member, end to end.
//!
//! Why one place: the client port, the KV encoding and the WAL each bound what they
//! accept, and when those bounds disagree a command that one layer accepts fails in a
//! later one. The WAL failing is the worst case: every WAL error is fatal (fail-stop),
//! so a single oversized `SET` would stop each new leader in turn. [`Limits`] derives
//! every layer's bound from a few numbers and [`Limits::validate`] checks that each
//! layer accepts everything the layer in front of it lets through:
//!
//! ```text
//!  RESP request buffer  >=  max_command_bytes  +  encoding overhead  <=  max_entry_bytes (WAL)
//!  (a larger request is       (a larger command                           (one log entry)
//!   a protocol error)          gets -ERR, nothing else)
//! ```
//!
//! The output side is bounded the way Redis's `client-output-buffer-limit` does it: past
//! [`Limits::output_buffer_soft_bytes`] of unsent replies a connection is neither read
//! nor given more encoded replies until its client reads; a reply that would take it past
//! [`Limits::output_buffer_limit_bytes`] closes the connection (and is counted).

use tally_engine::kv::REQUEST_HEADER_BYTES;

use crate::resp::RespLimits;

/// Bytes the KV log encoding adds to a command's arguments: the request header (format,
/// client id, sequence, opcode), a u32 count, and a u32 length prefix per argument.
pub fn kv_encoding_overhead_bytes(n_arguments: usize) -> u64 {
    REQUEST_HEADER_BYTES as u64 + 4 + 4 * n_arguments as u64
}

/// The size limits of one member (see the module docs). Shown in `INFO limits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest command the client port accepts, counted as the sum of its arguments'
    /// bytes (name included). A larger one is answered
    /// `-ERR command of N bytes exceeds the limit of M bytes (max-command-bytes)`.
    pub max_command_bytes: usize,
    /// Largest log entry payload the WAL accepts (`WalOptions::max_entry_size_bytes`).
    pub max_entry_bytes: u64,
    /// Most bytes of one request the port buffers while it is incomplete, and the largest
    /// bulk string it parses; past it the request is a protocol error and the connection
    /// is closed (a stream that claims gigabytes is not worth reading). Above
    /// `max_command_bytes`, so a moderately oversized command gets the `-ERR` and the
    /// connection stays usable.
    pub max_request_buffer_bytes: usize,
    /// Most elements in one request array.
    pub max_arguments: usize,
    /// Most unanswered commands per connection; past it the port stops reading from it.
    pub max_pipeline_commands: usize,
    /// Unsent reply bytes past which a connection is not read, and no further reply is
    /// encoded for it, until its client reads (backpressure, not an error).
    pub output_buffer_soft_bytes: usize,
    /// A reply that would take a connection's unsent bytes past this closes the
    /// connection instead (counted as `client_output_buffer_limit_disconnections`).
    pub output_buffer_limit_bytes: usize,
    /// Most client connections open at once (`--max-clients`, Redis's `maxclients`); one
    /// more is answered `-ERR max number of clients reached` and closed (counted as
    /// `rejected_connections`).
    pub max_clients: usize,
}

impl Default for Limits {
    /// 8 MiB log entries (the WAL's default), commands up to 7.5 MiB, 16 MiB request
    /// buffers, 64 Ki arguments, 4096 unanswered commands per connection, 16 MiB of unsent
    /// replies before backpressure and 256 MiB before disconnection, 10000 clients (like
    /// Redis).
    fn default() -> Self {
        Limits {
            max_command_bytes: (8 << 20) - (512 << 10),
            max_entry_bytes: 8 << 20,
            max_request_buffer_bytes: 16 << 20,
            max_arguments: 1 << 16,
            max_pipeline_commands: 4096,
            output_buffer_soft_bytes: 16 << 20,
            output_buffer_limit_bytes: 256 << 20,
            max_clients: 10_000,
        }
    }
}

impl Limits {
    /// Checks that every layer accepts what the layer in front of it lets through.
    pub fn validate(&self) -> Result<(), String> {
        let worst_entry =
            self.max_command_bytes as u64 + kv_encoding_overhead_bytes(self.max_arguments);
        if worst_entry > self.max_entry_bytes {
            return Err(format!(
                "max-command-bytes {} plus the log encoding of {} arguments ({} bytes) exceeds \
                 max-entry-bytes {}: the WAL would refuse commands the client port accepts",
                self.max_command_bytes,
                self.max_arguments,
                kv_encoding_overhead_bytes(self.max_arguments),
                self.max_entry_bytes
            ));
        }
        if self.max_entry_bytes > u32::MAX as u64 {
            return Err(format!(
                "max-entry-bytes {} exceeds the WAL format's 4 GiB record bound",
                self.max_entry_bytes
            ));
        }
        if self.max_request_buffer_bytes < self.max_command_bytes {
            return Err(format!(
                "the request buffer ({} bytes) must hold the largest command ({} bytes)",
                self.max_request_buffer_bytes, self.max_command_bytes
            ));
        }
        if self.max_pipeline_commands == 0 || self.max_arguments == 0 || self.max_clients == 0 {
            return Err(
                "max-pipeline-commands, max-arguments and max-clients must be at least 1".into(),
            );
        }
        if self.output_buffer_soft_bytes == 0
            || self.output_buffer_limit_bytes < self.output_buffer_soft_bytes
        {
            return Err(format!(
                "the output buffer limit ({} bytes) must be at least the soft limit ({} bytes), \
                 which must be nonzero",
                self.output_buffer_limit_bytes, self.output_buffer_soft_bytes
            ));
        }
        Ok(())
    }

    /// The RESP parser's bounds.
    pub fn resp_limits(&self) -> RespLimits {
        RespLimits {
            max_bulk_bytes: self.max_request_buffer_bytes,
            max_array_elements: self.max_arguments,
            max_inline_bytes: 64 << 10,
        }
    }

    /// The `# Limits` lines of INFO (CRLF line ends).
    pub fn info_lines(&self) -> String {
        format!(
            "max_command_bytes:{}\r\nmax_entry_bytes:{}\r\nmax_request_buffer_bytes:{}\r\n\
             max_arguments:{}\r\nmax_pipeline_commands:{}\r\nclient_output_buffer_soft_bytes:{}\r\n\
             client_output_buffer_limit_bytes:{}\r\nmax_clients:{}\r\n",
            self.max_command_bytes,
            self.max_entry_bytes,
            self.max_request_buffer_bytes,
            self.max_arguments,
            self.max_pipeline_commands,
            self.output_buffer_soft_bytes,
            self.output_buffer_limit_bytes,
            self.max_clients,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_limits_let_every_accepted_command_fit_one_log_entry() {
        let limits = Limits::default();
        limits.validate().expect("defaults are consistent");
        assert!(
            limits.max_command_bytes as u64 + kv_encoding_overhead_bytes(limits.max_arguments)
                <= limits.max_entry_bytes
        );
    }

    #[test]
    fn limits_where_the_wal_would_refuse_an_accepted_command_are_refused() {
        let limits = Limits {
            max_command_bytes: 8 << 20,
            ..Limits::default()
        };
        let error = limits
            .validate()
            .expect_err("command limit equals the entry limit");
        assert!(error.contains("max-entry-bytes"), "{error}");
        let limits = Limits {
            output_buffer_limit_bytes: 1,
            ..Limits::default()
        };
        assert!(limits.validate().is_err());
    }
}
