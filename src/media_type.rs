//! Media type from content: magic-byte sniffing for the formats Shimmie stores.
//!
//! Shimmie's data directory names files by hash with no extension, so the built-in
//! origin (and the adoption of an old cache directory) can only learn a file's type
//! from its first bytes. [`sniff`] looks at a prefix of the file (a few KiB is
//! plenty; [`SNIFF_LEN`] is what the origin reads) and never fails: anything it does
//! not recognise is `application/octet-stream`.

/// How many leading bytes callers should pass to [`sniff`]. SVG needs the most,
/// because an XML declaration, comments and a DOCTYPE may precede `<svg`.
pub const SNIFF_LEN: usize = 8192;

/// The type returned when nothing matches.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// Content-Type for a file from its first bytes (ideally [`SNIFF_LEN`] of them).
///
/// The fixed signatures are `infer`'s matchers. Where `infer` checks fewer bytes than
/// this function always did (GIF's version, RIFF before a form type, AVI's fourth
/// byte, PDF's `-`, BMP's reserved field, ICO's image count), the extra check follows
/// it, so text or random data that happens to start alike stays
/// `application/octet-stream`. Differences that remain: `infer` also knows spanned and
/// WinZip zip signatures, checks PNG's first 4 bytes (not 8), and wants one byte more
/// than a bare JPEG XL signature. By hand, because `infer` does not cover
/// them or answers differently: TIFF (`infer` wants 10 bytes and calls Canon CR2
/// something else), ISO BMFF brands, Matroska/WebM, Theora in Ogg, MP3/AAC frames and
/// ID3 before FLAC, compressed SWF (`ZWS`) and SVG.
pub fn sniff(head: &[u8]) -> &'static str {
    use infer::{archive, audio, image, video};
    // Fixed signatures first: they are unambiguous and cheap.
    if image::is_jpeg(head) {
        return "image/jpeg";
    }
    if image::is_png(head) {
        return "image/png";
    }
    if image::is_gif(head) && matches!(head.get(3..6), Some(b"87a" | b"89a")) {
        return "image/gif";
    }
    // JPEG XL: bare codestream, or the ISO BMFF-style container's signature box.
    if image::is_jxl(head) {
        return "image/jxl";
    }
    if head.starts_with(b"RIFF") {
        // `infer` looks at the form type only; RIFF is checked here.
        if image::is_webp(head) {
            return "image/webp";
        }
        if audio::is_wav(head) {
            return "audio/wav";
        }
        if video::is_avi(head) && head.get(11) == Some(&b' ') {
            return "video/x-msvideo";
        }
    }
    if let Some(t) = iso_bmff(head) {
        return t;
    }
    if head.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) {
        return matroska(head);
    }
    if audio::is_ogg(head) {
        // Theora is the only common video codec in Ogg; everything else is audio.
        let window = &head[..head.len().min(128)];
        return if find(window, b"\x80theora").is_some() {
            "video/ogg"
        } else {
            "audio/ogg"
        };
    }
    if audio::is_flac(head) {
        return "audio/flac";
    }
    if head.starts_with(b"ID3") {
        return after_id3(head);
    }
    if let Some(t) = mpeg_audio_frame(head) {
        return t;
    }
    if archive::is_pdf(head) && head.get(4) == Some(&b'-') {
        return "application/pdf";
    }
    if archive::is_zip(head) {
        return "application/zip";
    }
    if archive::is_swf(head) || head.starts_with(b"ZWS") {
        // Shimmie has a flash handler; old galleries still hold .swf posts.
        return "application/x-shockwave-flash";
    }
    if head.starts_with(b"II*\x00") || head.starts_with(b"MM\x00*") {
        return "image/tiff";
    }
    // BMP and ICO have short signatures, so also check fields that must be zero or
    // non-zero to keep random data from matching.
    if image::is_bmp(head) && head.len() >= 14 && head[6..10] == [0, 0, 0, 0] {
        return "image/bmp";
    }
    if image::is_ico(head) && head.len() >= 6 && head[4..6] != [0, 0] {
        return "image/x-icon";
    }
    if is_svg(head) {
        return "image/svg+xml";
    }
    OCTET_STREAM
}

