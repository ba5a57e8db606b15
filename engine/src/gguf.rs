//! GGUF model files (as city96's ComfyUI-GGUF writes diffusion models): the header is read with
//! candle's GGUF reader, and each tensor is read and dequantized to float32 when the model asks
//! for it. GGUF allows 4 dimensions, so 5-D tensors (the patch embedding) are stored flattened
//! with their shape in the `comfy.gguf.orig_shape.<name>` metadata array, which is restored here.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

use crate::EngineError;
use crate::weights::expect_shape;
use crate::weights::{Header, TensorEntry};

const ORIG_SHAPE: &str = "comfy.gguf.orig_shape.";

/// One dimension of a stored shape, written with whichever integer type the writer chose.
fn dim(value: &Value) -> Option<usize> {
    let v = match value {
        Value::U8(v) => u64::from(*v),
        Value::U16(v) => u64::from(*v),
        Value::U32(v) => u64::from(*v),
        Value::U64(v) => *v,
        Value::I8(v) => u64::try_from(*v).ok()?,
        Value::I16(v) => u64::try_from(*v).ok()?,
        Value::I32(v) => u64::try_from(*v).ok()?,
        Value::I64(v) => u64::try_from(*v).ok()?,
        _ => return None,
    };
    usize::try_from(v).ok()
}

/// Whether the file starts with the GGUF magic.
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0_u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"GGUF"
}

/// An opened GGUF file: its parsed header and a reader for tensor data.
pub struct GgufFile {
    path: PathBuf,
    file_len: u64,
    content: Content,
    reader: Mutex<BufReader<File>>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl GgufFile {
    /// Reads and checks the header (tensor data must lie inside the file).
    pub fn open(path: &Path) -> Result<Self, EngineError> {
        let file =
            File::open(path).map_err(|e| EngineError::io("opening a model file", path, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| EngineError::io("reading a model file's size", path, e))?
            .len();
        let mut reader = BufReader::new(file);
        let bad = |problem: String| EngineError::BadModelFile {
            problem,
            path: path.to_owned(),
        };
        let content = Content::read(&mut reader).map_err(|e| {
            bad(format!(
                "the GGUF header is unreadable ({e}): the file is damaged or truncated, download it again"
            ))
        })?;
        for (name, info) in &content.tensor_infos {
            let bytes = info.shape.elem_count() / info.ggml_dtype.block_size()
                * info.ggml_dtype.type_size();
            let end = content.tensor_data_offset + info.offset + bytes as u64;
            if end > file_len {
                return Err(bad(format!(
                    "the file is truncated (tensor {name} ends at byte {end}, the file has {file_len}; an interrupted download?): download it again"
                )));
            }
        }
        Ok(Self {
            path: path.to_owned(),
            file_len,
            content,
            reader: Mutex::new(reader),
        })
    }

    /// Tensor names and their (restored) shapes.
    pub fn shapes(&self) -> HashMap<String, Vec<usize>> {
        self.content
            .tensor_infos
            .iter()
            .map(|(name, info)| {
                let shape = self
                    .orig_shape(name)
                    .unwrap_or_else(|| info.shape.dims().to_vec());
                (name.clone(), shape)
            })
            .collect()
    }

    /// The header in the safetensors terms the rest of the engine uses (dtype: the GGML type's
    /// name, e.g. `Q8_0`), for fingerprints.
    pub fn header(&self) -> Header {
        let shapes = self.shapes();
        let tensors = self
            .content
            .tensor_infos
            .iter()
            .map(|(name, info)| {
                let bytes = info.shape.elem_count() / info.ggml_dtype.block_size()
                    * info.ggml_dtype.type_size();
                let entry = TensorEntry {
                    dtype: format!("{:?}", info.ggml_dtype).to_uppercase(),
                    shape: shapes[name].clone(),
                    bytes: bytes as u64,
                };
                (name.clone(), entry)
            })
            .collect();
        let metadata = self
            .content
            .metadata
            .iter()
            .filter_map(|(k, v)| v.to_string().ok().map(|s| (k.clone(), s.clone())))
            .collect();
        Header {
            path: self.path.clone(),
            tensors,
            metadata,
            file_len: self.file_len,
        }
    }

    fn orig_shape(&self, name: &str) -> Option<Vec<usize>> {
        match self.content.metadata.get(&format!("{ORIG_SHAPE}{name}"))? {
            Value::Array(dims) => dims.iter().map(dim).collect(),
            _ => None,
        }
    }

    /// A backend that dequantizes tensors on demand; `names` maps the model's names onto the
    /// file's. Asking for [`DType::F8E4M3`] ("as stored", see `crate::weights`) gets float32.
    pub fn into_backend(self, names: HashMap<String, String>) -> Box<dyn SimpleBackend> {
        let shapes = self.shapes();
        Box::new(GgufBackend {
            file: self,
            names,
            shapes,
        })
    }
}

struct GgufBackend {
    file: GgufFile,
    names: HashMap<String, String>,
    shapes: HashMap<String, Vec<usize>>,
}

impl SimpleBackend for GgufBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        expect_shape(self.get_unchecked(name, dtype, dev)?, s, name)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let key = self
            .names
            .get(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor {
                path: name.to_owned(),
            })?;
        let info = self
            .file
            .content
            .tensor_infos
            .get(key)
            .ok_or_else(|| candle_core::Error::CannotFindTensor { path: key.clone() })?;
        let qtensor = {
            let mut reader = self
                .file
                .reader
                .lock()
                .map_err(|_| candle_core::Error::Msg("GGUF reader poisoned".to_owned()))?;
            info.read(
                &mut *reader,
                self.file.content.tensor_data_offset,
                &Device::Cpu,
            )?
        };
        let mut tensor = qtensor.dequantize(&Device::Cpu)?;
        if let Some(shape) = self.shapes.get(key) {
            tensor = tensor.reshape(shape.as_slice())?;
        }
        let dtype = if dtype == DType::F8E4M3 {
            DType::F32
        } else {
            dtype
        };
        tensor.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/golden/files_dit_gguf_q8_0/wan_t2v_Q8_0.gguf")
    }

    #[test]
    fn five_dim_shapes_are_restored_and_quantized_tensors_dequantized() {
        let file = GgufFile::open(&golden()).unwrap();
        assert!(is_gguf(&golden()));
        assert_eq!(
            file.shapes()["patch_embedding.weight"],
            vec![32, 16, 1, 2, 2]
        );
        assert_eq!(
            file.header().tensors["blocks.0.self_attn.q.weight"].dtype,
            "Q8_0"
        );
        let names = HashMap::from([("q".to_owned(), "blocks.0.self_attn.q.weight".to_owned())]);
        let backend = file.into_backend(names);
        let q = backend
            .get_unchecked("q", DType::F32, &Device::Cpu)
            .unwrap();
        assert_eq!(q.dims(), &[32, 32]);
        assert!(
            q.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 1.0
        );
    }

    #[test]
    fn a_truncated_file_is_named_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.gguf");
        let bytes = std::fs::read(golden()).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        let err = GgufFile::open(&path).unwrap_err().to_string();
        assert!(
            err.contains("truncated") && err.ends_with("cut.gguf"),
            "{err}"
        );
    }
}
