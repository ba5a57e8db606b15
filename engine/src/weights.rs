//! Model files on disk: safetensors headers, sharded and diffusers folders, and memory-mapped
//! loading.
//!
//! Every file's header is read and checked (format, tensor sizes, file length) before anything
//! is mapped, so a truncated download or a renamed `.ckpt` fails with a message naming the file
//! and the fix instead of an opaque decoder error. Tensors are then read one at a time straight
//! from the mapping onto the device; a checkpoint is never copied whole into RAM. This is the one
//! module of the engine allowed `unsafe` (candle's mmap loader is `unsafe`).
//!
//! Layouts handled: a single `.safetensors` file (any key prefix: see `crate::wan::weights`),
//! the official sharded release (`diffusion_pytorch_model-0000N-of-0000M.safetensors` with
//! `diffusion_pytorch_model.safetensors.index.json` and `config.json`), and diffusers folders
//! (`model_index.json` with `transformer/` and `transformer_2/`).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::safetensors::{Load, MmapedSafetensors};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use candle_nn::var_builder::SimpleBackend;

use crate::EngineError;

/// Headers larger than this are not safetensors headers (real ones are well under 10 MB).
const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// One tensor as a safetensors header describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorEntry {
    /// The safetensors dtype name (`F32`, `BF16`, `F8_E4M3`, ...).
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Byte length of the tensor's data.
    pub bytes: u64,
}

/// A checked safetensors header.
#[derive(Clone, Debug)]
pub struct Header {
    pub path: PathBuf,
    pub tensors: BTreeMap<String, TensorEntry>,
    /// The `__metadata__` string map.
    pub metadata: BTreeMap<String, String>,
    pub file_len: u64,
}

impl Header {
    /// Total bytes of tensor data.
    pub fn data_bytes(&self) -> u64 {
        self.tensors.values().map(|t| t.bytes).sum()
    }
}

fn bad(path: &Path, problem: impl Into<String>) -> EngineError {
    EngineError::BadModelFile {
        problem: problem.into(),
        path: path.to_owned(),
    }
}

/// Bytes per element of a safetensors dtype; `None` for names we do not know.
fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
}

/// Explains what a file that is not safetensors most likely is, from its first bytes.
fn sniff_other_format(first: &[u8]) -> Option<&'static str> {
    if first.starts_with(b"GGUF") {
        Some(
            "this is a GGUF file, which Stillmotion reads only as a diffusion transformer or a text encoder: use the .safetensors release of this model",
        )
    } else if matches!(first, [0x80, 2..=5, ..]) || first.starts_with(b"PK\x03\x04") {
        Some(
            "this is a PyTorch pickle checkpoint (.pt/.ckpt/.pth), which is not loaded because it can run code: use the .safetensors release of the model",
        )
    } else {
        None
    }
}

