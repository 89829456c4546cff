//! Decoding input images to RGB and resizing them to the model's square input.
//!
//! Output images are `image::RgbImage` (u8, HWC, sRGB as stored, EXIF orientation
//! applied). Resizing is Pillow's `BILINEAR` (see [`crate::transforms::resize_bilinear`]),
//! so prepared images equal what the notebook's Pillow pipeline would produce.

use std::io::Cursor;
use std::path::Path;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits, RgbImage};
use serde::{Deserialize, Serialize};

use crate::transforms::{resize_bilinear, resize_bilinear_box};
use crate::{Error, Result};

/// Largest accepted pixel count (width x height) before decoding: a decompression-bomb guard.
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

/// How a non-square image becomes a square `size x size` one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ResizePolicy {
    /// Scale each axis independently to `size` (aspect ratio not kept; nothing is cut off).
    #[default]
    Stretch,
    /// Scale the short side to `size`, then cut the centred `size x size` square.
    Crop,
}

/// Decodes `bytes` (read from `path`, which is only used in error messages) to 8-bit RGB.
///
/// The format is detected from the content, not the extension. Grayscale, palette, RGBA,
/// 16-bit and CMYK inputs are converted (alpha is dropped, as Pillow's `convert("RGB")`);
/// EXIF orientation is applied. Images whose header declares more than `max_pixels` pixels
/// are refused before decoding. Every failure is [`Error::BadImage`] with a short reason.
pub fn decode_rgb(bytes: &[u8], path: &Path, max_pixels: u64) -> Result<RgbImage> {
    let bad = |reason: String| Error::BadImage {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.is_empty() {
        return Err(bad("empty file".into()));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(format!("cannot read: {e}")))?;
    let Some(format) = reader.format() else {
        return Err(bad("not an image (unrecognised format)".into()));
    };
    let name = format_name(format);
    if format == ImageFormat::Jpeg && !jpeg_has_end_marker(bytes) {
        // zune-jpeg decodes a cut-off scan leniently and pads it with grey; a training
        // image with a grey band is worse than a reported error.
        return Err(bad(format!(
            "truncated or corrupt {name}: the file ends before the end-of-image marker"
        )));
    }
    // Headers are read without limits so that the pixel check below can name the size;
    // the real limits are installed before any pixel buffer is allocated.
    reader.no_limits();
    let mut decoder = reader.into_decoder().map_err(|e| bad(describe(&e, name)))?;
    let (w, h) = decoder.dimensions();
    let pixels = u64::from(w) * u64::from(h);
    if pixels > max_pixels {
        return Err(bad(format!(
            "too large: {w}x{h} = {pixels} pixels exceeds the limit of {max_pixels}"
        )));
    }
    if pixels == 0 {
        return Err(bad(format!("invalid {name}: the image is {w}x{h}")));
    }
    decoder
        .set_limits(limits_for(max_pixels))
        .map_err(|e| bad(describe(&e, name)))?;
    // A malformed EXIF block should not cost the image: fall back to no rotation.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| bad(describe(&e, name)))?;
    img.apply_orientation(orientation);
    Ok(match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.into_rgb8(),
    })
}

/// Decoder limits matching `max_pixels`: no side longer than the pixel budget, and room
/// for the widest sample type (16-bit RGBA, 8 bytes per pixel) plus decoder scratch space.
fn limits_for(max_pixels: u64) -> Limits {
    let side = u32::try_from(max_pixels).unwrap_or(u32::MAX);
    let mut limits = Limits::default();
    limits.max_image_width = Some(side);
    limits.max_image_height = Some(side);
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(64 << 20));
    limits
}

/// Whether the JPEG's last scan is followed by an end-of-image marker.
///
/// Entropy-coded data escapes `0xFF` bytes, so `FF D9` after the last start-of-scan
/// (`FF DA`) can only be the real marker; searching after the last scan also skips an
/// EXIF thumbnail's own markers.
fn jpeg_has_end_marker(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_sos {
        Some(i) => bytes[i..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::Bmp => "BMP",
        ImageFormat::Tiff => "TIFF",
        ImageFormat::WebP => "WebP",
        ImageFormat::Gif => "GIF",
        other => other.extensions_str().first().copied().unwrap_or("image"),
    }
}

/// A short human reason for a decoder error.
fn describe(err: &ImageError, name: &str) -> String {
    match err {
        ImageError::Decoding(e) => format!("truncated or corrupt {name}: {e}"),
        ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            format!("truncated {name}: the file ends early")
        }
        ImageError::IoError(e) => format!("truncated or corrupt {name}: {e}"),
        ImageError::Unsupported(e) => format!("unsupported {name}: {e}"),
        ImageError::Limits(e) => format!("too large to decode within the memory limit: {e}"),
        ImageError::Parameter(e) => format!("invalid {name}: {e}"),
        ImageError::Encoding(e) => format!("{name}: {e}"),
    }
}

