//! Encoded images (JPEG, PNG, ...) as model inputs, preprocessed the way the model was exported:
//! resized (centre crop or stretch) to the input's height and width, laid out as NCHW or NHWC
//! (read from the input's shape), scaled and normalised by a preset; and the top-k of a score
//! vector with its labels.

use image::imageops::FilterType;
use image::{DynamicImage, ImageReader, Limits};

use scission_engine::tract::prelude::*;

use crate::protocol::InputSpec;

/// Largest width or height of an image accepted.
pub const MAX_SIDE: u32 = 8192;
/// Most bytes the decoder may allocate for one image.
pub const MAX_DECODE_BYTES: u64 = 256 << 20;

/// Why an image could not become an input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ImageError(pub String);

/// How pixel values are scaled and normalised, by the framework the model came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// torchvision and most ONNX model zoos: RGB in [0, 1], minus the ImageNet mean
    /// (0.485, 0.456, 0.406), over its standard deviation (0.229, 0.224, 0.225).
    #[default]
    Imagenet,
    /// The same as `imagenet` (torchvision's `transforms.Normalize`).
    Torch,
    /// Keras `preprocess_input` in `caffe` mode (ResNet50, VGG): BGR, 0..255, minus the mean
    /// (103.939, 116.779, 123.68).
    KerasCaffe,
    /// Keras `preprocess_input` in `tf` mode (MobileNet, Inception, Xception): RGB in [-1, 1].
    KerasTf,
    /// RGB in [0, 1].
    Unit,
    /// RGB in 0..255, as floats.
    Raw,
}

/// How an image is brought to the input's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resize {
    /// Scale the shorter side to 256/224 of the target, then cut out the centre (torchvision's
    /// `Resize(256)` + `CenterCrop(224)`).
    Crop,
    /// Scale both sides to the target, ignoring the aspect ratio (Keras' `load_img` with
    /// `target_size`).
    Stretch,
}

impl Preset {
    /// The resize the preset's framework uses by default.
    pub fn default_resize(self) -> Resize {
        match self {
            Self::KerasCaffe | Self::KerasTf => Resize::Stretch,
            _ => Resize::Crop,
        }
    }

    /// `(channel order BGR?, per-channel (scale, mean, std))`: value = (pixel * scale - mean) / std.
    fn transform(self) -> (bool, [(f32, f32, f32); 3]) {
        match self {
            Self::Imagenet | Self::Torch => {
                (false, [(1.0 / 255.0, 0.485, 0.229), (1.0 / 255.0, 0.456, 0.224), (1.0 / 255.0, 0.406, 0.225)])
            }
            Self::KerasCaffe => (true, [(1.0, 103.939, 1.0), (1.0, 116.779, 1.0), (1.0, 123.68, 1.0)]),
            Self::KerasTf => (false, [(1.0 / 127.5, 1.0, 1.0); 3]),
            Self::Unit => (false, [(1.0 / 255.0, 0.0, 1.0); 3]),
            Self::Raw => (false, [(1.0, 0.0, 1.0); 3]),
        }
    }
}

/// Preprocessing of image inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preprocess {
    /// Scaling and normalisation.
    pub preset: Preset,
    /// Resizing.
    pub resize: Resize,
}

impl Default for Preprocess {
    fn default() -> Self {
        Self { preset: Preset::Imagenet, resize: Preset::Imagenet.default_resize() }
    }
}

/// Where the channels are in an image input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `[1, C, H, W]` (PyTorch).
    Nchw,
    /// `[1, H, W, C]` (TensorFlow, Keras).
    Nhwc,
}

/// An image input's layout, height, width and channels (1 or 3), read from its shape; `None`
/// when the input is not an image of batch 1.
pub fn image_layout(shape: &[usize]) -> Option<(Layout, usize, usize, usize)> {
    match *shape {
        [1, c @ (1 | 3), h, w] if h > 4 && w > 4 => Some((Layout::Nchw, h, w, c)),
        [1, h, w, c @ (1 | 3)] if h > 4 && w > 4 => Some((Layout::Nhwc, h, w, c)),
        _ => None,
    }
}

/// Decodes `bytes` and turns them into the tensor `spec` takes.
pub fn image_tensor(bytes: &[u8], spec: &InputSpec, preprocess: Preprocess) -> Result<Tensor, ImageError> {
    let Some((layout, height, width, channels)) = image_layout(&spec.shape) else {
        return Err(ImageError(format!("input '{}' of shape {:?} is not an image (batch 1, 1 or 3 channels)", spec.name, spec.shape)));
    };
    if spec.datum_type != DatumType::F32 {
        return Err(ImageError(format!("input '{}' takes {:?}; image inputs need f32", spec.name, spec.datum_type)));
    }
    let image = decode(bytes)?;
    let sized = resize(&image, width, height, preprocess.resize);
    let (bgr, transform) = preprocess.preset.transform();
    let rgb = sized.to_rgb8();
    let mut values = vec![0f32; channels * height * width];
    for (x, y, pixel) in rgb.enumerate_pixels() {
        let (x, y) = (x as usize, y as usize);
        let rgb = pixel.0.map(f32::from);
        let ordered = if bgr { [rgb[2], rgb[1], rgb[0]] } else { rgb };
        let gray = (rgb[0] + rgb[1] + rgb[2]) / 3.0;
        for c in 0..channels {
            let value = if channels == 1 { gray } else { ordered[c] };
            let (scale, mean, std) = transform[c];
            let at = match layout {
                Layout::Nchw => (c * height + y) * width + x,
                Layout::Nhwc => (y * width + x) * channels + c,
            };
            values[at] = (value * scale - mean) / std;
        }
    }
    Tensor::from_shape(&spec.shape, &values).map_err(|e| ImageError(format!("{e}")))
}

