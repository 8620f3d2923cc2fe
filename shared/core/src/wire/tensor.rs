//! Tensors on the wire. A frame holds an element encoding, a shape of at most [`MAX_RANK`]
//! dimensions and the payload bytes, borrowed zero-copy from the receive buffer on decode.
//!
//! Encodings of f32 activations: `F32` (bit-exact), `F16` (half the bytes), and `Int8` with a
//! per-tensor affine map `x ≈ scale × (q − zero_point)` (a quarter of the bytes).

use alloc::borrow::Cow;
use alloc::vec::Vec;
use half::f16;
use serde::{Deserialize, Serialize};

use super::WireError;

/// Most dimensions a tensor may have.
pub const MAX_RANK: usize = 8;

/// How the elements are stored.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Elements {
    /// Little-endian f32.
    F32,
    /// Little-endian IEEE f16 (decoded to f32).
    F16,
    /// Signed bytes, `x = scale × (q − zero_point)` (decoded to f32).
    Int8 {
        /// Step between levels.
        scale: f32,
        /// Level that stands for zero.
        zero_point: i8,
    },
    /// Little-endian i64 (e.g. token ids), carried as is.
    I64,
}

impl Elements {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Elements::F32 => 4,
            Elements::F16 => 2,
            Elements::Int8 { .. } => 1,
            Elements::I64 => 8,
        }
    }
}

/// Shape of a wire tensor.
pub type Shape = heapless::Vec<u32, MAX_RANK>;

/// A tensor as sent: encoding, shape, payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorFrame<'a> {
    /// Element encoding.
    pub elements: Elements,
    /// Dimensions.
    pub shape: Shape,
    /// Payload, borrowed from the receive buffer.
    #[serde(borrow, serialize_with = "super::serialize_bytes")]
    pub data: &'a [u8],
}

impl TensorFrame<'_> {
    /// Elements the shape holds, if it does not overflow.
    pub fn volume(&self) -> Option<u64> {
        self.shape.iter().try_fold(1u64, |v, &d| v.checked_mul(u64::from(d)))
    }

    /// Checks that the payload is exactly what shape and encoding need.
    pub fn validate(&self) -> Result<(), WireError> {
        if let Elements::Int8 { scale, .. } = self.elements
            && !(scale.is_finite() && scale > 0.0)
        {
            return Err(WireError::Malformed("int8 scale is not a positive finite number"));
        }
        let expected =
            self.volume().and_then(|v| v.checked_mul(self.elements.size() as u64)).ok_or(WireError::Malformed("shape volume overflows"))?;
        if expected != self.data.len() as u64 {
            return Err(WireError::PayloadSize { got: self.data.len() as u64, expected });
        }
        Ok(())
    }

    /// The values as f32 (any float encoding). Call [`validate`](Self::validate) first.
    pub fn to_f32(&self) -> Result<Vec<f32>, WireError> {
        self.validate()?;
        Ok(match self.elements {
            Elements::F32 => self.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Elements::F16 => self.data.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Elements::Int8 { scale, zero_point } => {
                self.data.iter().map(|&q| scale * (f32::from(q as i8) - f32::from(zero_point))).collect()
            }
            Elements::I64 => return Err(WireError::Malformed("an i64 tensor is not a float tensor")),
        })
    }
}

/// f32 activations encoded for the wire: the payload bytes and their encoding. Plain f32 on a
/// little-endian machine is the values' own memory, borrowed: a large activation is copied
/// once, into the message, not first into a buffer of its own.
pub fn encode_f32(values: &[f32], encoding: crate::link::Encoding) -> (Elements, Cow<'_, [u8]>) {
    use crate::link::Encoding;
    match encoding {
        Encoding::F32 => (Elements::F32, f32_bytes(values)),
        Encoding::F16 => (Elements::F16, values.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect()),
        Encoding::Int8 => {
            let (scale, zero_point) = affine_params(values);
            let q = values.iter().map(|&v| quantise(v, scale, zero_point) as u8).collect();
            (Elements::Int8 { scale, zero_point }, q)
        }
    }
}

/// The little-endian bytes of `values`: their memory on a little-endian machine.
#[cfg(target_endian = "little")]
fn f32_bytes(values: &[f32]) -> Cow<'_, [u8]> {
    Cow::Borrowed(bytemuck::cast_slice(values))
}

/// The little-endian bytes of `values`, swapped on a big-endian machine.
#[cfg(target_endian = "big")]
fn f32_bytes(values: &[f32]) -> Cow<'_, [u8]> {
    Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// Scale and zero point mapping `[min(values, 0), max(values, 0)]` onto `[-128, 127]`.
fn affine_params(values: &[f32]) -> (f32, i8) {
    let finite = values.iter().copied().filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((0f32, 0f32), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
    let zero = -128.0 - lo / scale;
    let zero = if zero >= 127.0 {
        127
    } else if zero <= -128.0 {
        -128
    } else {
        (zero + 0.5 * zero.signum()) as i8
    };
    (scale, zero)
}

fn quantise(v: f32, scale: f32, zero_point: i8) -> i8 {
    let level = v / scale + f32::from(zero_point);
    if level.is_nan() {
        0
    } else if level >= 127.0 {
        127
    } else if level <= -128.0 {
        -128
    } else {
        (level + 0.5 * level.signum()) as i8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::Encoding;

    fn frame<'a>(elements: Elements, data: &'a [u8], dims: &[u32]) -> TensorFrame<'a> {
        TensorFrame { elements, shape: dims.iter().copied().collect(), data }
    }

    #[test]
    fn round_trips_within_each_encodings_tolerance() {
        let values: Vec<f32> = (0..1000).map(|i| ((i as f32) * 0.37).sin() * 3.0).collect();
        for (encoding, tolerance) in [(Encoding::F32, 0.0), (Encoding::F16, 3.0 * 2f32.powi(-11)), (Encoding::Int8, 6.0 / 255.0)] {
            let (elements, data) = encode_f32(&values, encoding);
            let back = frame(elements, &data, &[10, 100]).to_f32().unwrap();
            let worst = values.iter().zip(&back).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst <= tolerance, "{encoding:?}: {worst} > {tolerance}");
            assert_eq!(data.len(), values.len() * elements.size());
        }
    }

    #[test]
    fn payload_must_match_the_shape() {
        assert_eq!(frame(Elements::F32, &[0; 8], &[3]).validate(), Err(WireError::PayloadSize { got: 8, expected: 12 }));
        assert!(frame(Elements::F32, &[], &[u32::MAX, u32::MAX, u32::MAX]).validate().is_err());
        assert!(frame(Elements::Int8 { scale: f32::NAN, zero_point: 0 }, &[0], &[1]).validate().is_err());
        assert!(frame(Elements::F16, &[0; 4], &[2]).validate().is_ok());
    }
}