/// Reads and checks the header of one safetensors file without reading its tensor data.
pub fn read_header(path: &Path) -> Result<Header, EngineError> {
    let mut file =
        File::open(path).map_err(|e| EngineError::io("opening a model file", path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| EngineError::io("reading a model file's size", path, e))?
        .len();
    let truncated = "the file is truncated (an interrupted download?): download it again";
    if file_len < 8 {
        return Err(bad(path, truncated));
    }
    let mut len_bytes = [0_u8; 8];
    file.read_exact(&mut len_bytes)
        .map_err(|e| EngineError::io("reading a model file", path, e))?;
    let header_len = u64::from_le_bytes(len_bytes);
    let mut first = [0_u8; 1];
    let opens_json = file.read_exact(&mut first).is_ok() && first[0] == b'{';
    // A safetensors header length can begin with any byte, so sniff only what is not one.
    if !opens_json && let Some(problem) = sniff_other_format(&len_bytes) {
        return Err(bad(path, problem));
    }
    let not_safetensors = "this is not a safetensors file (its header is unreadable): use a .safetensors model file, or download it again";
    if !(2..=MAX_HEADER_BYTES).contains(&header_len) {
        return Err(bad(path, not_safetensors));
    }
    if 8 + header_len > file_len {
        return Err(bad(path, truncated));
    }
    if !opens_json {
        return Err(bad(path, not_safetensors));
    }
    file.seek(SeekFrom::Start(8))
        .map_err(|e| EngineError::io("reading a model file", path, e))?;
    let mut text = vec![0_u8; usize::try_from(header_len).map_err(|_| bad(path, not_safetensors))?];
    file.read_exact(&mut text)
        .map_err(|e| EngineError::io("reading a model file", path, e))?;
    let json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&text).map_err(|_| bad(path, not_safetensors))?;

    let mut tensors = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    let mut data_end = 0_u64;
    for (name, value) in json {
        if name == "__metadata__" {
            if let serde_json::Value::Object(map) = value {
                for (k, v) in map {
                    let v = match v {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    metadata.insert(k, v);
                }
            }
            continue;
        }
        let entry = parse_entry(&value).ok_or_else(|| bad(path, not_safetensors))?;
        let (dtype, shape, start, end) = entry;
        let size = dtype_size(&dtype).ok_or_else(|| {
            bad(
                path,
                format!("tensor {name} has dtype {dtype}, which Stillmotion cannot read"),
            )
        })?;
        let elements: u64 = shape.iter().map(|&d| d as u64).product();
        if end < start || end - start != elements * size {
            return Err(bad(
                path,
                format!(
                    "tensor {name}'s size does not match its shape: the file is damaged, download it again"
                ),
            ));
        }
        data_end = data_end.max(end);
        tensors.insert(
            name,
            TensorEntry {
                dtype,
                shape,
                bytes: end - start,
            },
        );
    }
    if 8 + header_len + data_end > file_len {
        return Err(bad(
            path,
            format!(
                "the file is truncated ({file_len} of {} bytes; an interrupted download?): download it again",
                8 + header_len + data_end
            ),
        ));
    }
    Ok(Header {
        path: path.to_owned(),
        tensors,
        metadata,
        file_len,
    })
}

fn parse_entry(value: &serde_json::Value) -> Option<(String, Vec<usize>, u64, u64)> {
    let dtype = value.get("dtype")?.as_str()?.to_owned();
    let shape = value
        .get("shape")?
        .as_array()?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<Vec<_>>>()?;
    let offsets = value.get("data_offsets")?.as_array()?;
    let [start, end] = offsets.as_slice() else {
        return None;
    };
    Some((dtype, shape, start.as_u64()?, end.as_u64()?))
}

/// The two experts of a Wan2.2 A14B release folder (official or diffusers); TI2V-5B has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpertFolders {
    pub high_noise: PathBuf,
    pub low_noise: Option<PathBuf>,
}

/// Finds the expert sub-folders of an official (`high_noise_model/`, `low_noise_model/`) or
/// diffusers (`transformer/` = high noise, `transformer_2/` = low noise) release folder.
pub fn expert_folders(root: &Path) -> Option<ExpertFolders> {
    let official = (root.join("high_noise_model"), root.join("low_noise_model"));
    if official.0.is_dir() {
        return Some(ExpertFolders {
            high_noise: official.0,
            low_noise: official.1.is_dir().then_some(official.1),
        });
    }
    let diffusers = (root.join("transformer"), root.join("transformer_2"));
    if root.join("model_index.json").is_file() && diffusers.0.is_dir() {
        return Some(ExpertFolders {
            high_noise: diffusers.0,
            low_noise: diffusers.1.is_dir().then_some(diffusers.1),
        });
    }
    None
}

