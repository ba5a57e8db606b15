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

/// A decoded clip.
#[derive(Clone, Debug)]
pub struct DecodedVideo {
    pub fps: FrameRate,
    pub width: u32,
    pub height: u32,
    pub frames: Vec<RgbImage>,
}

/// One metadata tag of the container (`None` when absent).
pub(super) fn metadata_tag(path: &Path, key: &str) -> Result<Option<String>, EngineError> {
    ffmpeg::init()
        .map_err(|error| read_error(path, format!("initialising libav failed ({error})")))?;
    ffmpeg::log::set_level(ffmpeg::log::Level::Quiet);
    let input = format::input(path)
        .map_err(|error| read_error(path, format!("not a video file FFmpeg can read ({error})")))?;
    Ok(input.metadata().get(key).map(str::to_owned))
}

fn read_error(path: &Path, problem: String) -> EngineError {
    EngineError::VideoRead {
        problem,
        path: path.to_owned(),
    }
}

/// Decodes the best video stream of `path`, refusing clips with more than `max_frames` frames
/// or frames over `max_pixels`.
pub fn read_video(
    path: &Path,
    max_frames: usize,
    max_pixels: u64,
) -> Result<DecodedVideo, EngineError> {
    let fail = |problem: String| read_error(path, problem);
    ffmpeg::init().map_err(|error| fail(format!("initialising libav failed ({error})")))?;
    ffmpeg::log::set_level(ffmpeg::log::Level::Quiet);
    let mut input = format::input(path)
        .map_err(|error| fail(format!("not a video file FFmpeg can read ({error})")))?;
    let stream = input
        .streams()
        .best(media::Type::Video)
        .ok_or_else(|| fail("the file has no video stream".to_owned()))?;
    let index = stream.index();
    let time_base = stream.time_base();
    let rate = match stream.avg_frame_rate() {
        r if r.numerator() > 0 && r.denominator() > 0 => r,
        _ => stream.rate(),
    };
    if rate.numerator() <= 0 || rate.denominator() <= 0 {
        return Err(fail("the video stream has no frame rate".to_owned()));
    }
    let fps = FrameRate {
        numerator: rate.numerator() as u32,
        denominator: rate.denominator() as u32,
    };
    let mut decoder = ffmpeg::codec::context::Context::from_parameters(stream.parameters())
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

    let mut converter: Option<filter::Graph> = None;
    let mut frames = Vec::new();
    let mut decoded = frame::Video::empty();
    let mut collect = |decoder: &mut ffmpeg::decoder::Video,
                       converter: &mut Option<filter::Graph>,
                       frames: &mut Vec<RgbImage>|
     -> Result<(), EngineError> {
        while decoder.receive_frame(&mut decoded).is_ok() {
            if converter.is_none() {
                *converter = Some(rgb_converter(&decoded, time_base).map_err(&fail)?);
            }
            let graph = converter
                .as_mut()
                .ok_or_else(|| fail("no converter".to_owned()))?;
            push_and_pull(graph, &decoded, frames).map_err(&fail)?;
            if frames.len() > max_frames {
                return Err(fail(format!("the clip has more than {max_frames} frames")));
            }
        }
        Ok(())
    };
    for (stream, packet) in input.packets() {
        if stream.index() != index {
            continue;
        }
        decoder
            .send_packet(&packet)
            .map_err(|error| fail(format!("the video is damaged ({error})")))?;
        collect(&mut decoder, &mut converter, &mut frames)?;
    }
    decoder
        .send_eof()
        .map_err(|error| fail(format!("the video is damaged ({error})")))?;
    collect(&mut decoder, &mut converter, &mut frames)?;
    if frames.is_empty() {
        return Err(fail("the video has no decodable frame".to_owned()));
    }
    Ok(DecodedVideo {
        fps,
        width: frames[0].width(),
        height: frames[0].height(),
        frames,
    })
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
    let failed =
        |what: &'static str| move |error: ffmpeg::Error| format!("{what} failed ({error})");
    let mut graph = filter::Graph::new();
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
    let buffer = filter::find("buffer").ok_or("libav has no buffer filter")?;
    let sink = filter::find("buffersink").ok_or("libav has no buffersink filter")?;
    graph
        .add(&buffer, "in", &args)
        .map_err(failed("creating the filter source"))?;
    graph
        .add(&sink, "out", "")
        .map_err(failed("creating the filter sink"))?;
    graph
        .get("out")
        .ok_or("the filter graph lost its output")?
        .set_pixel_format(format::Pixel::RGB24);
    graph
        .output("in", 0)
        .and_then(|parser| parser.input("out", 0))
        .and_then(|parser| parser.parse(&spec))
        .map_err(failed("building the colour conversion"))?;
    graph
        .validate()
        .map_err(failed("checking the colour conversion"))?;
    Ok(graph)
}

fn push_and_pull(
    graph: &mut filter::Graph,
    decoded: &frame::Video,
    frames: &mut Vec<RgbImage>,
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
        frames.push(image);
    }
    Ok(())
}
