//! Reading `.npy` files (NumPy's array format, versions 1 to 3) as model inputs, and writing
//! outputs as version 1: little-endian f32 or i64, C order. Anything else is a clear error.

use std::path::Path;

use crate::error::{Context, Result, bail};
use tract_core::prelude::*;

const MAGIC: &[u8] = b"\x93NUMPY";

/// Reads an `.npy` file into a tensor.
pub fn read_npy(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_npy(&bytes).with_context(|| format!("{} is not a usable .npy array", path.display()))
}

/// Parses `.npy` bytes into a tensor.
pub fn parse_npy(bytes: &[u8]) -> Result<Tensor> {
    if bytes.len() < 10 || !bytes.starts_with(MAGIC) {
        bail!("not an .npy file (bad magic)");
    }
    let (header_len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10usize),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => bail!("unsupported .npy version {v}"),
    };
    let end = start.checked_add(header_len).filter(|&e| e <= bytes.len()).context("truncated header")?;
    let header = std::str::from_utf8(&bytes[start..end]).context("header is not text")?;
    let descr = field(header, "descr").context("no 'descr' in the header")?;
    if field(header, "fortran_order").is_some_and(|f| f.trim() == "True") {
        bail!("Fortran-ordered arrays are not supported; save with np.ascontiguousarray");
    }
    let shape = parse_shape(field(header, "shape").context("no 'shape' in the header")?)?;
    let data = &bytes[end..];
    let volume = shape.iter().try_fold(1usize, |v, &d| v.checked_mul(d)).context("shape overflows")?;
    let tensor = match descr.trim().trim_matches('\'') {
        "<f4" => Tensor::from_shape(&shape, &values::<4, f32>(data, volume, f32::from_le_bytes)?)?,
        "<i8" => Tensor::from_shape(&shape, &values::<8, i64>(data, volume, i64::from_le_bytes)?)?,
        other => bail!("element type {other} is not supported (use float32 '<f4' or int64 '<i8')"),
    };
    Ok(tensor)
}

/// Writes `tensor` (f32 or i64) to `path` as an `.npy` array.
pub fn write_npy(path: &Path, tensor: &Tensor) -> Result<()> {
    std::fs::write(path, npy_bytes(tensor)?).with_context(|| format!("cannot write {}", path.display()))
}

/// The `.npy` bytes (version 1, C order, header padded to 64 bytes as NumPy writes it) of an
/// f32 or i64 tensor.
pub fn npy_bytes(tensor: &Tensor) -> Result<Vec<u8>> {
    let plain = tensor.try_as_plain_ram()?;
    let (descr, data) = match tensor.datum_type() {
        DatumType::F32 => ("<f4", plain.as_slice::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()),
        DatumType::I64 => ("<i8", plain.as_slice::<i64>()?.iter().flat_map(|v| v.to_le_bytes()).collect()),
        other => bail!("a {other:?} tensor cannot be written as .npy here (float32 or int64 only)"),
    };
    let dims: Vec<String> = tensor.shape().iter().map(ToString::to_string).collect();
    let shape = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let unpadded = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let header_len = u16::try_from(header.len()).context("the shape is too long for an .npy header")?;
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&data);
    Ok(out)
}

fn values<const N: usize, T>(data: &[u8], volume: usize, from: fn([u8; N]) -> T) -> Result<Vec<T>> {
    let needed = volume.checked_mul(N).context("shape overflows")?;
    if data.len() != needed {
        bail!("the data holds {} bytes, the shape needs {needed}", data.len());
    }
    Ok(data.chunks_exact(N).map(|c| from(c.try_into().unwrap_or([0; N]))).collect())
}

/// The text after `'key':` up to the next top-level comma or closing brace.
fn field<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0usize;
    let end = rest.char_indices().find(|&(_, c)| {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' | '}' if depth == 0 => return true,
            _ => {}
        }
        false
    })?;
    Some(&rest[..end.0])
}

fn parse_shape(text: &str) -> Result<Vec<usize>> {
    let inner = text.trim().strip_prefix('(').and_then(|t| t.strip_suffix(')')).context("shape is not a tuple")?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|d| d.parse::<usize>().with_context(|| format!("bad dimension '{d}'")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn reads_f32_and_rejects_bad_files() {
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = parse_npy(&npy("<f4", "(2, 3)", &data)).unwrap();
        assert_eq!(t.shape(), &[2, 3]);
        assert_eq!(t.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap()[5], 6.0);
        assert!(parse_npy(&npy("<f4", "(2, 4)", &data)).is_err(), "short data");
        assert!(parse_npy(&npy(">f8", "(2, 3)", &data)).is_err(), "big-endian doubles");
        assert!(parse_npy(b"\x93NUMPY\x01\x00\xff\xff{").is_err(), "truncated header");
        assert!(parse_npy(b"garbage").is_err());
        let scalar = parse_npy(&npy("<i8", "()", &7i64.to_le_bytes())).unwrap();
        assert_eq!(scalar.shape(), &[] as &[usize]);
    }

    #[test]
    fn writes_what_numpy_writes_and_reads_it_back() {
        let t = Tensor::from_shape(&[2, 3], &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let bytes = npy_bytes(&t).unwrap();
        // NumPy's own bytes for np.save(f, np.arange(1, 7, dtype='<f4').reshape(2, 3)).
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        assert_eq!(&bytes[..10], b"\x93NUMPY\x01\x00\x76\x00");
        assert_eq!(&bytes[10..10 + header.len()], header.as_bytes());
        assert_eq!(bytes.len(), 128 + data.len(), "the header is padded to 64 bytes");
        assert_eq!(bytes[127], b'\n');
        assert_eq!(&bytes[128..], &data[..]);
        assert_eq!(parse_npy(&bytes).unwrap(), t);
        let one = Tensor::from_shape(&[3], &[7i64, 8, 9]).unwrap();
        assert_eq!(parse_npy(&npy_bytes(&one).unwrap()).unwrap(), one);
        assert!(npy_bytes(&Tensor::from_shape(&[1], &[1u8]).unwrap()).is_err(), "u8 is refused");
    }
}
