//! Which model a command works on: a file, or `zoo:NAME` where the binary has a zoo.

use std::path::PathBuf;

use anyhow::{Result, bail};
use scission_engine::LoadOptions;
#[cfg(feature = "onnx")]
use scission_engine::Model;

/// Which model to load and how.
#[derive(Clone, Debug, clap::Args)]
pub struct ModelArgs {
    /// ONNX model file (as exported by torch.onnx or tf2onnx), or `zoo:NAME` for a built-in
    /// model (e.g. `zoo:resnet50`; `scission-cloud zoo list` shows them), written to a cache on
    /// first use.
    pub model: PathBuf,
    /// Concrete input shape, e.g. `1,3,224,224`; repeat once per input, in model order.
    /// Needed only when the model has symbolic dimensions (such as a dynamic batch).
    #[arg(long = "input-shape", value_name = "DIMS", value_parser = parse_shape)]
    pub input_shapes: Vec<Vec<usize>>,
    /// Largest number of tensors that may cross a cut point. 1 cuts only where the whole state
    /// is one tensor (what the original Scission meant); 2 or more also cuts inside residual and
    /// Inception-like blocks.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_crossing: u16,
}

/// Resolves a zoo name to its model file (binaries with the zoo pass one; the device has none).
pub type ZooLookup = fn(&str) -> Result<PathBuf>;

impl ModelArgs {
    /// Loads the model.
    #[cfg(feature = "onnx")]
    pub fn load(&self, zoo: Option<ZooLookup>) -> Result<Model> {
        Ok(Model::load_path(&self.path(zoo)?, &self.load_options())?)
    }

    /// How to load it.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions { input_shapes: self.input_shapes.clone() }
    }

    /// The model file, with `zoo:NAME` resolved to its cached file.
    pub fn path(&self, zoo: Option<ZooLookup>) -> Result<PathBuf> {
        match (self.model.to_str().and_then(|s| s.strip_prefix("zoo:")), zoo) {
            (Some(name), Some(lookup)) => lookup(name),
            (Some(name), None) => {
                bail!("this binary has no model zoo; write {name} with `scission-cloud zoo write {name} --out FILE` and pass the file")
            }
            (None, _) => Ok(self.model.clone()),
        }
    }
}

/// Parses `1,3,224,224` (also `1x3x224x224`).
pub fn parse_shape(text: &str) -> Result<Vec<usize>, String> {
    let dims: Result<Vec<usize>, _> = text.split([',', 'x']).map(|d| d.trim().parse::<usize>()).collect();
    match dims {
        Ok(dims) if !dims.is_empty() && dims.iter().all(|&d| d > 0) => Ok(dims),
        _ => Err(format!("'{text}' is not a shape: expected positive integers separated by commas, e.g. 1,3,224,224")),
    }
}

/// A server given as `HOST:PORT`: the text (resolved again on each connection) and the address
/// it resolved to first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    /// As given.
    pub text: String,
    /// Its first address.
    pub addr: std::net::SocketAddr,
}

impl HostPort {
    /// The peer there with enrolled name `name` (a name is resolved again on reconnects).
    pub fn peer(&self, name: &str) -> scission_runtime::peer::Peer {
        match self.text.parse::<std::net::SocketAddr>() {
            Ok(addr) => scission_runtime::peer::Peer::new(addr, name),
            Err(_) => scission_runtime::peer::Peer::at_host(self.text.clone(), self.addr, name),
        }
    }
}

impl std::str::FromStr for HostPort {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Ok(Self { text: text.to_string(), addr: parse_host_port(text)? })
    }
}

/// Parses `HOST:PORT` (a name such as `edge.local:4434`, or an address), resolving the name now.
pub fn parse_host_port(text: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let mut addrs = text.to_socket_addrs().map_err(|e| format!("'{text}' is not HOST:PORT, or the host does not resolve: {e}"))?;
    addrs.next().ok_or_else(|| format!("'{text}' resolves to no address"))
}
