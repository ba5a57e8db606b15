//! H.265 in MP4 tagged `hvc1`, the sample entry Apple's players (QuickTime, Safari, iOS)
//! require; libav's MP4 muxer writes `hev1` unless the stream's codec tag is set, which
//! `ffmpeg-next` has no safe way to do. So the finished file is patched in place: the
//! `hev1` sample entry in `moov/trak/mdia/minf/stbl/stsd` becomes `hvc1`, and the `hvcC`
//! parameter-set arrays are marked complete (`array_completeness = 1`), which is what `hvc1`
//! promises: the encoder runs with global headers, so x265 writes no parameter sets in-band.
//! Same sizes, same offsets: only a few bytes of the `moov` box change.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Boxes on the way from `moov` to `stsd`.
const CONTAINERS: [&[u8; 4]; 5] = [b"moov", b"trak", b"mdia", b"minf", b"stbl"];

/// Bytes of a `VisualSampleEntry` after its box header, before its child boxes.
const VISUAL_SAMPLE_ENTRY_FIELDS: usize = 78;

/// Bytes of an `hvcC` record before `numOfArrays`.
const HVCC_FIXED_FIELDS: usize = 22;

fn be32(bytes: &[u8], at: usize) -> Option<usize> {
    let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(b) as usize)
}

/// Child boxes of `bytes[start..end]`: `(box start, payload start, box end, type)`.
fn boxes(bytes: &[u8], start: usize, end: usize) -> Vec<(usize, usize, usize, [u8; 4])> {
    let mut out = Vec::new();
    let mut at = start;
    while at + 8 <= end {
        let Some(size) = be32(bytes, at) else { break };
        let mut kind = [0_u8; 4];
        kind.copy_from_slice(&bytes[at + 4..at + 8]);
        let (payload, size) = match size {
            0 => (at + 8, end - at),
            1 => {
                let Some(large) = bytes
                    .get(at + 8..at + 16)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                else {
                    break;
                };
                (
                    at + 16,
                    usize::try_from(u64::from_be_bytes(large)).unwrap_or(usize::MAX),
                )
            }
            n => (at + 8, n),
        };
        if size < 8 || at + size > end {
            break;
        }
        out.push((at, payload, at + size, kind));
        at += size;
    }
    out
}

/// Marks every parameter-set array of an `hvcC` payload complete.
fn complete_arrays(bytes: &mut [u8], start: usize, end: usize) {
    let mut at = start + HVCC_FIXED_FIELDS;
    let Some(&arrays) = bytes.get(at) else { return };
    at += 1;
    for _ in 0..arrays {
        if at + 3 > end {
            return;
        }
        bytes[at] |= 0x80;
        let nalus = usize::from(u16::from_be_bytes([bytes[at + 1], bytes[at + 2]]));
        at += 3;
        for _ in 0..nalus {
            if at + 2 > end {
                return;
            }
            at += 2 + usize::from(u16::from_be_bytes([bytes[at], bytes[at + 1]]));
        }
    }
}

/// Retags `hev1` sample entries inside a `moov` box's bytes; returns how many it changed.
fn retag_moov(moov: &mut [u8]) -> usize {
    let mut changed = 0;
    let mut level = vec![(0, moov.len())];
    for container in &CONTAINERS[1..] {
        let mut next = Vec::new();
        for &(start, end) in &level {
            next.extend(
                boxes(moov, start, end)
                    .into_iter()
                    .filter(|b| &b.3 == *container)
                    .map(|(_, payload, end, _)| (payload, end)),
            );
        }
        level = next;
    }
    for (start, end) in level {
        let stsds: Vec<_> = boxes(moov, start, end)
            .into_iter()
            .filter(|b| &b.3 == b"stsd")
            .collect();
        for (_, payload, stsd_end, _) in stsds {
            // version, flags, entry_count.
            for (entry, entry_payload, entry_end, kind) in boxes(moov, payload + 8, stsd_end) {
                if &kind != b"hev1" {
                    continue;
                }
                moov[entry + 4..entry + 8].copy_from_slice(b"hvc1");
                changed += 1;
                let children = entry_payload + VISUAL_SAMPLE_ENTRY_FIELDS;
                for (_, p, e, child) in boxes(moov, children, entry_end) {
                    if &child == b"hvcC" {
                        complete_arrays(moov, p, e);
                    }
                }
            }
        }
    }
    changed
}

