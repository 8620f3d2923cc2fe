//! Profiles on disk: pretty JSON, checked for format and version when read.

use std::path::Path;

use crate::error::{Context, Result, bail};

use scission_core::profile::{PROFILE_FORMAT, PROFILE_VERSION, Profile};

/// Writes a profile as pretty JSON.
pub fn write_profile(profile: &Profile, path: &Path) -> Result<()> {
    let json = serde_json::to_string_pretty(profile)?;
    std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))
}

/// Reads a profile, checking its format and version.
pub fn read_profile(path: &Path) -> Result<Profile> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_profile(&bytes).with_context(|| path.display().to_string())
}

/// Parses a profile's JSON, checking its format and version.
pub fn parse_profile(json: &[u8]) -> Result<Profile> {
    let profile: Profile = serde_json::from_slice(json).context("not a scission profile")?;
    if profile.format != PROFILE_FORMAT || profile.version != PROFILE_VERSION {
        bail!("profile format {} v{} is not supported (expected {PROFILE_FORMAT} v{PROFILE_VERSION})", profile.format, profile.version);
    }
    Ok(profile)
}