/// Resizes to `size x size` with the given policy, using Pillow's BILINEAR resampling
/// (antialiased when shrinking).
///
/// `Crop` resamples the centred square of side `min(w, h)` (fractional centring, like
/// Pillow's `ImageOps.fit`), which equals scaling the short side to `size` and cutting the
/// centre, without an intermediate image.
///
/// # Panics
/// If `size` is zero or the image is empty.
pub fn resize_square(img: &RgbImage, size: u32, policy: ResizePolicy) -> RgbImage {
    let (w, h) = img.dimensions();
    match policy {
        ResizePolicy::Stretch => resize_bilinear(img, size, size),
        ResizePolicy::Crop => {
            let side = w.min(h) as f32;
            let x0 = (w as f32 - side) / 2.0;
            let y0 = (h as f32 - side) / 2.0;
            resize_bilinear_box(img, [x0, y0, x0 + side, y0 + side], size, size)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::codecs::jpeg::JpegEncoder;
    use image::{ImageBuffer, Luma, LumaA, Rgb, Rgba};

    fn path() -> &'static Path {
        Path::new("in/memory.img")
    }

    fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut buf = Cursor::new(Vec::new());
        img.write_to(&mut buf, format).unwrap();
        buf.into_inner()
    }

    fn jpeg(img: &RgbImage) -> Vec<u8> {
        let mut buf = Vec::new();
        JpegEncoder::new_with_quality(&mut buf, 95)
            .encode_image(img)
            .unwrap();
        buf
    }

    fn reason(bytes: &[u8], max_pixels: u64) -> String {
        match decode_rgb(bytes, path(), max_pixels) {
            Err(Error::BadImage { path: p, reason }) => {
                assert_eq!(p, path());
                reason
            }
            Err(e) => panic!("wrong error kind: {e}"),
            Ok(img) => panic!("decoded {:?} but expected an error", img.dimensions()),
        }
    }

    /// Two colour halves, so that orientation and channel order are visible even after JPEG.
    fn halves(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, _| {
            if x < w / 2 {
                Rgb([220, 20, 20])
            } else {
                Rgb([20, 20, 220])
            }
        })
    }

    fn close(a: &Rgb<u8>, b: [u8; 3], tol: i16) -> bool {
        a.0.iter()
            .zip(b)
            .all(|(&x, y)| (i16::from(x) - i16::from(y)).abs() <= tol)
    }

    // --- minimal PNG / TIFF writers, for inputs the image crate cannot encode -------------

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }

    /// zlib stream made of stored (uncompressed) deflate blocks.
    fn zlib_stored(data: &[u8]) -> Vec<u8> {
        let mut out = vec![0x78, 0x01];
        let chunks: Vec<&[u8]> = data.chunks(65535).collect();
        for (i, c) in chunks.iter().enumerate() {
            out.push(u8::from(i + 1 == chunks.len()));
            out.extend_from_slice(&(c.len() as u16).to_le_bytes());
            out.extend_from_slice(&(!(c.len() as u16)).to_le_bytes());
            out.extend_from_slice(c);
        }
        let (mut a, mut b) = (1u32, 0u32);
        for &x in data {
            a = (a + u32::from(x)) % 65521;
            b = (b + a) % 65521;
        }
        out.extend_from_slice(&((b << 16) | a).to_be_bytes());
        out
    }

    /// An 8-bit palette PNG whose pixel (x, y) is palette entry `(x + y) % palette.len()`.
    fn palette_png(w: u32, h: u32, palette: &[[u8; 3]]) -> Vec<u8> {
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&w.to_be_bytes());
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[8, 3, 0, 0, 0]);
        png_chunk(&mut png, b"IHDR", &ihdr);
        png_chunk(&mut png, b"PLTE", &palette.concat());
        let mut raw = Vec::new();
        for y in 0..h {
            raw.push(0); // filter: none
            raw.extend((0..w).map(|x| ((x + y) as usize % palette.len()) as u8));
        }
        png_chunk(&mut png, b"IDAT", &zlib_stored(&raw));
        png_chunk(&mut png, b"IEND", &[]);
        png
    }

    /// An uncompressed little-endian CMYK TIFF, every pixel `cmyk`.
    fn cmyk_tiff(w: u32, h: u32, cmyk: [u8; 4]) -> Vec<u8> {
        let pixels: Vec<u8> = (0..w * h).flat_map(|_| cmyk).collect();
        let entries: [(u16, u16, u32, u32); 10] = [
            (256, 4, 1, w),                   // ImageWidth (LONG)
            (257, 4, 1, h),                   // ImageLength
            (258, 3, 4, 0),                   // BitsPerSample: 4 x 8, stored out of line
            (259, 3, 1, 1),                   // Compression: none
            (262, 3, 1, 5),                   // Photometric: separated (CMYK)
            (273, 4, 1, 0),                   // StripOffsets, patched below
            (277, 3, 1, 4),                   // SamplesPerPixel
            (278, 4, 1, h),                   // RowsPerStrip
            (279, 4, 1, pixels.len() as u32), // StripByteCounts
            (284, 3, 1, 1),                   // PlanarConfiguration: chunky
        ];
        let ifd_len = 2 + entries.len() * 12 + 4;
        let bps_at = 8 + ifd_len as u32;
        let data_at = bps_at + 8;
        let mut t = b"II*\0".to_vec();
        t.extend_from_slice(&8u32.to_le_bytes());
        t.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        for (tag, kind, count, value) in entries {
            let value = match tag {
                258 => bps_at,
                273 => data_at,
                _ => value,
            };
            t.extend_from_slice(&tag.to_le_bytes());
            t.extend_from_slice(&kind.to_le_bytes());
            t.extend_from_slice(&count.to_le_bytes());
            if kind == 3 && count == 1 {
                t.extend_from_slice(&(value as u16).to_le_bytes());
                t.extend_from_slice(&[0, 0]);
            } else {
                t.extend_from_slice(&value.to_le_bytes());
            }
        }
        t.extend_from_slice(&0u32.to_le_bytes());
        t.extend_from_slice(&[8, 0, 8, 0, 8, 0, 8, 0]);
        t.extend_from_slice(&pixels);
        t
    }

    /// Inserts an APP1 EXIF segment with the given orientation right after SOI.
    fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        let mut tiff = b"MM\0*\0\0\0\x08".to_vec();
        tiff.extend_from_slice(&1u16.to_be_bytes());
        tiff.extend_from_slice(&0x0112u16.to_be_bytes());
        tiff.extend_from_slice(&3u16.to_be_bytes());
        tiff.extend_from_slice(&1u32.to_be_bytes());
        tiff.extend_from_slice(&orientation.to_be_bytes());
        tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    // --- decoding -----------------------------------------------------------------------

    #[test]
    fn decodes_png_exactly_and_jpeg_closely() {
        let img = halves(16, 8);
        let png = encode(&DynamicImage::ImageRgb8(img.clone()), ImageFormat::Png);
        assert_eq!(decode_rgb(&png, path(), DEFAULT_MAX_PIXELS).unwrap(), img);
        let out = decode_rgb(&jpeg(&img), path(), DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!(out.dimensions(), (16, 8));
        assert!(
            close(out.get_pixel(2, 4), [220, 20, 20], 12),
            "{:?}",
            out.get_pixel(2, 4)
        );
        assert!(
            close(out.get_pixel(13, 4), [20, 20, 220], 12),
            "{:?}",
            out.get_pixel(13, 4)
        );
    }

    #[test]
    fn format_comes_from_content_not_extension() {
        let img = halves(6, 4);
        let bmp = encode(&DynamicImage::ImageRgb8(img.clone()), ImageFormat::Bmp);
        let out = decode_rgb(&bmp, Path::new("photo.jpg"), DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!(out, img);
    }

    #[test]
    fn converts_gray_rgba_16bit_palette_and_cmyk() {
        let gray = ImageBuffer::from_fn(4, 3, |x, y| Luma([(x * 50 + y) as u8]));
        let out = decode_rgb(
            &encode(&DynamicImage::ImageLuma8(gray), ImageFormat::Png),
            path(),
            DEFAULT_MAX_PIXELS,
        )
        .unwrap();
        assert_eq!(*out.get_pixel(3, 2), Rgb([152, 152, 152]));

        let gray_alpha = ImageBuffer::from_fn(2, 2, |_, _| LumaA([90u8, 10]));
        let out = decode_rgb(
            &encode(&DynamicImage::ImageLumaA8(gray_alpha), ImageFormat::Png),
            path(),
            DEFAULT_MAX_PIXELS,
        )
        .unwrap();
        assert_eq!(*out.get_pixel(1, 1), Rgb([90, 90, 90]));

        // Alpha is dropped, not composited (Pillow's convert("RGB") does the same).
        let rgba = ImageBuffer::from_fn(3, 2, |x, _| Rgba([10 * x as u8, 100, 200, 0]));
        let out = decode_rgb(
            &encode(&DynamicImage::ImageRgba8(rgba), ImageFormat::Png),
            path(),
            DEFAULT_MAX_PIXELS,
        )
        .unwrap();
        assert_eq!(*out.get_pixel(2, 1), Rgb([20, 100, 200]));

        let rgb16 = ImageBuffer::from_fn(2, 2, |_, _| Rgb([0u16, 32896, 65535]));
        let out = decode_rgb(
            &encode(&DynamicImage::ImageRgb16(rgb16), ImageFormat::Png),
            path(),
            DEFAULT_MAX_PIXELS,
        )
        .unwrap();
        assert_eq!(*out.get_pixel(0, 0), Rgb([0, 128, 255]));

        let pal = palette_png(5, 3, &[[255, 0, 0], [0, 255, 0], [0, 0, 255]]);
        let out = decode_rgb(&pal, path(), DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!(out.dimensions(), (5, 3));
        assert_eq!(*out.get_pixel(0, 0), Rgb([255, 0, 0]));
        assert_eq!(*out.get_pixel(1, 0), Rgb([0, 255, 0]));
        assert_eq!(*out.get_pixel(4, 2), Rgb([255, 0, 0])); // entry (4 + 2) % 3 = 0
    }

    #[test]
    fn converts_cmyk_tiff() {
        // Pure cyan ink (C=255) is (0, 255, 255); no ink is white.
        let out = decode_rgb(&cmyk_tiff(3, 2, [255, 0, 0, 0]), path(), DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!(out.dimensions(), (3, 2));
        assert_eq!(*out.get_pixel(2, 1), Rgb([0, 255, 255]));
        let out = decode_rgb(&cmyk_tiff(2, 2, [0, 0, 0, 0]), path(), DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!(*out.get_pixel(0, 0), Rgb([255, 255, 255]));
    }

    #[test]
    fn applies_exif_orientation() {
        let base = jpeg(&halves(16, 8));
        // 6: stored rotated; displaying it needs a 90 degree clockwise turn, so the
        // stored left (red) half becomes the top.
        let out = decode_rgb(&with_exif_orientation(&base, 6), path(), DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!(out.dimensions(), (8, 16));
        assert!(
            close(out.get_pixel(4, 2), [220, 20, 20], 12),
            "{:?}",
            out.get_pixel(4, 2)
        );
        assert!(
            close(out.get_pixel(4, 13), [20, 20, 220], 12),
            "{:?}",
            out.get_pixel(4, 13)
        );
        // 3: upside down, so the red half ends on the right.
        let out = decode_rgb(&with_exif_orientation(&base, 3), path(), DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!(out.dimensions(), (16, 8));
        assert!(
            close(out.get_pixel(13, 4), [220, 20, 20], 12),
            "{:?}",
            out.get_pixel(13, 4)
        );
        // 1: unchanged.
        let out = decode_rgb(&with_exif_orientation(&base, 1), path(), DEFAULT_MAX_PIXELS).unwrap();
        assert!(close(out.get_pixel(2, 4), [220, 20, 20], 12));
    }

    #[test]
    fn rejects_empty_and_non_images() {
        assert_eq!(reason(b"", DEFAULT_MAX_PIXELS), "empty file");
        assert_eq!(
            reason(b"label,file\nbenign,a.jpg\n", DEFAULT_MAX_PIXELS),
            "not an image (unrecognised format)"
        );
    }

    #[test]
    fn rejects_truncated_and_corrupt_files() {
        let noisy = RgbImage::from_fn(64, 64, |x, y| {
            Rgb([((x * 37) ^ (y * 11)) as u8, (x * y) as u8, 90])
        });
        let full = jpeg(&noisy);
        let r = reason(&full[..full.len() / 2], DEFAULT_MAX_PIXELS);
        assert!(r.starts_with("truncated or corrupt JPEG: "), "{r}");

        let png = encode(&DynamicImage::ImageRgb8(noisy), ImageFormat::Png);
        let r = reason(&png[..png.len() / 2], DEFAULT_MAX_PIXELS);
        assert!(r.contains("PNG") && r.starts_with("truncated"), "{r}");

        let mut corrupt = png.clone();
        for b in &mut corrupt[40..80] {
            *b ^= 0x5A;
        }
        let r = reason(&corrupt, DEFAULT_MAX_PIXELS);
        assert!(r.contains("PNG"), "{r}");
    }

    #[test]
    fn refuses_too_many_pixels_before_decoding() {
        let png = encode(&DynamicImage::ImageRgb8(halves(20, 20)), ImageFormat::Png);
        assert_eq!(
            reason(&png, 399),
            "too large: 20x20 = 400 pixels exceeds the limit of 399"
        );
        assert!(decode_rgb(&png, path(), 400).is_ok());

        // A 20000x20000 BMP header with no pixel data: refused from the header alone.
        let mut bmp = b"BM".to_vec();
        bmp.extend_from_slice(&54u32.to_le_bytes()); // file size (a lie; never read)
        bmp.extend_from_slice(&0u32.to_le_bytes());
        bmp.extend_from_slice(&54u32.to_le_bytes()); // pixel data offset
        bmp.extend_from_slice(&40u32.to_le_bytes()); // BITMAPINFOHEADER
        bmp.extend_from_slice(&20000i32.to_le_bytes());
        bmp.extend_from_slice(&20000i32.to_le_bytes());
        bmp.extend_from_slice(&1u16.to_le_bytes());
        bmp.extend_from_slice(&24u16.to_le_bytes());
        bmp.extend_from_slice(&[0; 24]);
        assert_eq!(
            reason(&bmp, DEFAULT_MAX_PIXELS),
            "too large: 20000x20000 = 400000000 pixels exceeds the limit of 100000000"
        );
    }

    // --- resizing -----------------------------------------------------------------------

    #[test]
    fn resize_square_policies() {
        // 40x20: a red band on the left (x < 6), rest blue.
        let img = RgbImage::from_fn(40, 20, |x, _| {
            if x < 6 {
                Rgb([255, 0, 0])
            } else {
                Rgb([0, 0, 255])
            }
        });
        let stretch = resize_square(&img, 10, ResizePolicy::Stretch);
        assert_eq!(stretch.dimensions(), (10, 10));
        // Stretch keeps everything: output column 0 averages x in 0..6, all red.
        assert_eq!(*stretch.get_pixel(0, 5), Rgb([255, 0, 0]));
        assert_eq!(*stretch.get_pixel(9, 5), Rgb([0, 0, 255]));
        // Crop keeps the centred 20x20 (x in 10..30); the widened filter reads from x = 9,
        // still clear of the red band, so all blue.
        let crop = resize_square(&img, 10, ResizePolicy::Crop);
        assert_eq!(crop.dimensions(), (10, 10));
        assert!(crop.pixels().all(|p| *p == Rgb([0, 0, 255])));
        // Crop of a tall image, upscaled: the centred rows 8..16. Output row 0 samples
        // y = 8.25, i.e. rows 7 and 8 weighted 1/4 and 3/4 (Pillow's box reads its neighbour):
        // 70 * 0.25 + 80 * 0.75 = 77.5, rounded up.
        let tall = RgbImage::from_fn(8, 24, |_, y| Rgb([(y * 10) as u8, 0, 0]));
        let crop = resize_square(&tall, 16, ResizePolicy::Crop);
        assert_eq!(crop.dimensions(), (16, 16));
        assert_eq!(crop.get_pixel(8, 0)[0], 78);
        assert_eq!(crop.get_pixel(8, 15)[0], 153); // y = 15.75: 150 * .75 + 160 * .25 = 152.5
                                                   // Square input: both policies agree.
        let sq = halves(30, 30);
        assert_eq!(
            resize_square(&sq, 12, ResizePolicy::Stretch),
            resize_square(&sq, 12, ResizePolicy::Crop)
        );
    }
}
