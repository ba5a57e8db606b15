//! The prompt's token count: the chosen text encoder's own tokenizer (read once, on a named
//! helper thread, when the text encoder file changes) counts the prompt as the render will
//! tokenize it, against the encoder's limit, so a prompt the encoder would cut short shows it.

use std::path::{Path, PathBuf};

use crossbeam_channel::{Receiver, bounded};
use stillmotion_engine::umt5::{Config, PromptTokenizer};

/// A prompt's tokens as the text encoder sees them (`</s>` included) and its limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenCount {
    pub tokens: usize,
    pub limit: usize,
    /// The encoder ignores the tokens past `limit`.
    pub truncated: bool,
}

/// The tokenizer of the chosen text encoder, and the last count.
#[derive(Default)]
pub struct TokenCounter {
    /// The text encoder the tokenizer is (being) read from.
    source: Option<PathBuf>,
    loading: Option<Receiver<Result<PromptTokenizer, String>>>,
    tokenizer: Option<PromptTokenizer>,
    /// Why there is no tokenizer for the chosen file.
    problem: Option<String>,
    /// The last text counted, and its count.
    counted: Option<(String, Option<TokenCount>)>,
}

impl TokenCounter {
    /// Starts reading the tokenizer of `text_encoder` when it is not the one read already.
    pub fn follow(&mut self, ctx: &egui::Context, text_encoder: Option<&Path>) {
        if self.source.as_deref() == text_encoder {
            return;
        }
        self.source = text_encoder.map(Path::to_path_buf);
        self.tokenizer = None;
        self.problem = None;
        self.counted = None;
        self.loading = None;
        let Some(path) = text_encoder.filter(|path| path.exists()) else {
            return;
        };
        let (sender, receiver) = bounded(1);
        let path = path.to_path_buf();
        let ctx = ctx.clone();
        let spawned = std::thread::Builder::new()
            .name("tokenizer-load".to_owned())
            .spawn(move || {
                let tokenizer = PromptTokenizer::open(&tokenizer_file(&path), text_len(&path))
                    .map_err(|error| format!("{error:#}"));
                // The app may have moved on to another file meanwhile; nothing to do then.
                let _ = sender.send(tokenizer);
                ctx.request_repaint();
            });
        match spawned {
            Ok(_) => self.loading = Some(receiver),
            Err(error) => self.problem = Some(format!("no token count: {error}")),
        }
    }

    /// Takes a tokenizer that finished loading.
    pub fn poll(&mut self) {
        let Some(receiver) = &self.loading else {
            return;
        };
        match receiver.try_recv() {
            Ok(Ok(tokenizer)) => {
                self.tokenizer = Some(tokenizer);
                self.loading = None;
            }
            Ok(Err(problem)) => {
                tracing::warn!("no prompt token count: {problem}");
                self.problem = Some(problem);
                self.loading = None;
            }
            Err(crossbeam_channel::TryRecvError::Empty) => {}
            Err(crossbeam_channel::TryRecvError::Disconnected) => self.loading = None,
        }
    }

    /// The count of `prompt`, once the tokenizer is read (recounted only when it changes).
    pub fn count(&mut self, prompt: &str) -> Option<TokenCount> {
        let tokenizer = self.tokenizer.as_ref()?;
        if let Some((text, count)) = &self.counted
            && text == prompt
        {
            return *count;
        }
        let count = tokenizer.encode(prompt).ok().map(|encoded| TokenCount {
            tokens: encoded.ids.len(),
            limit: tokenizer.text_len(),
            truncated: encoded.truncated,
        });
        self.counted = Some((prompt.to_owned(), count));
        count
    }
}

/// Where the render's text encoder finds its tokenizer for a file: a `tokenizer.json` beside
/// it, else the file itself (ComfyUI's embed theirs). (The engine's own lookup, which also
/// knows the official release's and diffusers' folders, is private to its pipeline.)
fn tokenizer_file(text_encoder: &Path) -> PathBuf {
    let beside = text_encoder.with_file_name("tokenizer.json");
    if text_encoder.is_file() && beside.is_file() {
        beside
    } else {
        text_encoder.to_path_buf()
    }
}

/// The encoder's token limit: its sidecar config's, else umt5-xxl's 512.
fn text_len(text_encoder: &Path) -> usize {
    stillmotion_engine::pipeline::sidecar_config(text_encoder)
        .and_then(|json| Config::from_json_file(&json).ok())
        .unwrap_or_default()
        .text_len
}
