//! Per-hop cost on loopback: encode an activation into a request, send it over QUIC (mutual
//! TLS), decode and validate it at the receiver, get a short answer back. Beside it, the same
//! bytes over plain TCP (length prefix, read fully, one-byte answer) in the same process.
//! Beside that, the same over TCP with the cluster's mutual TLS 1.3 (rustls, the same certificates
//! and crypto provider as QUIC): what encryption alone costs a stream.
//! Sizes: 4 KB, 400 KB, 4 MB of f32 activations. QUIC runs twice: with the project's datagrams
//! (`Datagrams::PathMtu`) and with quinn's (`Datagrams::Standard`). The bench allocates as the
//! servers do: through `scission_heap::Counting` (mimalloc), huge pages off once loaded.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use scission_core::wire::message::{Body, decode, encode};
use scission_net::{pki, quic};

#[global_allocator]
static HEAP: scission_heap::Counting = scission_heap::Counting;

const SIZES: [usize; 3] = [4_000, 400_000, 4_000_000];

fn request(values: &[f32]) -> Vec<u8> {
    scission_net::loopback::request_frame(values).expect("encodes")
}

/// A QUIC server that decodes and validates each request and answers with a pong.
fn quic_pair(rt: &tokio::runtime::Runtime, datagrams: quic::Datagrams) -> (quinn::Endpoint, quinn::Connection, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    pki::init_cluster(dir.path()).expect("CA");
    pki::enroll(dir.path(), "a", pki::Role::Cloud, false, 1).expect("enroll");
    pki::enroll(dir.path(), "b", pki::Role::Device, false, 1).expect("enroll");
    let server_id = pki::Identity::load(dir.path(), "a").expect("identity");
    let client_id = pki::Identity::load(dir.path(), "b").expect("identity");
    rt.block_on(async {
        let server =
            quic::server_with(&server_id, "127.0.0.1:0".parse().expect("addr"), None, quic::MAX_STREAMS, datagrams).expect("server");
        let addr = server.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                let Ok(conn) = incoming.await else { continue };
                tokio::spawn(async move {
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        tokio::spawn(async move {
                            let bytes = quic::read_frame(&mut recv, 64 << 20).await.expect("frame");
                            assert!(decode(&bytes).is_ok());
                            let pong = encode(&Body::Pong { nonce: 1 }).expect("pong");
                            quic::write_frame(&mut send, pong).await.expect("answer");
                        });
                    }
                });
            }
        });
        let client = quic::client_with(&client_id, Default::default(), datagrams, quic::Liveness::default()).expect("client");
        let conn = quic::connect(&client, addr, "a").await.expect("connect");
        (client, conn, dir)
    })
}

/// A TCP echo-ack server on loopback.
fn tcp_pair() -> TcpStream {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else { return };
        let mut header = [0u8; 4];
        while s.read_exact(&mut header).is_ok() {
            let mut body = vec![0u8; u32::from_le_bytes(header) as usize];
            if s.read_exact(&mut body).is_err() || s.write_all(&[1]).is_err() {
                return;
            }
        }
    });
    let s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// A TCP echo-ack server behind the cluster's mutual TLS on loopback, and a client stream to it.
fn tls_pair() -> (rustls::StreamOwned<rustls::ClientConnection, TcpStream>, tempfile::TempDir) {
    use std::sync::Arc;
    let dir = tempfile::tempdir().expect("temp dir");
    pki::init_cluster(dir.path()).expect("CA");
    pki::enroll(dir.path(), "a", pki::Role::Cloud, false, 1).expect("enroll");
    pki::enroll(dir.path(), "b", pki::Role::Device, false, 1).expect("enroll");
    let server_config = Arc::new(pki::Identity::load(dir.path(), "a").expect("identity").server_config(None).expect("TLS"));
    let client_config = Arc::new(pki::Identity::load(dir.path(), "b").expect("identity").client_config().expect("TLS"));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let Ok((tcp, _)) = listener.accept() else { return };
        tcp.set_nodelay(true).expect("nodelay");
        let mut s = rustls::StreamOwned::new(rustls::ServerConnection::new(server_config).expect("TLS"), tcp);
        let mut header = [0u8; 4];
        while s.read_exact(&mut header).is_ok() {
            let mut body = vec![0u8; u32::from_le_bytes(header) as usize];
            if s.read_exact(&mut body).is_err() || s.write_all(&[1]).is_err() || s.flush().is_err() {
                return;
            }
        }
    });
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let name = rustls::pki_types::ServerName::try_from(pki::node_dns("a")).expect("name");
    (rustls::StreamOwned::new(rustls::ClientConnection::new(client_config, name).expect("TLS"), tcp), dir)
}

fn bench(c: &mut Criterion) {
    scission_heap::set_huge_pages(false);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let pairs = [("QUIC", quic::Datagrams::PathMtu), ("QUIC, quinn's datagrams", quic::Datagrams::Standard)]
        .map(|(name, datagrams)| (name, quic_pair(&rt, datagrams)));
    let mut tcp = tcp_pair();
    let (mut tls, _tls_dir) = tls_pair();
    let mut group = c.benchmark_group("hop");
    group.sample_size(20);
    for size in SIZES {
        let values: Vec<f32> = (0..size / 4).map(|i| i as f32).collect();
        group.throughput(Throughput::Bytes(size as u64));
        for (name, (_, conn, _)) in &pairs {
            group.bench_with_input(BenchmarkId::new(format!("encode+{name}+decode"), size), &values, |b, values| {
                b.iter(|| {
                    let message = request(values);
                    rt.block_on(quic::exchange(conn, message, 1 << 20)).expect("exchange")
                })
            });
        }
        let payload = request(&values);
        group.bench_with_input(BenchmarkId::new("plain TCP", size), &payload, |b, payload| {
            b.iter(|| {
                tcp.write_all(&(payload.len() as u32).to_le_bytes()).expect("send");
                tcp.write_all(payload).expect("send");
                let mut ack = [0u8; 1];
                tcp.read_exact(&mut ack).expect("ack");
            })
        });
        group.bench_with_input(BenchmarkId::new("TCP with mutual TLS", size), &payload, |b, payload| {
            b.iter(|| {
                tls.write_all(&(payload.len() as u32).to_le_bytes()).expect("send");
                tls.write_all(payload).expect("send");
                tls.flush().expect("send");
                let mut ack = [0u8; 1];
                tls.read_exact(&mut ack).expect("ack");
            })
        });
    }
    group.finish();
    for (name, (_, conn, _)) in &pairs {
        let path = conn.stats().path;
        println!("{name}: datagrams of {} bytes at the end, {} lost", path.current_mtu, path.lost_packets);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
