//! The wire protocol between device, edge and cloud: versioned postcard messages in
//! length-prefixed frames, with activations as compact tensor frames.
//!
//! - [`tensor`]: a tensor on the wire (element encoding, bounded shape, payload borrowed from
//!   the receive buffer) and the f32 / f16 / int8 encodings;
//! - [`message`]: the messages and their validation;
//! - [`frame`]: framing with a size limit checked before anything is allocated.
//!
//! Everything here is `no_std` + `alloc` and does no I/O: the QUIC shell reads bytes, asks
//! [`frame`] how many to expect, and hands complete frames to [`message::decode`].

pub mod frame;
pub mod message;
pub mod tensor;

/// Serializes a byte slice as one run of bytes. serde's default for `&[u8]` is a sequence,
/// written byte by byte (40 % of a 4 MB hop's CPU time); postcard encodes both the same way
/// (a varint length, then the bytes), so the wire is unchanged.
fn serialize_bytes<S: serde::Serializer>(data: &&[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(data)
}

/// Why bytes from a peer were rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A frame announces more bytes than the receiver accepts.
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// The receiver's limit.
        limit: u64,
    },
    /// The bytes are not a valid message.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// The peer speaks another protocol version.
    #[error("protocol version {got} is not supported (this build speaks {expected})")]
    Version {
        /// The peer's version.
        got: u16,
        /// Ours.
        expected: u16,
    },
    /// A tensor's payload does not match its shape and encoding.
    #[error("tensor payload is {got} bytes, but its shape and encoding need {expected}")]
    PayloadSize {
        /// Bytes present.
        got: u64,
        /// Bytes required.
        expected: u64,
    },
    /// A bound (rank, tensor count, stage count) is exceeded.
    #[error("{what} exceeds the limit of {limit}")]
    Bound {
        /// What was too large.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
}

#[cfg(test)]
mod tests {
    use alloc::vec::Vec;
    use serde::Serialize;

    #[test]
    fn byte_slices_are_written_as_serde_writes_a_sequence_of_bytes() {
        #[derive(Serialize)]
        struct AsSequence<'a> {
            data: &'a [u8],
        }
        #[derive(Serialize)]
        struct AsBytes<'a> {
            #[serde(serialize_with = "super::serialize_bytes")]
            data: &'a [u8],
        }
        for len in [0usize, 1, 127, 128, 300, 70_000] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let sequence = postcard::to_allocvec(&AsSequence { data: &data }).unwrap();
            assert_eq!(postcard::to_allocvec(&AsBytes { data: &data }).unwrap(), sequence, "{len} bytes");
        }
    }
}