/// ISO base media files (mp4, m4v, mov, 3gp, avif, heic): an `ftyp` box whose
/// major and compatible brands say what the file is.
fn iso_bmff(head: &[u8]) -> Option<&'static str> {
    if head.len() < 12 || &head[4..8] != b"ftyp" {
        return None;
    }
    let box_len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let major: &[u8] = &head[8..12];
    // Compatible brands follow the 4-byte minor version, up to the end of the box.
    let compatible = head.get(16..box_len.min(head.len())).unwrap_or(&[]);
    let brands = || std::iter::once(major).chain(compatible.chunks_exact(4));
    // Image brands win: an AVIF or HEIF image may list generic ISO brands too.
    if brands().any(|b| b == b"avif" || b == b"avis") {
        return Some("image/avif");
    }
    if brands().any(|b| matches!(b, b"heic" | b"heix" | b"heim" | b"heis" | b"hevc" | b"hevx")) {
        return Some("image/heic");
    }
    Some(match major {
        b"mif1" | b"msf1" | b"miaf" => "image/heif",
        b"M4V " | b"M4VH" | b"M4VP" => "video/x-m4v",
        b"M4A " | b"M4B " | b"M4P " => "audio/mp4",
        b"qt  " => "video/quicktime",
        b"3g2a" | b"3g2b" | b"3g2c" => "video/3gpp2",
        m if m.starts_with(b"3gp") => "video/3gpp",
        _ => "video/mp4",
    })
}

/// Matroska and WebM share the EBML header; its DocType element tells them apart and
/// sits within the first few dozen bytes.
fn matroska(head: &[u8]) -> &'static str {
    let window = &head[..head.len().min(64)];
    if find(window, b"webm").is_some() {
        "video/webm"
    } else {
        "video/x-matroska"
    }
}

/// An ID3v2 tag can precede MP3 frames but also FLAC; skip the tag if the head is
/// long enough to see past it, otherwise assume MP3, by far the common case.
fn after_id3(head: &[u8]) -> &'static str {
    if head.len() >= 10 {
        // Tag size is four 7-bit "syncsafe" bytes, excluding the 10-byte header and
        // the optional 10-byte footer (flag 0x10).
        let size = head[6..10]
            .iter()
            .fold(0usize, |acc, b| (acc << 7) | usize::from(b & 0x7F));
        let footer = if head[5] & 0x10 != 0 { 10 } else { 0 };
        if let Some(rest) = head.get(10 + size + footer..) {
            if rest.starts_with(b"fLaC") {
                return "audio/flac";
            }
        }
    }
    "audio/mpeg"
}

/// A bare MPEG audio frame header (MP3 without ID3) or an ADTS AAC header.
fn mpeg_audio_frame(head: &[u8]) -> Option<&'static str> {
    let [0xFF, b1, b2, ..] = *head else {
        return None;
    };
    if b1 & 0xE0 != 0xE0 {
        return None;
    }
    let version = (b1 >> 3) & 0x3;
    let layer = (b1 >> 1) & 0x3;
    if layer == 0 {
        // ADTS: 12 sync bits, then ID, then layer '00'.
        return (b1 & 0xF6 == 0xF0).then_some("audio/aac");
    }
    let bitrate = b2 >> 4;
    let sample_rate = (b2 >> 2) & 0x3;
    // Reserved values mean this is not a frame header.
    (version != 1 && bitrate != 0xF && sample_rate != 0x3).then_some("audio/mpeg")
}

/// SVG is XML whose root element is `<svg`: skip a BOM, whitespace, the XML
/// declaration, processing instructions, comments and a DOCTYPE, then look.
fn is_svg(head: &[u8]) -> bool {
    let mut s = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    loop {
        s = s.trim_ascii_start();
        let skip_to = if s.starts_with(b"<?") {
            find(s, b"?>").map(|i| i + 2)
        } else if s.starts_with(b"<!--") {
            find(&s[4..], b"-->").map(|i| i + 4 + 3)
        } else if s.len() >= 9 && s[..9].eq_ignore_ascii_case(b"<!DOCTYPE") {
            doctype_end(s)
        } else {
            break;
        };
        match skip_to {
            Some(i) => s = &s[i..],
            // The prologue runs past the head we were given: not provably SVG.
            None => return false,
        }
    }
    match s.strip_prefix(b"<svg") {
        Some(rest) => match rest.first() {
            None => true,
            Some(c) => c.is_ascii_whitespace() || *c == b'>' || *c == b'/',
        },
        None => false,
    }
}

