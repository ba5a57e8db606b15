//! The libav side of the writer: an RGB24 buffer source, a filter graph (swscale colour
//! conversion, even-size crop, GIF palette), the encoder and the muxer.

use std::path::Path;

use ffmpeg::{Dictionary, Packet, Rational, codec, color, encoder, filter, format, frame};
use ffmpeg_next as ffmpeg;

use super::{EncodeSettings, FrameRate, VideoFormat};

/// Why libav refused; turned into `EngineError::VideoWrite` with the path by the caller.
pub(super) type Problem = String;

fn failed(what: &str) -> impl Fn(ffmpeg::Error) -> Problem + '_ {
    move |error| format!("{what} failed ({error})")
}

/// Per-format encoder choices.
struct Plan {
    muxer: &'static str,
    codec: &'static str,
    pixel: format::Pixel,
    /// Filters between the RGB source and the encoder.
    filters: &'static str,
    /// BT.709 limited-range tags on the stream (YUV video formats).
    tag_bt709: bool,
    options: Vec<(&'static str, String)>,
    muxer_options: Vec<(&'static str, String)>,
}

fn plan(settings: &EncodeSettings) -> Result<Plan, Problem> {
    let crf_limit = match settings.format {
        VideoFormat::Mp4H264 | VideoFormat::Mp4H265 => 51,
        _ => 63,
    };
    if settings.crf > crf_limit {
        return Err(format!(
            "CRF {} is out of range for {:?}; use 0 (best) to {crf_limit}",
            settings.crf, settings.format
        ));
    }
    let crf = settings.crf.to_string();
    let preset = settings.preset.clone();
    // accurate_rnd + full_chroma_int: exact rounding and chroma from every pixel, not every other.
    let bt709 = "crop=trunc(iw/2)*2:trunc(ih/2)*2:0:0,\
                 scale=out_color_matrix=bt709:out_range=tv:flags=bicubic+accurate_rnd+full_chroma_int,\
                 format=yuv420p";
    Ok(match settings.format {
        VideoFormat::Mp4H264 => Plan {
            muxer: "mp4",
            codec: "libx264",
            pixel: format::Pixel::YUV420P,
            filters: bt709,
            tag_bt709: true,
            options: vec![("crf", crf), ("preset", preset)],
            // The index goes first so players and browsers start before the file is loaded.
            muxer_options: vec![("movflags", "+faststart".to_owned())],
        },
        VideoFormat::Mp4H265 => Plan {
            muxer: "mp4",
            codec: "libx265",
            pixel: format::Pixel::YUV420P,
            filters: bt709,
            tag_bt709: true,
            options: vec![
                ("crf", crf),
                ("preset", preset),
                ("x265-params", "log-level=error".to_owned()),
            ],
            muxer_options: vec![("movflags", "+faststart".to_owned())],
        },
        VideoFormat::WebmVp9 => Plan {
            muxer: "webm",
            codec: "libvpx-vp9",
            pixel: format::Pixel::YUV420P,
            filters: bt709,
            tag_bt709: true,
            options: vec![
                ("crf", crf),
                ("b", "0".to_owned()),
                ("row-mt", "1".to_owned()),
                ("cpu-used", vp9_cpu_used(&preset).to_owned()),
            ],
            muxer_options: vec![],
        },
        VideoFormat::AnimatedWebp => Plan {
            muxer: "webp",
            codec: "libwebp_anim",
            pixel: format::Pixel::YUV420P,
            // libwebp's YUV is BT.601 limited range by definition and carries no tags.
            filters: "scale=out_color_matrix=bt601:out_range=tv:flags=bicubic+accurate_rnd+full_chroma_int,\
                      format=yuv420p",
            tag_bt709: false,
            options: vec![(
                "quality",
                (100.0 - 1.5 * f32::from(settings.crf))
                    .clamp(0.0, 100.0)
                    .to_string(),
            )],
            muxer_options: vec![("loop", "0".to_owned())],
        },
        VideoFormat::Gif => Plan {
            muxer: "gif",
            codec: "gif",
            pixel: format::Pixel::PAL8,
            // One palette for the whole clip (no flicker between frames).
            filters: "split[a][b];[a]palettegen=stats_mode=full[p];[b][p]paletteuse=dither=sierra2_4a",
            tag_bt709: false,
            options: vec![],
            muxer_options: vec![("loop", "0".to_owned())],
        },
        VideoFormat::PngFrames => return Err("PNG frames are not written through libav".to_owned()),
    })
}

fn vp9_cpu_used(preset: &str) -> &'static str {
    match preset {
        "ultrafast" | "superfast" | "veryfast" => "8",
        "faster" | "fast" => "5",
        "slow" | "slower" | "veryslow" | "placebo" => "1",
        _ => "3",
    }
}

fn dictionary(pairs: &[(&str, String)]) -> Dictionary<'static> {
    let mut dict = Dictionary::new();
    for (key, value) in pairs {
        dict.set(key, value);
    }
    dict
}

