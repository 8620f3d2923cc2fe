//! The original Scission's benchmark pickles are read as data, exactly, and hostile bytes are
//! rejected without a panic.

use proptest::prelude::*;
use scission_core::compat::pickle;
use scission_core::compat::scission::{Criterion, parse_criteria, read_benchmark, read_network_csv};
use scission_core::profile::TierKind;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/../../tests/fixtures/scission-original/benchmark_data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap()
}

#[test]
fn reads_the_published_benchmarks() {
    let m = read_benchmark("device-raspi4.dat", &fixture("device-raspi4.dat")).unwrap();
    assert_eq!((m.tier, m.name.as_str()), (TierKind::Device, "raspi4"));
    assert_eq!(m.models.len(), 18);
    let vgg = &m.models["vgg19"];
    assert_eq!(vgg.len(), 25, "layers 0 (input) and 1 form one block");
    assert_eq!((vgg[0].input_layer, vgg[0].output_layer, vgg[0].output_size), (0, 1, 12_845_184));
    assert_eq!(vgg[0].seconds, 0.07058942317962646);
    assert_eq!((vgg[5].output_layer, vgg[5].output_size), (6, 1_605_760));
    let cloud = read_benchmark("cloud-6700k(GPU).dat", &fixture("cloud-6700k(GPU).dat")).unwrap();
    assert_eq!((cloud.tier, cloud.name.as_str()), (TierKind::Cloud, "6700k(GPU)"));
}

#[test]
fn reads_the_network_csv_and_criteria() {
    let text = String::from_utf8(fixture("network_stats.csv")).unwrap();
    let rows = read_network_csv(&text).unwrap();
    assert_eq!(rows.len(), 8);
    assert_eq!((rows[0].source.as_str(), rows[0].destination.as_str(), rows[0].ping_ms, rows[0].mbps), ("raspi4", "2500", 66.7, 1.6));
    let c = parse_criteria("edge", "10, !12,-1,!-1,vm2Core,!@2500").unwrap();
    assert_eq!(
        c,
        vec![
            Criterion::Layer(10),
            Criterion::NotLayer(12),
            Criterion::Unused,
            Criterion::Used,
            Criterion::Machine("vm2Core".into()),
            Criterion::NotMachine("2500".into())
        ]
    );
    assert!(parse_criteria("edge", "!").is_err());
    assert!(parse_criteria("edge", "-5").is_err());
}

#[test]
fn hostile_pickles_are_rejected() {
    let allowed = [("__main__", "LayerBenchmark")];
    for (bytes, needle) in [
        (&b"\x80\x03cos\nsystem\n."[..], "not allowed"),
        (b"\x80\x03X\xff\xff\xff\x7f", "truncated"),
        (b"\x80\x03h\x05.", "memo 5 is empty"),
        (b"\x80\x03R.", "not supported"),
        (b"\x80\x03u.", "no mark"),
        (b"", "truncated"),
        (b".", "stack underflow"),
        (b"\x80\x03r\xff\xff\xff\xff.", "memo index too large"),
    ] {
        let err = pickle::read(bytes, &allowed).unwrap_err().to_string();
        assert!(err.contains(needle), "{bytes:?}: {err}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Random bytes and randomly corrupted real files never panic.
    #[test]
    fn never_panics(noise in proptest::collection::vec(any::<u8>(), 0..256), flips in proptest::collection::vec((0usize..29590, any::<u8>()), 1..8), cut in 0usize..29590) {
        let _ = read_benchmark("edge-x.dat", &noise);
        let mut real = fixture("edge-2500.dat");
        for (at, byte) in flips {
            real[at % 29590] = byte;
        }
        real.truncate(cut.max(1));
        let _ = read_benchmark("edge-x.dat", &real);
    }
}