/// Patches the MP4 at `path` so its H.265 track is tagged `hvc1`. Returns whether it found
/// one to change.
pub(super) fn retag_hevc_as_hvc1(path: &Path) -> Result<bool, String> {
    let failed = |e: std::io::Error| format!("tagging the H.265 track hvc1 failed ({e})");
    let mut file = File::options()
        .read(true)
        .write(true)
        .open(path)
        .map_err(failed)?;
    let len = file.metadata().map_err(failed)?.len();
    let mut at = 0_u64;
    while at + 8 <= len {
        let mut header = [0_u8; 16];
        file.seek(SeekFrom::Start(at)).map_err(failed)?;
        file.read_exact(&mut header[..8]).map_err(failed)?;
        let size = u64::from(u32::from_be_bytes([
            header[0], header[1], header[2], header[3],
        ]));
        let size = match size {
            0 => len - at,
            1 => {
                file.read_exact(&mut header[8..]).map_err(failed)?;
                let mut large = [0_u8; 8];
                large.copy_from_slice(&header[8..]);
                u64::from_be_bytes(large)
            }
            n => n,
        };
        if size < 8 || at + size > len {
            return Err("the MP4 box structure is damaged".to_owned());
        }
        if &header[4..8] == b"moov" {
            let mut moov = vec![0_u8; usize::try_from(size).map_err(|e| e.to_string())?];
            file.seek(SeekFrom::Start(at)).map_err(failed)?;
            file.read_exact(&mut moov).map_err(failed)?;
            let (_, payload, end, _) = boxes(&moov, 0, moov.len())
                .into_iter()
                .next()
                .ok_or("the MP4 moov box is damaged")?;
            let changed = retag_moov(&mut moov[payload..end]);
            if changed > 0 {
                file.seek(SeekFrom::Start(at)).map_err(failed)?;
                file.write_all(&moov).map_err(failed)?;
                file.sync_all().map_err(failed)?;
            }
            return Ok(changed > 0);
        }
        at += size;
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::super::{EncodeSettings, VideoFormat, VideoWriter};

    fn probe(path: &std::path::Path, entries: &str) -> String {
        let output = std::process::Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
            .arg(entries)
            .args(["-of", "default=noprint_wrappers=1"])
            .arg(path)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    }

    #[test]
    fn h265_mp4_is_tagged_hvc1_and_still_decodes() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("clip.mp4");
        let settings = EncodeSettings {
            format: VideoFormat::Mp4H265,
            preset: "ultrafast".to_owned(),
            ..EncodeSettings::default()
        };
        let mut writer = VideoWriter::create(&target, &settings, 64, 48, None).unwrap();
        let cancel = AtomicBool::new(false);
        for i in 0..5_u8 {
            let frame = image::RgbImage::from_fn(64, 48, |x, y| {
                image::Rgb([(x * 4) as u8, (y * 5) as u8, i * 40])
            });
            writer.push(&frame, &cancel).unwrap();
        }
        let path = writer.finish().unwrap();
        let tags = probe(
            &path,
            "stream=codec_name,codec_tag_string,nb_frames,pix_fmt",
        );
        assert!(tags.contains("codec_tag_string=hvc1"), "{tags}");
        assert!(tags.contains("codec_name=hevc"), "{tags}");
        assert!(tags.contains("nb_frames=5"), "{tags}");
        // Every frame decodes after the patch.
        let video = crate::video::read_video(&path, 100, 1 << 20).unwrap();
        assert_eq!(video.frames.len(), 5);
    }

    #[test]
    fn h264_and_other_boxes_are_left_alone() {
        let mut moov = Vec::new();
        // moov payload: one trak with an unrelated box.
        let mut trak = Vec::new();
        trak.extend_from_slice(&16_u32.to_be_bytes());
        trak.extend_from_slice(b"tkhd");
        trak.extend_from_slice(&[0; 8]);
        moov.extend_from_slice(&(8 + trak.len() as u32).to_be_bytes());
        moov.extend_from_slice(b"trak");
        moov.extend_from_slice(&trak);
        let before = moov.clone();
        assert_eq!(super::retag_moov(&mut moov), 0);
        assert_eq!(moov, before);
    }
}
