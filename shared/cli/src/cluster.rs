//! The cluster's commands: `init` and `enroll` (certificates) and `serve` (edge and cloud).

use std::path::PathBuf;

use anyhow::{Context, Result};

use scission_core::link::Encoding;
use scission_net::pki;

/// Where the cluster's certificates live.
#[derive(Clone, Debug, clap::Args)]
pub struct ClusterArgs {
    /// Cluster directory (CA and node certificates, from `scission-cloud init` and `enroll`).
    #[arg(long, default_value = "cluster")]
    pub cluster: PathBuf,
}

/// Arguments of `enroll`.
#[derive(Clone, Debug, clap::Args)]
pub struct EnrollArgs {
    /// Node name (a DNS label; used with --name when the node starts, and by its peers to
    /// check they reached it).
    pub name: String,
    /// The node's role, written into its certificate: a device may only connect out and ask
    /// for plans; an edge serves stages, forwards and registers under its own name; a cloud
    /// serves stages, plans and the model file.
    #[arg(long, value_parser = ["device", "edge", "cloud"])]
    pub tier: String,
    /// Issue a new key even if NAME is enrolled already (the old certificate stays valid until
    /// revoked).
    #[arg(long)]
    pub replace: bool,
    /// Days the certificate is valid; enroll the node again before they run out.
    #[arg(long, default_value_t = pki::DEFAULT_VALID_DAYS, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub valid_days: u32,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub cluster: ClusterArgs,
}

/// Arguments of `revoke`.
#[derive(Clone, Debug, clap::Args)]
pub struct RevokeArgs {
    /// The node to refuse from now on.
    pub name: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub cluster: ClusterArgs,
}

/// Runs `revoke`: adds the node to the deny list that servers reading this cluster directory
/// check for every new connection and stream (within a second, without a restart).
pub fn run_revoke(args: &RevokeArgs) -> Result<String> {
    pki::revoke(&args.cluster.cluster, &args.name)?;
    Ok(format!(
        "revoked '{}': servers reading {} refuse it within a second; copy the file to servers with their own cluster directory\n",
        args.name,
        args.cluster.cluster.join(pki::REVOKED).display()
    ))
}

/// Runs `init`: a new cluster CA.
pub fn run_init(args: &ClusterArgs) -> Result<String> {
    pki::init_cluster(&args.cluster)?;
    Ok(format!(
        "created the cluster CA in {}; enroll nodes with `scission-cloud enroll NAME --tier edge|device|cloud`\n",
        args.cluster.display()
    ))
}

/// Runs `enroll`: a key and certificate for one node.
pub fn run_enroll(args: &EnrollArgs) -> Result<String> {
    let role = pki::Role::parse(&args.tier).with_context(|| format!("'{}' is not a role", args.tier))?;
    let (cert, key) = pki::enroll(&args.cluster.cluster, &args.name, role, args.replace, args.valid_days)?;
    Ok(format!(
        "enrolled {} ({}): {} and {}; copy them with ca.cert.pem to the node\n",
        args.name,
        args.tier,
        cert.display(),
        key.display()
    ))
}

/// Encodings on the command line.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum EncodingArg {
    /// 32-bit floats (bit-exact).
    F32,
    /// 16-bit floats.
    F16,
    /// 8-bit integers, per-tensor affine.
    Int8,
}

impl From<EncodingArg> for Encoding {
    fn from(e: EncodingArg) -> Self {
        match e {
            EncodingArg::F32 => Encoding::F32,
            EncodingArg::F16 => Encoding::F16,
            EncodingArg::Int8 => Encoding::Int8,
        }
    }
}