/// Decodes any format the `image` crate knows, within size limits (no decompression bombs).
fn decode(bytes: &[u8]) -> Result<DynamicImage, ImageError> {
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError(format!("cannot read the image: {e}")))?;
    if reader.format().is_none() {
        return Err(ImageError("not an image in a known format (JPEG, PNG, ...)".into()));
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    reader.decode().map_err(|e| ImageError(format!("cannot decode the image: {e}")))
}

fn resize(image: &DynamicImage, width: usize, height: usize, how: Resize) -> DynamicImage {
    let (w, h) = (u32::try_from(width).unwrap_or(u32::MAX), u32::try_from(height).unwrap_or(u32::MAX));
    match how {
        Resize::Stretch => image.resize_exact(w, h, FilterType::Triangle),
        Resize::Crop => {
            // Shorter side to 256/224 of the target's, then the centre.
            let (iw, ih) = (image.width().max(1), image.height().max(1));
            let target = (f64::from(w.max(h)) * 256.0 / 224.0).round();
            let scale = target / f64::from(iw.min(ih));
            let (sw, sh) = (((f64::from(iw) * scale).round() as u32).max(w), ((f64::from(ih) * scale).round() as u32).max(h));
            let scaled = image.resize_exact(sw, sh, FilterType::Triangle);
            scaled.crop_imm((sw - w) / 2, (sh - h) / 2, w, h)
        }
    }
}

/// The `k` highest scores, best first, with their labels when there are any.
pub fn top_k<'a>(scores: &[f32], k: usize, labels: &'a [String]) -> Vec<(usize, f32, Option<&'a str>)> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order.into_iter().take(k).map(|i| (i, scores[i], labels.get(i).map(String::as_str))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32, pixel: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
        let img = image::RgbImage::from_fn(width, height, |x, y| image::Rgb(pixel(x, y)));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn spec(shape: &[usize]) -> InputSpec {
        InputSpec { name: "x".into(), datum_type: DatumType::F32, shape: shape.to_vec() }
    }

    #[test]
    fn layouts_come_from_the_shape() {
        assert_eq!(image_layout(&[1, 3, 224, 224]), Some((Layout::Nchw, 224, 224, 3)));
        assert_eq!(image_layout(&[1, 299, 299, 3]), Some((Layout::Nhwc, 299, 299, 3)));
        assert_eq!(image_layout(&[1, 1, 28, 28]), Some((Layout::Nchw, 28, 28, 1)));
        assert_eq!(image_layout(&[1, 1000]), None);
        assert_eq!(image_layout(&[2, 3, 224, 224]), None);
    }

    #[test]
    fn a_solid_colour_is_normalised_per_channel_in_either_layout() {
        let bytes = png(40, 30, |_, _| [255, 0, 51]);
        let pre = Preprocess { preset: Preset::Unit, resize: Resize::Crop };
        let nchw = image_tensor(&bytes, &spec(&[1, 3, 8, 8]), pre).unwrap();
        let v = nchw.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec();
        assert!((v[0] - 1.0).abs() < 1e-6 && v[64].abs() < 1e-6 && (v[128] - 0.2).abs() < 1e-6, "{:?}", &v[..3]);
        let caffe = Preprocess { preset: Preset::KerasCaffe, resize: Resize::Stretch };
        let nhwc = image_tensor(&bytes, &spec(&[1, 8, 8, 3]), caffe).unwrap();
        let v = nhwc.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec();
        // BGR, minus the mean: blue 51 - 103.939, green 0 - 116.779, red 255 - 123.68.
        assert!((v[0] - (51.0 - 103.939)).abs() < 1e-3 && (v[1] + 116.779).abs() < 1e-3 && (v[2] - 131.32).abs() < 1e-3, "{:?}", &v[..3]);
    }

    #[test]
    fn the_centre_crop_keeps_the_middle() {
        // Left and right thirds black, the middle white: a centre crop of a wide image is white.
        let bytes = png(90, 30, |x, _| if (30..60).contains(&x) { [255; 3] } else { [0; 3] });
        let pre = Preprocess { preset: Preset::Unit, resize: Resize::Crop };
        let t = image_tensor(&bytes, &spec(&[1, 3, 16, 16]), pre).unwrap();
        let v = t.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec();
        assert!(v.iter().all(|&p| p > 0.9), "min {}", v.iter().copied().fold(f32::MAX, f32::min));
    }

    #[test]
    fn bad_images_are_errors() {
        assert!(image_tensor(b"not an image", &spec(&[1, 3, 8, 8]), Preprocess::default()).unwrap_err().0.contains("known format"));
        let mut truncated = png(20, 20, |_, _| [1, 2, 3]);
        truncated.truncate(40);
        assert!(image_tensor(&truncated, &spec(&[1, 3, 8, 8]), Preprocess::default()).is_err());
        assert!(image_tensor(&png(8, 8, |_, _| [0; 3]), &spec(&[1, 10]), Preprocess::default()).unwrap_err().0.contains("not an image"));
    }

    #[test]
    fn top_k_is_best_first_with_labels() {
        let labels = vec!["cat".to_string(), "dog".to_string()];
        assert_eq!(top_k(&[0.1, 0.7, 0.2], 2, &labels), vec![(1, 0.7, Some("dog")), (2, 0.2, None)]);
    }
}
