//! Decoding existing clips (MP4, MOV, WebM, GIF, …) to RGB8 frames with their frame rate, for
//! interpolating them or continuing from their last frame.
//!
//! YUV is converted with the matrix and range the stream declares (BT.601 when it declares
//! none, as FFmpeg assumes), by swscale with exact rounding.

use std::path::Path;

use ffmpeg::{color, filter, format, frame, media};
use ffmpeg_next as ffmpeg;
use image::RgbImage;

use super::FrameRate;
use crate::EngineError;

/// One metadata tag of the container (`None` when absent).
pub(super) fn metadata_tag(path: &Path, key: &str) -> Result<Option<String>, EngineError> {
    ffmpeg::init()
        .map_err(|error| read_error(path, format!("initialising libav failed ({error})")))?;
    ffmpeg::log::set_level(ffmpeg::log::Level::Quiet);
    let input = format::input(path)
        .map_err(|error| read_error(path, format!("not a video file FFmpeg can read ({error})")))?;
    Ok(input.metadata().get(key).map(str::to_owned))
}

/// The clip's rate from the stream's average rate and its base rate (FFmpeg's `r_frame_rate`,
/// the rate that represents every timestamp), each `(numerator, denominator)`. The base rate
/// wins when the average is within [`BASE_RATE_SLACK`] of it: a GIF stores whole-centisecond
/// delays (6 and 7 for 1/16 s), so FFmpeg averages a 16 fps GIF to 97/6 while its base rate is
/// 16/1. A clip whose average is further off (variable rate, telecine) keeps its average.
fn stream_fps(average: (i32, i32), base: (i32, i32)) -> Option<FrameRate> {
    let valid = |(n, d): (i32, i32)| {
        Some(FrameRate {
            numerator: u32::try_from(n).ok().filter(|&n| n > 0)?,
            denominator: u32::try_from(d).ok().filter(|&d| d > 0)?,
        })
    };
    match (valid(average), valid(base)) {
        (Some(average), Some(base))
            if (average.as_f64() / base.as_f64() - 1.0).abs() <= BASE_RATE_SLACK =>
        {
            Some(base)
        }
        (Some(average), _) => Some(average),
        (None, base) => base,
    }
}

/// How far (relative) a stream's average rate may stray from its base rate and still be read
/// as the base rate: a GIF's centisecond delays put 16 fps at 16.17 (1 %).
const BASE_RATE_SLACK: f64 = 0.02;

fn read_error(path: &Path, problem: String) -> EngineError {
    EngineError::VideoRead {
        problem,
        path: path.to_owned(),
    }
}

/// Decodes the best video stream of `path` one frame at a time, so long clips never sit in
/// memory whole.
pub struct VideoReader {
    path: std::path::PathBuf,
    input: format::context::Input,
    decoder: ffmpeg::decoder::Video,
    stream_index: usize,
    time_base: ffmpeg::Rational,
    converter: Option<filter::Graph>,
    ready: std::collections::VecDeque<RgbImage>,
    sent_eof: bool,
    fps: FrameRate,
    width: u32,
    height: u32,
}

impl VideoReader {
    /// Opens `path`, refusing frames over `max_pixels`.
    pub fn open(path: &Path, max_pixels: u64) -> Result<Self, EngineError> {
        let fail = |problem: String| read_error(path, problem);
        ffmpeg::init().map_err(|error| fail(format!("initialising libav failed ({error})")))?;
        ffmpeg::log::set_level(ffmpeg::log::Level::Quiet);
        let input = format::input(path)
            .map_err(|error| fail(format!("not a video file FFmpeg can read ({error})")))?;
        let stream = input
            .streams()
            .best(media::Type::Video)
            .ok_or_else(|| fail("the file has no video stream".to_owned()))?;
        let stream_index = stream.index();
        let time_base = stream.time_base();
        let (average, base) = (stream.avg_frame_rate(), stream.rate());
        let fps = stream_fps(
            (average.numerator(), average.denominator()),
            (base.numerator(), base.denominator()),
        )
        .ok_or_else(|| fail("the video stream has no frame rate".to_owned()))?;
        let decoder = ffmpeg::codec::context::Context::from_parameters(stream.parameters())
            .and_then(|context| context.decoder().video())
            .map_err(|error| fail(format!("no decoder for this video ({error})")))?;
        let (width, height) = (decoder.width(), decoder.height());
        if width == 0 || height == 0 {
            return Err(fail("the video stream has no size".to_owned()));
        }
        if u64::from(width) * u64::from(height) > max_pixels {
            return Err(fail(format!(
                "frames are {width}×{height}, over the pixel limit"
            )));
        }
        Ok(Self {
            path: path.to_owned(),
            input,
            decoder,
            stream_index,
            time_base,
            converter: None,
            ready: std::collections::VecDeque::new(),
            sent_eof: false,
            fps,
            width,
            height,
        })
    }

