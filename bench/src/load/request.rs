//! Pre-encoded requests: each client encodes one SET and one GET template at start and,
//! per operation, copies a template into its send buffer and overwrites the fixed-width
//! key digits in place. No allocation per operation once the buffers have grown.

use super::args::KEY_DIGITS;

/// The operation a request performs, kept per in-flight request to check its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Set,
    Get,
}

/// A request template with the byte offset of the key's first digit.
#[derive(Debug, Clone)]
struct Template {
    bytes: Vec<u8>,
    /// Invariant: `bytes[digits_at..digits_at + KEY_DIGITS]` are the key digits.
    digits_at: usize,
}

fn encode_template(command: &[u8], value: Option<&[u8]>) -> Template {
    let key_len = 4 + KEY_DIGITS;
    let mut bytes = Vec::with_capacity(64 + value.map_or(0, <[u8]>::len));
    let n_args = if value.is_some() { 3 } else { 2 };
    bytes.extend_from_slice(format!("*{n_args}\r\n").as_bytes());
    bytes.extend_from_slice(format!("${}\r\n", command.len()).as_bytes());
    bytes.extend_from_slice(command);
    bytes.extend_from_slice(format!("\r\n${key_len}\r\nkey:").as_bytes());
    let digits_at = bytes.len();
    bytes.extend_from_slice(&[b'0'; KEY_DIGITS]);
    bytes.extend_from_slice(b"\r\n");
    if let Some(value) = value {
        bytes.extend_from_slice(format!("${}\r\n", value.len()).as_bytes());
        bytes.extend_from_slice(value);
        bytes.extend_from_slice(b"\r\n");
    }
    Template { bytes, digits_at }
}

/// The value every SET writes: `value_size` bytes of a repeating printable pattern.
pub fn value_bytes(value_size: usize) -> Vec<u8> {
    (0..value_size).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Encodes SET/GET requests for one client.
#[derive(Debug, Clone)]
pub struct RequestEncoder {
    set: Template,
    get: Template,
}

impl RequestEncoder {
    pub fn new(value_size: usize) -> Self {
        let value = value_bytes(value_size);
        RequestEncoder {
            set: encode_template(b"SET", Some(&value)),
            get: encode_template(b"GET", None),
        }
    }

    /// Appends the request for `kind` on key number `key_index` to `out`.
    pub fn append(&self, out: &mut Vec<u8>, kind: OpKind, key_index: u64) {
        debug_assert!(key_index < super::args::MAX_KEYS);
        let template = match kind {
            OpKind::Set => &self.set,
            OpKind::Get => &self.get,
        };
        let start = out.len();
        out.extend_from_slice(&template.bytes);
        let digits = &mut out[start + template.digits_at..start + template.digits_at + KEY_DIGITS];
        let mut rest = key_index;
        for digit in digits.iter_mut().rev() {
            *digit = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
    }

    /// Bytes of the largest request, to size buffers up front.
    pub fn max_request_bytes(&self) -> usize {
        self.set.bytes.len().max(self.get.bytes.len())
    }
}

/// SplitMix64: a tiny, fast, seedable generator for key and operation choice (quality
/// is ample for spreading keys; it is not used for anything security-related).
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-enough index in `0..bound` (multiply-shift; bias below 2^-40 for the
    /// bounds used here).
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }
}

/// Chooses each operation's kind and key.
#[derive(Debug, Clone)]
pub struct OpChooser {
    rng: SplitMix64,
    keys: u64,
    /// GET when a uniform u64 falls below this threshold.
    read_threshold: u64,
    all_reads: bool,
}

impl OpChooser {
    pub fn new(seed: u64, keys: u64, read_ratio: f64) -> Self {
        debug_assert!((0.0..=1.0).contains(&read_ratio));
        debug_assert!(keys > 0);
        OpChooser {
            rng: SplitMix64::new(seed),
            keys,
            read_threshold: (read_ratio * u64::MAX as f64) as u64,
            all_reads: read_ratio >= 1.0,
        }
    }

    pub fn next_op(&mut self) -> (OpKind, u64) {
        let kind = if self.all_reads || self.rng.next_u64() < self.read_threshold {
            OpKind::Get
        } else {
            OpKind::Set
        };
        (kind, self.rng.below(self.keys))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_request_is_valid_resp_with_the_patched_key() {
        let encoder = RequestEncoder::new(5);
        let mut out = Vec::new();
        encoder.append(&mut out, OpKind::Set, 123_456);
        encoder.append(&mut out, OpKind::Get, 7);
        assert_eq!(
            out,
            b"*3\r\n$3\r\nSET\r\n$16\r\nkey:000000123456\r\n$5\r\nabcde\r\n\
              *2\r\n$3\r\nGET\r\n$16\r\nkey:000000000007\r\n"
                .to_vec()
        );
    }

    #[test]
    fn read_ratio_extremes_choose_only_one_kind_and_keys_stay_in_range() {
        let mut writes = OpChooser::new(9, 10, 0.0);
        let mut reads = OpChooser::new(9, 10, 1.0);
        for _ in 0..10_000 {
            let (kind, key) = writes.next_op();
            assert_eq!(kind, OpKind::Set);
            assert!(key < 10);
            assert_eq!(reads.next_op().0, OpKind::Get);
        }
    }

    #[test]
    fn half_read_ratio_mixes_both_kinds() {
        let mut chooser = OpChooser::new(3, 1000, 0.5);
        let reads = (0..10_000)
            .filter(|_| chooser.next_op().0 == OpKind::Get)
            .count();
        assert!((4_000..6_000).contains(&reads), "{reads} reads of 10000");
    }
}
