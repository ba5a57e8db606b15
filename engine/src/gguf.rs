//! GGUF model files (as city96's ComfyUI-GGUF writes diffusion models): the header is read with
//! candle's GGUF reader, and each tensor is read when the model asks for it. GGUF allows 4
//! dimensions, so 5-D tensors (the patch embedding) are stored flattened with their shape in the
//! `comfy.gguf.orig_shape.<name>` metadata array, which is restored here.
//!
//! Quantized tensors (Q4_0…Q8_0, K-quants) can stay quantized: the backend answers a virtual
//! tensor `<name>.ggml_type` (`[ggml type id, matmul mode]`, `u32`) for each of them, and hands
//! out the raw blocks when asked for `<name>` as [`DType::U8`]. The DiT's linear layer
//! (`crate::wan::linear`) builds a candle `QTensor` from them; any other request gets the
//! tensor dequantized. F16/BF16/F32 tensors are always plain.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use stillmotion_kernels::Kernels;
use stillmotion_kernels::linear::{Epilogue, linear};

use crate::EngineError;
use crate::weights::expect_shape;
use crate::weights::{Header, TensorEntry};

const ORIG_SHAPE: &str = "comfy.gguf.orig_shape.";

/// Suffix of the virtual tensor that tells a quantized tensor's GGML type (see the module doc).
pub(crate) const GGML_TYPE_SUFFIX: &str = ".ggml_type";

/// How a linear layer multiplies by weights kept quantized.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QuantizedMatmul {
    /// Dequantize the layer's weight to the compute dtype at each use, then a plain GEMM: the
    /// arithmetic ComfyUI-GGUF runs (and the golden references), so outputs match a model
    /// loaded with dequantized weights to float rounding.
    #[default]
    DequantizeAtUse,
    /// candle's `QMatMul` on the quantized blocks. On the CPU (and in CUDA's MMQ kernels) it
    /// quantizes the activations to 8-bit blocks too, as ggml does: no dequantized copy of the
    /// weight, but a relative error of about 1e-2 against the dequantized model (tiny golden
    /// models: 3e-3 with K-quants, 1e-2 with Q4_0…Q8_0).
    Native,
}

impl QuantizedMatmul {
    pub(crate) fn code(self) -> u32 {
        match self {
            Self::DequantizeAtUse => 0,
            Self::Native => 1,
        }
    }

    pub(crate) fn from_code(code: u32) -> Self {
        if code == 1 {
            Self::Native
        } else {
            Self::DequantizeAtUse
        }
    }
}

/// `x · weightᵀ + bias`, then `epilogue`, for a `[out, in]` weight kept quantized, as the
/// DiT's linear layer runs it on any device: dequantized to `dtype` and multiplied by our
/// GEMM, or by candle's `QMatMul` on float32 activations (its kernels take no other), the
/// result in `dtype`.
pub fn quantized_linear(
    kernels: &Kernels,
    x: &Tensor,
    weight: &Arc<QTensor>,
    bias: &Tensor,
    (matmul, epilogue): (QuantizedMatmul, Epilogue),
    dtype: DType,
) -> Result<Tensor, EngineError> {
    match matmul {
        QuantizedMatmul::Native => {
            let x = x.to_dtype(DType::F32)?.contiguous()?;
            let y = QMatMul::QTensor(Arc::clone(weight))
                .forward(&x)?
                .broadcast_add(&bias.to_dtype(DType::F32)?)?;
            let y = match epilogue {
                Epilogue::None => y,
                Epilogue::GeluTanh => y.gelu()?,
            };
            Ok(y.to_dtype(dtype)?)
        }
        QuantizedMatmul::DequantizeAtUse => {
            let w = weight.dequantize(&weight.device())?.to_dtype(dtype)?;
            Ok(linear(kernels, x, &w, Some(bias), epilogue)?)
        }
    }
}