/// The safetensors files that make up the model at `path`: the file itself, the shards listed by
/// a folder's `*.safetensors.index.json`, or a folder's single `.safetensors` file.
pub fn model_files(path: &Path) -> Result<Vec<PathBuf>, EngineError> {
    if !path.is_dir() {
        if !path.exists() {
            return Err(bad(path, "the model file does not exist: check the path"));
        }
        return Ok(vec![path.to_owned()]);
    }
    if let Some(experts) = expert_folders(path) {
        let names = match &experts.low_noise {
            Some(low) => format!(
                "{} (high noise) or {} (low noise)",
                experts.high_noise.display(),
                low.display()
            ),
            None => experts.high_noise.display().to_string(),
        };
        return Err(bad(
            path,
            format!("this folder holds a whole release: choose the expert's folder, {names}"),
        ));
    }
    let entries = std::fs::read_dir(path)
        .map_err(|e| EngineError::io("listing a model folder", path, e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect::<Vec<_>>();
    let named = |suffix: &str| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = entries
            .iter()
            .filter(|p| p.to_string_lossy().ends_with(suffix))
            .cloned()
            .collect();
        v.sort();
        v
    };
    let indexes = named(".safetensors.index.json");
    match indexes.as_slice() {
        [] => {}
        [index] => return index_shards(index),
        _ => {
            return Err(bad(
                path,
                "the folder has several *.safetensors.index.json files: point to the model file or a folder with one model",
            ));
        }
    }
    match named(".safetensors").as_slice() {
        [] => Err(bad(
            path,
            "the folder has no .safetensors file: point to a model file or its folder",
        )),
        [one] => Ok(vec![one.clone()]),
        _ => Err(bad(
            path,
            "the folder has several .safetensors files and no index: point to one model file",
        )),
    }
}

/// The shard files an index names, each checked to exist.
fn index_shards(index: &Path) -> Result<Vec<PathBuf>, EngineError> {
    let text = std::fs::read_to_string(index)
        .map_err(|e| EngineError::io("reading a shard index", index, e))?;
    let unreadable = || {
        bad(
            index,
            "the shard index is not valid JSON with a weight_map: download it again",
        )
    };
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|_| unreadable())?;
    let map = json
        .get("weight_map")
        .and_then(serde_json::Value::as_object)
        .ok_or_else(unreadable)?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = Vec::new();
    for file in map.values() {
        let name = file.as_str().ok_or_else(unreadable)?;
        let shard = dir.join(name);
        if !files.contains(&shard) {
            files.push(shard);
        }
    }
    files.sort();
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        return Err(bad(
            missing,
            format!(
                "shard listed in {} is missing: download every shard of the model",
                index.file_name().unwrap_or_default().to_string_lossy()
            ),
        ));
    }
    Ok(files)
}

/// Checked, memory-mapped safetensors files read as one set of tensors.
pub struct MappedFiles {
    headers: Vec<Header>,
    mmap: MmapedSafetensors,
}

impl std::fmt::Debug for MappedFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedFiles")
            .field(
                "files",
                &self.headers.iter().map(|h| &h.path).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl MappedFiles {
    /// Checks every file's header, then maps them.
    pub fn open(files: &[PathBuf]) -> Result<Self, EngineError> {
        let headers = files
            .iter()
            .map(|f| read_header(f))
            .collect::<Result<Vec<_>, _>>()?;
        let mut seen = HashMap::new();
        for header in &headers {
            for name in header.tensors.keys() {
                if let Some(other) = seen.insert(name.as_str(), &header.path) {
                    return Err(bad(
                        &header.path,
                        format!(
                            "tensor {name} is also in {}: the files are not shards of one model",
                            other.display()
                        ),
                    ));
                }
            }
        }
        #[expect(
            unsafe_code,
            reason = "candle's mmap loader is unsafe: a mapping is only sound while the file is unchanged"
        )]
        // SAFETY: the files are mapped read-only and only read through the mapping. Soundness
        // needs that no one truncates or rewrites them while mapped; every mmap-based loader
        // (candle, safetensors, PyTorch) makes the same assumption of model files, and the
        // headers and lengths were checked above, so a file that is merely short never reaches
        // the mapping.
        let mmap = unsafe { MmapedSafetensors::multi(files)? };
        Ok(Self { headers, mmap })
    }

    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    /// Every tensor's name and header entry, across all files.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &TensorEntry)> {
        self.headers
            .iter()
            .flat_map(|h| h.tensors.iter().map(|(k, v)| (k.as_str(), v)))
    }

    /// The raw bytes of one tensor, straight from the mapping.
    pub fn bytes(&self, name: &str) -> Result<&[u8], EngineError> {
        Ok(self.mmap.get(name)?.data())
    }

    /// A `VarBuilder` that reads tensors from the mapping on demand. `names` maps the names the
    /// model asks for onto the files' keys.
    ///
    /// Asking for [`DType::F8E4M3`] means "as stored": float8 stays float8 (also when stored
    /// in a `U8` container, as ComfyUI's newer format may), other dtypes are not converted.
    pub fn into_var_builder(
        self,
        names: HashMap<String, String>,
        dtype: DType,
        device: &Device,
    ) -> VarBuilder<'static> {
        VarBuilder::from_backend(self.into_backend(names), dtype, device.clone())
    }

    /// The backend of [`MappedFiles::into_var_builder`], for wrapping (LoRA merging).
    pub fn into_backend(self, names: HashMap<String, String>) -> Box<dyn SimpleBackend> {
        let dtypes = self
            .entries()
            .map(|(k, v)| (k.to_owned(), v.dtype.clone()))
            .collect();
        Box::new(MappedBackend {
            mmap: self.mmap,
            names,
            dtypes,
        })
    }
}