    /// The stream's frame rate (its average rate, else its base rate).
    pub fn fps(&self) -> FrameRate {
        self.fps
    }

    /// The coded frame size `(width, height)`.
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// The next frame in display order, or `None` at the end.
    pub fn next_frame(&mut self) -> Result<Option<RgbImage>, EngineError> {
        loop {
            if let Some(frame) = self.ready.pop_front() {
                return Ok(Some(frame));
            }
            if self.sent_eof {
                return Ok(None);
            }
            let packet = self
                .input
                .packets()
                .find(|(stream, _)| stream.index() == self.stream_index)
                .map(|(_, packet)| packet);
            let sent = if let Some(packet) = packet {
                self.decoder.send_packet(&packet)
            } else {
                self.sent_eof = true;
                self.decoder.send_eof()
            };
            sent.map_err(|error| self.error(format!("the video is damaged ({error})")))?;
            self.collect()?;
        }
    }

    pub(super) fn error(&self, problem: String) -> EngineError {
        read_error(&self.path, problem)
    }

    /// Moves every decoded frame through the RGB conversion into `ready`.
    fn collect(&mut self) -> Result<(), EngineError> {
        let mut decoded = frame::Video::empty();
        while self.decoder.receive_frame(&mut decoded).is_ok() {
            if self.converter.is_none() {
                let graph = rgb_converter(&decoded, self.time_base).map_err(|p| self.error(p))?;
                self.converter = Some(graph);
            }
            if let Some(graph) = self.converter.as_mut() {
                push_and_pull(graph, &decoded, &mut self.ready)
                    .map_err(|problem| read_error(&self.path, problem))?;
            }
        }
        Ok(())
    }
}

/// The swscale matrix name for a stream's declared colour space.
fn matrix_name(space: color::Space) -> &'static str {
    match space {
        color::Space::BT709 => "bt709",
        color::Space::FCC => "fcc",
        color::Space::SMPTE240M => "smpte240m",
        color::Space::BT2020NCL | color::Space::BT2020CL => "bt2020",
        _ => "bt601",
    }
}

fn rgb_converter(
    first: &frame::Video,
    time_base: ffmpeg::Rational,
) -> Result<filter::Graph, String> {
    let pixel: ffmpeg::ffi::AVPixelFormat = first.format().into();
    let args = format!(
        "video_size={}x{}:pix_fmt={}:time_base={}/{}:pixel_aspect=1/1",
        first.width(),
        first.height(),
        pixel as i32,
        time_base.numerator().max(1),
        time_base.denominator().max(1)
    );
    let range = if first.color_range() == color::Range::JPEG {
        "pc"
    } else {
        "tv"
    };
    let spec = format!(
        "scale=in_color_matrix={}:in_range={range}:out_range=pc:flags=bicubic+accurate_rnd+full_chroma_int,format=rgb24",
        matrix_name(first.color_space())
    );
    super::graph::conversion_graph(&args, &spec, format::Pixel::RGB24)
}

fn push_and_pull(
    graph: &mut filter::Graph,
    decoded: &frame::Video,
    frames: &mut std::collections::VecDeque<RgbImage>,
) -> Result<(), String> {
    graph
        .get("in")
        .ok_or("the filter graph lost its input")?
        .source()
        .add(decoded)
        .map_err(|error| format!("converting a frame failed ({error})"))?;
    let mut rgb = frame::Video::empty();
    while graph
        .get("out")
        .ok_or("the filter graph lost its output")?
        .sink()
        .frame(&mut rgb)
        .is_ok()
    {
        let (width, height) = (rgb.width(), rgb.height());
        let stride = rgb.stride(0);
        let row_bytes = width as usize * 3;
        let mut pixels = Vec::with_capacity(row_bytes * height as usize);
        for row in rgb.data(0).chunks(stride).take(height as usize) {
            pixels.extend_from_slice(&row[..row_bytes]);
        }
        let image =
            RgbImage::from_raw(width, height, pixels).ok_or("frame buffer size mismatch")?;
        frames.push_back(image);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{FrameRate, stream_fps};

    #[test]
    fn a_rate_close_to_the_base_rate_is_the_base_rate() {
        // A 16 fps GIF as FFmpeg reports it; NTSC with a slightly short average.
        assert_eq!(stream_fps((97, 6), (16, 1)), Some(FrameRate::WAN));
        assert_eq!(
            stream_fps((2997, 100), (30000, 1001)),
            Some(FrameRate {
                numerator: 30000,
                denominator: 1001
            })
        );
        // Variable rate far from the base keeps its average; missing rates fall back.
        assert_eq!(stream_fps((25, 1), (30, 1)), Some(FrameRate::whole(25)));
        assert_eq!(stream_fps((0, 0), (24, 1)), Some(FrameRate::whole(24)));
        assert_eq!(stream_fps((24, 1), (0, 1)), Some(FrameRate::whole(24)));
        assert_eq!(stream_fps((0, 1), (0, 0)), None);
    }
}
