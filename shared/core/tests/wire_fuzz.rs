//! Fuzzing the message decoder: random bytes and randomly corrupted valid messages never make
//! it panic, and whatever it accepts is internally consistent.

use proptest::prelude::*;
use scission_core::solver::Encoding;
use scission_core::wire::message::{Body, NamedTensor, Stage, decode, encode};
use scission_core::wire::tensor::{TensorFrame, encode_f32};

/// Inputs each property runs; the closing note of the runtime issue quotes them.
const CASES: u32 = 50_000;

fn valid_message(values: &[f32], dims: (u32, u32), encoding: Encoding) -> Vec<u8> {
    let (elements, data) = encode_f32(values, encoding);
    let tensor = TensorFrame { elements, shape: [dims.0, dims.1].into_iter().collect(), data: &data };
    let body = Body::Infer {
        request: 1,
        model: [3; 32],
        stages: [Stage { tier: 1, machine: 0, start: 0, end: 5 }, Stage { tier: 2, machine: 0, start: 5, end: 9 }].into_iter().collect(),
        encoding,
        tensors: [NamedTensor { id: 2, tensor }].into_iter().collect(),
        deadline_ms: 1_000,
    };
    encode(&body).unwrap()
}

fn check_consistent(bytes: &[u8]) {
    if let Ok(Body::Infer { tensors, .. } | Body::Output { tensors, .. }) = decode(bytes) {
        for t in &tensors {
            assert!(t.tensor.validate().is_ok());
            let _ = t.tensor.to_f32();
        }
    }
}

fn encoding() -> impl Strategy<Value = Encoding> {
    prop_oneof![Just(Encoding::F32), Just(Encoding::F16), Just(Encoding::Int8)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check_consistent(&bytes);
    }

    #[test]
    fn corrupted_messages(
        rows in 1u32..6, cols in 1u32..6, encoding in encoding(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
    ) {
        let values: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.5 - 3.0).collect();
        let mut bytes = valid_message(&values, (rows, cols), encoding);
        prop_assert!(decode(&bytes).is_ok());
        for (at, byte) in flips {
            let len = bytes.len();
            bytes[at % len] = byte;
        }
        let keep = cut % (bytes.len() + 1);
        check_consistent(&bytes[..keep]);
        check_consistent(&bytes);
    }
}
