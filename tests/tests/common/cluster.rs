//! A cluster on loopback: a CA, enrolled device, edge and cloud, a test model, and server
//! processes that are killed when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use scission_zoo::onnx::testmodels::TestModel;

use super::{bin, run, stderr, write_model};

/// A server process, killed when dropped.
pub struct Server {
    /// The process.
    pub child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start(bin_name: &str, args: &[&str]) -> Server {
    let mut child = Command::new(bin(bin_name)).args(args).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(60)).expect("server announces its address");
    let addr = line.rsplit(' ').next().unwrap().trim().parse().unwrap_or_else(|_| panic!("no address in {line:?}"));
    Server { child, addr }
}

pub struct Cluster {
    /// Holds everything.
    pub dir: tempfile::TempDir,
    /// The test model.
    pub model: PathBuf,
}

impl Cluster {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cluster = dir.path().join("cluster");
        assert!(run("scission-cloud", &["init", "--cluster", cluster.to_str().unwrap()]).status.success());
        for n in ["device", "edge", "cloud"] {
            let out = run("scission-cloud", &["enroll", n, "--tier", n, "--cluster", cluster.to_str().unwrap()]);
            assert!(out.status.success(), "{}", stderr(&out));
        }
        let model = write_model(dir.path(), TestModel::Branched, 32);
        Self { dir, model }
    }

    pub fn cluster(&self) -> String {
        self.dir.path().join("cluster").to_string_lossy().into_owned()
    }

    pub fn servers(&self) -> (Server, Server) {
        let model = self.model.to_str().unwrap();
        let cloud = start("scission-cloud", &["serve", model, "--cluster", &self.cluster(), "--threads", "1"]);
        let cloud_addr = cloud.addr.to_string();
        let edge = start("scission-edge", &["serve", model, "--cluster", &self.cluster(), "--cloud", &cloud_addr, "--threads", "1"]);
        (cloud, edge)
    }

    /// `scission-device run MODEL --cluster C --edge E --cloud C`, followed by `extra`.
    pub fn run_args(&self, cluster: &str, edge: SocketAddr, cloud: SocketAddr, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec!["run".into(), self.model.to_string_lossy().into_owned(), "--cluster".into(), cluster.into()];
        args.extend(["--edge".into(), edge.to_string(), "--cloud".into(), cloud.to_string()]);
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    }

    pub fn device(&self, cluster: &str, edge: SocketAddr, cloud: SocketAddr, split: &str, extra: &[&str]) -> std::process::Output {
        let mut args = self.run_args(cluster, edge, cloud, &["--split", split, "--requests", "4"]);
        args.extend(extra.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run("scission-device", &refs)
    }
}
