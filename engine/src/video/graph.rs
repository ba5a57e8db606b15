//! One libav filter graph shape shared by the writer and the reader: a `buffer` source described
//! by `source_args`, the filters of `spec`, and a `buffersink` producing `output` pixels.

use ffmpeg::{filter, format};
use ffmpeg_next as ffmpeg;

fn failed(what: &str) -> impl Fn(ffmpeg::Error) -> String + '_ {
    move |error| format!("{what} failed ({error})")
}

/// Builds and validates `buffer(source_args) → spec → buffersink(output)`; the error says which
/// part libav refused.
pub(super) fn conversion_graph(
    source_args: &str,
    spec: &str,
    output: format::Pixel,
) -> Result<filter::Graph, String> {
    let mut graph = filter::Graph::new();
    let buffer = filter::find("buffer").ok_or("libav has no buffer filter")?;
    let sink = filter::find("buffersink").ok_or("libav has no buffersink filter")?;
    graph
        .add(&buffer, "in", source_args)
        .map_err(failed("creating the filter source"))?;
    graph
        .add(&sink, "out", "")
        .map_err(failed("creating the filter sink"))?;
    graph
        .get("out")
        .ok_or("the filter graph lost its output")?
        .set_pixel_format(output);
    graph
        .output("in", 0)
        .and_then(|parser| parser.input("out", 0))
        .and_then(|parser| parser.parse(spec))
        .map_err(failed("building the colour conversion"))?;
    graph
        .validate()
        .map_err(failed("checking the colour conversion"))?;
    Ok(graph)
}