/// An open libav output: frames go in through [`LibavSink::push`], [`LibavSink::finish`] flushes.
pub(super) struct LibavSink {
    output: format::context::Output,
    encoder: encoder::Video,
    graph: filter::Graph,
    width: u32,
    height: u32,
    encoder_time_base: Rational,
    stream_time_base: Rational,
    next_pts: i64,
    /// The file, and whether its H.265 track gets the `hvc1` tag once complete.
    path: std::path::PathBuf,
    retag_hvc1: bool,
}

impl LibavSink {
    /// Opens `path` (the partial file) for `width`×`height` RGB frames.
    pub(super) fn open(
        path: &Path,
        settings: &EncodeSettings,
        width: u32,
        height: u32,
        comment: Option<&str>,
    ) -> Result<Self, Problem> {
        ffmpeg::init().map_err(failed("initialising libav"))?;
        ffmpeg::log::set_level(ffmpeg::log::Level::Quiet);
        let plan = plan(settings)?;
        let FrameRate {
            numerator,
            denominator,
        } = settings.fps;
        if numerator == 0 || denominator == 0 {
            return Err(format!("frame rate {numerator}/{denominator} is not valid"));
        }
        let encoder_time_base = Rational::new(denominator as i32, numerator as i32);
        let fps = Rational::new(numerator as i32, denominator as i32);

        let graph = build_graph(plan.filters, plan.pixel, width, height, encoder_time_base)?;
        let (out_width, out_height) = if plan.filters.starts_with("crop") {
            (width & !1, height & !1)
        } else {
            (width, height)
        };
        if out_width == 0 || out_height == 0 {
            return Err(format!("a {width}×{height} frame is too small to encode"));
        }

        let mut output =
            format::output_as(path, plan.muxer).map_err(failed("creating the output file"))?;
        let global_header = output
            .format()
            .flags()
            .contains(format::Flags::GLOBAL_HEADER);
        let codec = encoder::find_by_name(plan.codec).ok_or_else(|| {
            format!(
                "this FFmpeg has no {} encoder; install FFmpeg with it or pick another format",
                plan.codec
            )
        })?;
        let mut context = codec::context::Context::new_with_codec(codec)
            .encoder()
            .video()
            .map_err(failed("creating the encoder"))?;
        context.set_width(out_width);
        context.set_height(out_height);
        context.set_format(plan.pixel);
        context.set_time_base(encoder_time_base);
        context.set_frame_rate(Some(fps));
        if plan.tag_bt709 {
            context.set_colorspace(color::Space::BT709);
            context.set_color_range(color::Range::MPEG);
            context.set_color_primaries(color::Primaries::BT709);
            context.set_color_transfer_characteristic(color::TransferCharacteristic::BT709);
        }
        if global_header {
            context.set_flags(codec::Flags::GLOBAL_HEADER);
        }
        let encoder = context
            .open_with(dictionary(&plan.options))
            .map_err(failed("opening the encoder (check CRF and preset)"))?;
        {
            let mut stream = output
                .add_stream(codec)
                .map_err(failed("adding the video stream"))?;
            stream.set_parameters(&encoder);
            stream.set_time_base(encoder_time_base);
            stream.set_avg_frame_rate(fps);
            stream.set_rate(fps);
        }
        if let Some(comment) = comment {
            let mut metadata = Dictionary::new();
            metadata.set(super::recipe::METADATA_KEY, comment);
            output.set_metadata(metadata);
        }
        output
            .write_header_with(dictionary(&plan.muxer_options))
            .map_err(failed("writing the file header"))?;
        let stream_time_base = output
            .stream(0)
            .map_or(encoder_time_base, |stream| stream.time_base());
        Ok(Self {
            output,
            encoder,
            graph,
            width,
            height,
            encoder_time_base,
            stream_time_base,
            next_pts: 0,
            path: path.to_owned(),
            retag_hvc1: settings.format == VideoFormat::Mp4H265,
        })
    }