/// The GGML type id of `dtype`, as GGUF files store it.
pub(crate) fn ggml_type_id(dtype: GgmlDType) -> u32 {
    match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

/// The inverse of [`ggml_type_id`] for the types candle reads.
pub(crate) fn ggml_type_from_id(id: u32) -> Option<GgmlDType> {
    [
        GgmlDType::F32,
        GgmlDType::F16,
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q8_1,
        GgmlDType::Q2K,
        GgmlDType::Q3K,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
        GgmlDType::Q8K,
        GgmlDType::BF16,
    ]
    .into_iter()
    .find(|&d| ggml_type_id(d) == id)
}

/// Whether tensors of `dtype` are block-quantized (everything but the float types).
pub(crate) fn is_quantized(dtype: GgmlDType) -> bool {
    !matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// Bytes of a tensor's data of `elements` values stored as `dtype`.
fn stored_bytes(dtype: GgmlDType, elements: usize) -> usize {
    elements / dtype.block_size() * dtype.type_size()
}

/// An integer metadata value, written with whichever integer type the writer chose.
pub(crate) fn int_value(value: &Value) -> Option<i64> {
    Some(match value {
        Value::U8(v) => i64::from(*v),
        Value::U16(v) => i64::from(*v),
        Value::U32(v) => i64::from(*v),
        Value::U64(v) => i64::try_from(*v).ok()?,
        Value::I8(v) => i64::from(*v),
        Value::I16(v) => i64::from(*v),
        Value::I32(v) => i64::from(*v),
        Value::I64(v) => *v,
        _ => return None,
    })
}

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

    /// The file's metadata (`general.architecture`, `tokenizer.ggml.*`, ...).
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `general.architecture`, when the file names one (`wan`, `t5encoder`, ...).
    pub fn architecture(&self) -> Option<&str> {
        self.content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
    }

    /// Refuses a file whose `general.architecture` is not one of `expected`, naming what it is
    /// and where it belongs (`role`: what the caller loads, for the message).
    pub fn expect_architecture(&self, expected: &[&str], role: &str) -> Result<(), EngineError> {
        let Some(arch) = self.architecture() else {
            return Ok(());
        };
        if expected.contains(&arch) {
            return Ok(());
        }
        let what = match arch {
            "t5" | "t5encoder" | "umt5" => "a text encoder (umT5): choose it as the text encoder",
            "wan" => "a Wan diffusion transformer: choose it as a DiT expert",
            _ => "not a Wan2.2 model file",
        };
        Err(EngineError::BadModelFile {
            problem: format!(
                "this GGUF file's architecture is {arch:?}, {what}; it cannot be loaded as the {role}"
            ),
            path: self.path.clone(),
        })
    }

    fn orig_shape(&self, name: &str) -> Option<Vec<usize>> {
        match self.content.metadata.get(&format!("{ORIG_SHAPE}{name}"))? {
            Value::Array(dims) => dims.iter().map(dim).collect(),
            _ => None,
        }
    }

    /// Bytes the DiT keeps resident for this file's weights: quantized tensors as stored, the
    /// rest at `float_bytes` per value (2 for bf16). `quantized_too` counts quantized tensors
    /// dequantized as well (what loading them as plain tensors costs).
    pub fn resident_bytes(&self, float_bytes: usize, quantized_too: bool) -> usize {
        self.content
            .tensor_infos
            .values()
            .map(|info| {
                let elements = info.shape.elem_count();
                if is_quantized(info.ggml_dtype) && !quantized_too {
                    stored_bytes(info.ggml_dtype, elements)
                } else {
                    elements * float_bytes
                }
            })
            .sum()
    }

    /// A backend that reads tensors on demand (see the module doc for quantized ones); `names`
    /// maps the model's names onto the file's. Asking for [`DType::F8E4M3`] ("as stored", see
    /// `crate::weights`) gets float32.
    pub fn into_backend(
        self,
        names: HashMap<String, String>,
        matmul: QuantizedMatmul,
    ) -> Box<dyn SimpleBackend> {
        let shapes = self.shapes();
        Box::new(GgufBackend {
            file: self,
            names,
            shapes,
            matmul,
        })
    }

    fn read_raw(&self, info: &TensorInfo) -> candle_core::Result<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        let len = stored_bytes(info.ggml_dtype, info.shape.elem_count());
        let mut bytes = vec![0_u8; len];
        let mut reader = self
            .reader
            .lock()
            .map_err(|_| candle_core::Error::Msg("GGUF reader poisoned".to_owned()))?;
        reader.seek(SeekFrom::Start(
            self.content.tensor_data_offset + info.offset,
        ))?;
        reader.read_exact(&mut bytes)?;
        Ok(bytes)
    }
}

struct GgufBackend {
    file: GgufFile,
    names: HashMap<String, String>,
    shapes: HashMap<String, Vec<usize>>,
    matmul: QuantizedMatmul,
}

impl GgufBackend {
    fn info(&self, name: &str) -> candle_core::Result<(&String, &TensorInfo)> {
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
        Ok((key, info))
    }

    /// The quantized tensor behind a `<name>.ggml_type` request, if it is one.
    fn quantized_info(&self, virtual_name: &str) -> Option<&TensorInfo> {
        let name = virtual_name.strip_suffix(GGML_TYPE_SUFFIX)?;
        let key = self.names.get(name)?;
        let info = self.file.content.tensor_infos.get(key)?;
        is_quantized(info.ggml_dtype).then_some(info)
    }
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
        if let Some(info) = self.quantized_info(name) {
            let code = [ggml_type_id(info.ggml_dtype), self.matmul.code()];
            return Tensor::new(&code, &Device::Cpu);
        }
        let (key, info) = self.info(name)?;
        if dtype == DType::U8 && is_quantized(info.ggml_dtype) {
            let bytes = self.file.read_raw(info)?;
            let len = bytes.len();
            return Tensor::from_vec(bytes, len, &Device::Cpu);
        }
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
        self.names.contains_key(name) || self.quantized_info(name).is_some()
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
        let backend = file.into_backend(names, QuantizedMatmul::default());
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