/// `tensor` if it has the `expected` shape, else candle's shape error naming the tensor.
/// Shared by the candle backends over our weight files (safetensors here, GGUF in gguf.rs).
pub(crate) fn expect_shape(
    tensor: Tensor,
    expected: Shape,
    name: &str,
) -> candle_core::Result<Tensor> {
    if tensor.shape() != &expected {
        return Err(candle_core::Error::UnexpectedShape {
            msg: format!("shape mismatch for {name}"),
            expected,
            got: tensor.shape().clone(),
        });
    }
    Ok(tensor)
}

struct MappedBackend {
    mmap: MmapedSafetensors,
    names: HashMap<String, String>,
    dtypes: HashMap<String, String>,
}

impl SimpleBackend for MappedBackend {
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
        let view = self.mmap.get(key)?;
        if dtype != DType::F8E4M3 {
            return view.load(dev)?.to_dtype(dtype);
        }
        if self.dtypes.get(key).map(String::as_str) == Some("U8") {
            return Tensor::from_raw_buffer(view.data(), DType::F8E4M3, view.shape(), dev);
        }
        view.load(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, tensors: &[(&str, Tensor)], metadata: Option<HashMap<String, String>>) {
        let data: Vec<(&str, Tensor)> = tensors.to_vec();
        safetensors::serialize_to_file(data.iter().map(|(k, t)| (*k, t)), metadata, path).unwrap();
    }

    fn tensor(values: &[f32]) -> Tensor {
        Tensor::new(values, &Device::Cpu).unwrap()
    }

