//! Length-prefixed frames: a 4-byte little-endian length, then the message. The receiver
//! checks the announced length against its limit before it allocates or reads the body.

use super::WireError;

/// Bytes of the length prefix.
pub const HEADER: usize = 4;

/// Default largest frame: 64 MiB (a VGG input or the largest activation of the zoo models in
/// f32 fits many times over).
pub const DEFAULT_MAX_FRAME: u32 = 64 << 20;

/// Body length announced by a header, if within `max_frame`.
pub fn body_len(header: [u8; HEADER], max_frame: u32) -> Result<usize, WireError> {
    let len = u32::from_le_bytes(header);
    if len > max_frame {
        return Err(WireError::TooLarge { len: u64::from(len), limit: u64::from(max_frame) });
    }
    Ok(len as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_on_the_header() {
        assert_eq!(body_len(10u32.to_le_bytes(), 10), Ok(10));
        assert_eq!(body_len(11u32.to_le_bytes(), 10), Err(WireError::TooLarge { len: 11, limit: 10 }));
    }
}