    /// Encodes one frame of tightly packed RGB8 rows.
    pub(super) fn push(&mut self, rgb: &[u8]) -> Result<(), Problem> {
        // The buffer source takes the frame's data by reference and resets the frame, so each
        // push gets a fresh one.
        let mut frame = frame::Video::new(format::Pixel::RGB24, self.width, self.height);
        let width = self.width as usize;
        let stride = frame.stride(0);
        let data = frame.data_mut(0);
        for (row, src) in rgb.chunks_exact(width * 3).enumerate() {
            data[row * stride..row * stride + width * 3].copy_from_slice(src);
        }
        frame.set_pts(Some(self.next_pts));
        self.next_pts += 1;
        self.graph
            .get("in")
            .ok_or("the filter graph lost its input")?
            .source()
            .add(&frame)
            .map_err(failed("filtering a frame"))?;
        self.drain_graph()
    }

    /// Flushes every stage and writes the trailer; the file is complete afterwards.
    pub(super) fn finish(mut self) -> Result<(), Problem> {
        self.graph
            .get("in")
            .ok_or("the filter graph lost its input")?
            .source()
            .flush()
            .map_err(failed("flushing the filters"))?;
        self.drain_graph()?;
        self.encoder
            .send_eof()
            .map_err(failed("flushing the encoder"))?;
        self.drain_encoder()?;
        self.output
            .write_trailer()
            .map_err(failed("finishing the file"))?;
        let (path, retag) = (self.path.clone(), self.retag_hvc1);
        // Close the file before patching it.
        drop(self);
        if retag {
            super::hvc1::retag_hevc_as_hvc1(&path)?;
        }
        Ok(())
    }

    fn drain_graph(&mut self) -> Result<(), Problem> {
        let mut filtered = frame::Video::empty();
        loop {
            let received = self
                .graph
                .get("out")
                .ok_or("the filter graph lost its output")?
                .sink()
                .frame(&mut filtered);
            match received {
                Ok(()) => {}
                Err(ffmpeg::Error::Eof) => return Ok(()),
                Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::util::error::EAGAIN => {
                    return Ok(());
                }
                Err(error) => return Err(failed("filtering a frame")(error)),
            }
            filtered.set_kind(ffmpeg::picture::Type::None);
            self.encoder
                .send_frame(&filtered)
                .map_err(failed("encoding a frame"))?;
            self.drain_encoder()?;
        }
    }

    fn drain_encoder(&mut self) -> Result<(), Problem> {
        let mut packet = Packet::empty();
        while self.encoder.receive_packet(&mut packet).is_ok() {
            packet.set_stream(0);
            if packet.duration() == 0 {
                packet.set_duration(1);
            }
            packet.rescale_ts(self.encoder_time_base, self.stream_time_base);
            packet
                .write_interleaved(&mut self.output)
                .map_err(failed("writing a packet"))?;
        }
        Ok(())
    }
}

fn build_graph(
    spec: &str,
    pixel: format::Pixel,
    width: u32,
    height: u32,
    time_base: Rational,
) -> Result<filter::Graph, Problem> {
    let args = format!(
        "video_size={width}x{height}:pix_fmt=rgb24:time_base={}/{}:pixel_aspect=1/1",
        time_base.numerator(),
        time_base.denominator()
    );
    super::graph::conversion_graph(&args, spec, pixel)
}