/// Index just past the `>` that closes a DOCTYPE, allowing an internal subset in
/// `[...]` (which contains `>` of its own).
fn doctype_end(s: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s.iter().enumerate() {
        match c {
            b'[' => depth += 1,
            b']' => depth = depth.saturating_sub(1),
            b'>' if depth == 0 => return Some(i + 1),
            _ => {}
        }
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn jpeg_jfif_and_exif() {
        // JFIF (python.jpg from CPython's test data) and an Exif camera file.
        assert_eq!(
            sniff(&hex("ffd8ffe0 00104a46 49460001 01010001")),
            "image/jpeg"
        );
        assert_eq!(
            sniff(&hex("ffd8ffe1 2ffe4578 69660000 4d4d002a")),
            "image/jpeg"
        );
    }

    #[test]
    fn png() {
        let head = hex("89504e47 0d0a1a0a 0000000d 49484452 00000040 00000040 0802");
        assert_eq!(sniff(&head), "image/png");
    }

    #[test]
    fn gif_both_versions() {
        assert_eq!(sniff(b"GIF89a\x10\x00\x10\x00\x80\x00\x00"), "image/gif");
        assert_eq!(sniff(b"GIF87a\x01\x00\x01\x00\x00\x00\x00"), "image/gif");
    }

    #[test]
    fn webp() {
        // python.webp from CPython's test data (VP8X).
        let head = hex("52494646 a8010000 57454250 56503858 0a000000 10000000");
        assert_eq!(sniff(&head), "image/webp");
    }

    #[test]
    fn avif_major_and_compatible_brand() {
        // libavif: major brand avif.
        let a = hex("0000001c 66747970 61766966 00000000 61766966 6d696631 6d696166");
        assert_eq!(sniff(&a), "image/avif");
        // Some encoders: major mif1, avif only among the compatible brands.
        let b = hex("00000020 66747970 6d696631 00000000 6d696631 61766966 6d696166 4d413142");
        assert_eq!(sniff(&b), "image/avif");
        // Animated AVIF.
        let c = hex("00000020 66747970 61766973 00000000 61766973 6d736631 69736f38 6d696631");
        assert_eq!(sniff(&c), "image/avif");
    }

    #[test]
    fn heic() {
        let h = hex("00000018 66747970 68656963 00000000 6d696631 68656963");
        assert_eq!(sniff(&h), "image/heic");
    }

    #[test]
    fn jxl_codestream_and_container() {
        assert_eq!(sniff(&hex("ff0afa1f 0100")), "image/jxl");
        let container = hex("0000000c 4a584c20 0d0a870a 00000014 66747970 6a786c20");
        assert_eq!(sniff(&container), "image/jxl");
    }

    #[test]
    fn mp4_m4v_mov_m4a_3gp() {
        // ffmpeg's default mp4 muxer.
        let mp4 = hex("00000020 66747970 69736f6d 00000200 69736f6d 69736f32 61766331 6d703431");
        assert_eq!(sniff(&mp4), "video/mp4");
        let mp42 = hex("00000018 66747970 6d703432 00000000 69736f6d 6d703432");
        assert_eq!(sniff(&mp42), "video/mp4");
        // Apple m4v (HandBrake).
        let m4v = hex("0000001c 66747970 4d345620 00000001 4d345620 4d344120 6d703432 69736f6d");
        assert_eq!(sniff(&m4v), "video/x-m4v");
        let mov = hex("00000014 66747970 71742020 00000200 71742020");
        assert_eq!(sniff(&mov), "video/quicktime");
        let m4a = hex("0000001c 66747970 4d344120 00000200 4d344120 69736f6d 69736f32");
        assert_eq!(sniff(&m4a), "audio/mp4");
        let gp = hex("00000018 66747970 33677035 00000000 33677035 69736f6d");
        assert_eq!(sniff(&gp), "video/3gpp");
    }

    #[test]
    fn ftyp_box_length_bounds_brands() {
        // The box claims 16 bytes (no compatible brands); "avif" after it belongs to
        // the next box and must not count.
        let h = hex("00000010 66747970 69736f6d 00000200 61766966");
        assert_eq!(sniff(&h), "video/mp4");
    }

    #[test]
    fn webm_and_mkv() {
        // ffmpeg's WebM EBML header: DocType "webm".
        let webm =
            hex("1a45dfa3 9f428681 0142f781 0142f281 0442f381 08428284 7765626d 42878104 42858102");
        assert_eq!(sniff(&webm), "video/webm");
        let mkv =
            hex("1a45dfa3 a3428681 0142f781 0142f281 0442f381 08428288 6d617472 6f736b61 42878104");
        assert_eq!(sniff(&mkv), "video/x-matroska");
    }

    #[test]
    fn mp3_id3_and_bare_frame() {
        // gsutil's test.mp3: ID3v2.4 tag written by Lavf.
        let id3 = hex("49443304 00000000 00165453 53450000 000c0000 034c6176 6635332e 352e3000");
        assert_eq!(sniff(&id3), "audio/mpeg");
        // MPEG-1 layer III, 128 kbit/s, 44.1 kHz.
        assert_eq!(sniff(&hex("fffb9064 0000")), "audio/mpeg");
        // MPEG-2 layer III from the same file, after its tag.
        assert_eq!(sniff(&hex("fff380c4 0000")), "audio/mpeg");
        // Reserved bitrate index: not a frame.
        assert_eq!(sniff(&hex("fffbf064")), OCTET_STREAM);
    }

    #[test]
    fn aac_adts() {
        assert_eq!(sniff(&hex("fff15080 2b1ffc")), "audio/aac");
    }

    #[test]
    fn id3_before_flac() {
        let mut h = b"ID3\x04\x00\x00\x00\x00\x00\x05".to_vec();
        h.extend_from_slice(&[0; 5]);
        h.extend_from_slice(b"fLaC\x00\x00\x00\x22");
        assert_eq!(sniff(&h), "audio/flac");
    }

    #[test]
    fn ogg_vorbis_opus_theora() {
        let vorbis = [b"OggS\x00\x02".as_slice(), &[0; 20], b"\x01vorbis"].concat();
        assert_eq!(sniff(&vorbis), "audio/ogg");
        let opus = [b"OggS\x00\x02".as_slice(), &[0; 20], b"\x13OpusHead"].concat();
        assert_eq!(sniff(&opus), "audio/ogg");
        let theora = [b"OggS\x00\x02".as_slice(), &[0; 22], b"\x80theora"].concat();
        assert_eq!(sniff(&theora), "video/ogg");
    }

    #[test]
    fn flac() {
        assert_eq!(sniff(&hex("664c6143 00000022 12001200")), "audio/flac");
    }

    #[test]
    fn pdf_zip_swf_tiff_wav_avi() {
        assert_eq!(sniff(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3"), "application/pdf");
        assert_eq!(sniff(&hex("504b0304 14000000 0800")), "application/zip");
        assert_eq!(
            sniff(b"CWS\x0a\x10\x00\x00\x00"),
            "application/x-shockwave-flash"
        );
        assert_eq!(sniff(b"II*\x00\x08\x00\x00\x00"), "image/tiff");
        assert_eq!(sniff(b"RIFF\x24\x08\x00\x00WAVEfmt "), "audio/wav");
        assert_eq!(sniff(b"RIFF\x24\x08\x00\x00AVI LIST"), "video/x-msvideo");
    }

    #[test]
    fn bmp_and_ico() {
        let bmp = hex("424d3e00 00000000 00003e00 00002800");
        assert_eq!(sniff(&bmp), "image/bmp");
        let ico = hex("00000100 01001010 00000100 20006804");
        assert_eq!(sniff(&ico), "image/x-icon");
    }

    #[test]
    fn svg_plain_and_with_prologue() {
        // base64 crate's icon_CLion.svg opening.
        assert_eq!(
            sniff(
                b"<svg id=\"Layer_1\" data-name=\"Layer 1\" xmlns=\"http://www.w3.org/2000/svg\""
            ),
            "image/svg+xml"
        );
        // petgraph's pridosaurus.svg: XML declaration and DOCTYPE.
        let inkscape = b"<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"no\"?>\n\
            <!DOCTYPE svg PUBLIC \"-//W3C//DTD SVG 1.1//EN\" \
            \"http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd\">\n\
            <svg width=\"100%\" height=\"100%\" viewBox=\"0 0 1";
        assert_eq!(sniff(inkscape), "image/svg+xml");
        let bom_comment =
            b"\xEF\xBB\xBF  \r\n<!-- Generator: Adobe Illustrator -> 2 -->\n<svg\n xmlns=\"x\">";
        assert_eq!(sniff(bom_comment), "image/svg+xml");
        let subset = b"<!DOCTYPE svg [ <!ENTITY a \"b>\"> ]>\n<svg>";
        assert_eq!(sniff(subset), "image/svg+xml");
    }

    #[test]
    fn not_svg() {
        assert_eq!(sniff(b"<svgfoo>"), OCTET_STREAM);
        assert_eq!(sniff(b"<html><svg></svg></html>"), OCTET_STREAM);
        assert_eq!(sniff(b"<?xml version=\"1.0\"?><rss>"), OCTET_STREAM);
        // Unterminated comment: the head ends inside the prologue.
        assert_eq!(sniff(b"<!-- never closed <svg>"), OCTET_STREAM);
        assert_eq!(sniff(b"hello world"), OCTET_STREAM);
    }

    #[test]
    fn short_and_empty_input_never_panics() {
        assert_eq!(sniff(b""), OCTET_STREAM);
        for len in 0..=16 {
            for fill in [0x00u8, 0xFF, b'<', b'I', b'R'] {
                let _ = sniff(&vec![fill; len]);
            }
        }
        // Truncated versions of real headers.
        let mp4 = hex("00000020 66747970 69736f6d 00000200 69736f6d");
        for n in 0..mp4.len() {
            let _ = sniff(&mp4[..n]);
        }
        let _ = sniff(b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f");
        let _ = sniff(b"\xff");
        let _ = sniff(b"\xff\xfb");
    }
}