    #[test]
    fn header_reads_shapes_dtypes_and_metadata_without_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let meta = HashMap::from([("modelspec.title".to_owned(), "x".to_owned())]);
        write(&path, &[("a.weight", tensor(&[1.0, 2.0, 3.0]))], Some(meta));
        let header = read_header(&path).unwrap();
        assert_eq!(header.tensors["a.weight"].shape, vec![3]);
        assert_eq!(header.tensors["a.weight"].dtype, "F32");
        assert_eq!(header.metadata["modelspec.title"], "x");
        assert_eq!(header.data_bytes(), 12);
    }

    #[test]
    fn truncated_and_foreign_files_name_the_problem_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        write(&path, &[("a", tensor(&[1.0; 64]))], None);
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 10]).unwrap();
        let err = read_header(&path).unwrap_err().to_string();
        assert!(
            err.contains("truncated") && err.contains("download it again"),
            "{err}"
        );
        assert!(err.ends_with("m.safetensors"), "{err}");
        std::fs::write(&path, &full[..5]).unwrap();
        assert!(
            read_header(&path)
                .unwrap_err()
                .to_string()
                .contains("truncated")
        );

        let gguf = dir.path().join("m.gguf");
        std::fs::write(&gguf, b"GGUF\x03\0\0\0\0\0\0\0\0\0\0\0").unwrap();
        assert!(read_header(&gguf).unwrap_err().to_string().contains("GGUF"));
        let ckpt = dir.path().join("m.ckpt");
        std::fs::write(&ckpt, b"PK\x03\x04 then a zip archive").unwrap();
        assert!(
            read_header(&ckpt)
                .unwrap_err()
                .to_string()
                .contains("pickle")
        );
        let text = dir.path().join("notes.safetensors");
        std::fs::write(&text, b"hello, this is plain text and nothing else").unwrap();
        assert!(
            read_header(&text)
                .unwrap_err()
                .to_string()
                .contains("not a safetensors file")
        );
    }

    #[test]
    fn shards_come_from_the_index_and_a_missing_shard_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "diffusion_pytorch_model-00001-of-00002.safetensors",
            "diffusion_pytorch_model-00002-of-00002.safetensors",
        ];
        write(&dir.path().join(names[0]), &[("a", tensor(&[1.0]))], None);
        write(
            &dir.path().join(names[1]),
            &[("b", tensor(&[2.0, 3.0]))],
            None,
        );
        let index =
            serde_json::json!({"metadata": {}, "weight_map": {"a": names[0], "b": names[1]}});
        std::fs::write(
            dir.path()
                .join("diffusion_pytorch_model.safetensors.index.json"),
            index.to_string(),
        )
        .unwrap();
        let files = model_files(dir.path()).unwrap();
        assert_eq!(files.len(), 2);
        let mapped = MappedFiles::open(&files).unwrap();
        let names_map = HashMap::from([("renamed.b".to_owned(), "b".to_owned())]);
        let vb = mapped.into_var_builder(names_map, DType::F32, &Device::Cpu);
        let b = vb.get(2, "renamed.b").unwrap();
        assert_eq!(b.to_vec1::<f32>().unwrap(), vec![2.0, 3.0]);
        assert!(vb.get(2, "b").is_err());

        std::fs::remove_file(dir.path().join(names[1])).unwrap();
        let err = model_files(dir.path()).unwrap_err().to_string();
        assert!(err.contains("missing") && err.ends_with(names[1]), "{err}");
    }

    #[test]
    fn release_folders_point_to_their_experts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model_index.json"), "{}").unwrap();
        std::fs::create_dir(dir.path().join("transformer")).unwrap();
        std::fs::create_dir(dir.path().join("transformer_2")).unwrap();
        let experts = expert_folders(dir.path()).unwrap();
        assert_eq!(experts.high_noise, dir.path().join("transformer"));
        assert_eq!(experts.low_noise, Some(dir.path().join("transformer_2")));
        let err = model_files(dir.path()).unwrap_err().to_string();
        assert!(err.contains("choose the expert's folder"), "{err}");
    }

    #[test]
    fn float8_is_kept_as_stored_when_asked_raw() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let w = tensor(&[0.5, -2.0]).to_dtype(DType::F8E4M3).unwrap();
        let raw = Tensor::from_raw_buffer(&[0x38_u8, 0xC0], DType::U8, &[2], &Device::Cpu).unwrap();
        write(&path, &[("w", w), ("u", raw)], None);
        let mapped = MappedFiles::open(&[path]).unwrap();
        let names = HashMap::from([
            ("w".to_owned(), "w".to_owned()),
            ("u".to_owned(), "u".to_owned()),
        ]);
        let vb = mapped.into_var_builder(names, DType::F32, &Device::Cpu);
        let w = vb.get_unchecked_dtype("w", DType::F8E4M3).unwrap();
        assert_eq!(w.dtype(), DType::F8E4M3);
        let u = vb.get_unchecked_dtype("u", DType::F8E4M3).unwrap();
        assert_eq!(u.dtype(), DType::F8E4M3);
        let values = u.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(values, vec![1.0, -2.0]);
        assert_eq!(
            vb.get(2, "w").unwrap().to_vec1::<f32>().unwrap(),
            vec![0.5, -2.0]
        );
    }
}
