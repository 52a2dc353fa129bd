//! GGUF reader (versions 2 and 3, little-endian) over a memory map.
//!
//! File layout (all integers little-endian):
//! ```text
//! "GGUF" | version u32 | tensor_count u64 | kv_count u64
//! kv_count x  { key: string, value_type u32, value }
//! tensor_count x { name: string, n_dims u32, dims u64[n_dims], ggml_type u32, offset u64 }
//! padding to `general.alignment` (default 32)
//! tensor data; each tensor at data_start + offset (offset a multiple of the alignment)
//! string = len u64 | bytes;  array = elem_type u32 | count u64 | elements
//! ```
//! Invariants after `open`: every count read from the file was bounded by the
//! bytes left before anything was allocated for it; every tensor of a supported
//! type lies wholly inside the file and has whole blocks per row.

use super::dequant;
pub use super::dequant::{GgmlType, SUPPORTED_TYPES};
use super::ModelError;
use memmap2::Mmap;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Nested arrays deeper than this are refused (GGUF writers emit depth <= 2).
const MAX_ARRAY_DEPTH: u32 = 8;

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// Any integer that is non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v as u64),
            GgufValue::U16(v) => Some(v as u64),
            GgufValue::U32(v) => Some(v as u64),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer that fits an i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v as i64),
            GgufValue::I16(v) => Some(v as i64),
            GgufValue::I32(v) => Some(v as i64),
            GgufValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// Any number (floats, and integers converted).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v as f64),
            GgufValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// GGUF order: dims[0] varies fastest (the reverse of PyTorch's shape).
    pub dims: Vec<usize>,
    pub ggml_type: GgmlType,
    /// Byte offset from the start of the data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    pub fn n_elements(&self) -> usize {
        // Cannot overflow: checked when the header was parsed.
        self.dims.iter().product()
    }

    /// Row-major (PyTorch / Hugging Face) shape: dims reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }

    /// Bytes of data, for supported types.
    pub fn n_bytes(&self) -> Option<usize> {
        let (elems, bytes) = self.ggml_type.block_layout()?;
        Some(self.n_elements() / elems * bytes)
    }
}

pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub alignment: u64,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<GgufTensorInfo>,
    /// Absolute file offset of the tensor data section.
    pub data_start: u64,
    index: HashMap<String, usize>,
    mmap: Mmap,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// A bounds-checked little-endian reader over the header bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn truncated(&self, what: &str, need: u64) -> ModelError {
        ModelError::Corrupt {
            path: self.path.into(),
            msg: format!(
                "truncated {what}: needs {need} bytes at offset {} but the file has {} bytes",
                self.pos,
                self.buf.len()
            ),
        }
    }

    fn corrupt(&self, msg: String) -> ModelError {
        ModelError::Corrupt { path: self.path.into(), msg }
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], ModelError> {
        if n > self.left() as u64 {
            return Err(self.truncated(what, n));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], ModelError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32, ModelError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, ModelError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, ModelError> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    /// A count of items each at least `min_size` bytes: refused if they
    /// cannot fit in what is left of the file.
    fn count(&mut self, what: &str, min_size: u64) -> Result<u64, ModelError> {
        let n = self.u64(what)?;
        if n.saturating_mul(min_size) > self.left() as u64 {
            return Err(self.corrupt(format!(
                "{what} {n} is impossible (file truncated or corrupt): {} bytes remain at offset {}",
                self.left(),
                self.pos
            )));
        }
        Ok(n)
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<GgufValue, ModelError> {
        let what = || format!("value of metadata key '{key}'");
        Ok(match ty {
            0 => GgufValue::U8(u8::from_le_bytes(self.array(&what())?)),
            1 => GgufValue::I8(i8::from_le_bytes(self.array(&what())?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(&what())?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(&what())?)),
            4 => GgufValue::U32(self.u32(&what())?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(&what())?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(&what())?)),
            7 => match self.array::<1>(&what())?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(self.corrupt(format!("metadata key '{key}': invalid bool byte {b}"))),
            },
            8 => GgufValue::Str(self.string(&what())?),
            9 => self.array_value(key, depth)?,
            10 => GgufValue::U64(self.u64(&what())?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(&what())?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(&what())?)),
            t => return Err(self.corrupt(format!("metadata key '{key}': unknown value type {t}"))),
        })
    }

    #[allow(clippy::manual_range_patterns)] // type ids listed one by one
    fn array_value(&mut self, key: &str, depth: u32) -> Result<GgufValue, ModelError> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.corrupt(format!("metadata key '{key}': arrays nested deeper than {MAX_ARRAY_DEPTH}")));
        }
        let elem_ty = self.u32(&format!("array type of metadata key '{key}'"))?;
        let min_size = match elem_ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4 | 5 | 6 => 4,
            8 | 10 | 11 | 12 => 8,
            9 => 12,
            t => return Err(self.corrupt(format!("metadata key '{key}': unknown array element type {t}"))),
        };
        let n = self.count(&format!("array length of metadata key '{key}'"), min_size)?;
        let mut items = Vec::with_capacity(n as usize);
        for _ in 0..n {
            items.push(self.value(elem_ty, key, depth + 1)?);
        }
        Ok(GgufValue::Array(items))
    }
}

fn tensor_err(path: &Path, tensor: &str, msg: String) -> ModelError {
    ModelError::BadTensor { path: path.into(), tensor: tensor.into(), msg }
}

fn unsupported_type(path: &Path, t: &GgufTensorInfo) -> ModelError {
    ModelError::Unsupported {
        path: path.into(),
        what: "ggml tensor type",
        name: format!("{} in tensor '{}' (kiln reads {SUPPORTED_TYPES})", t.ggml_type.name(), t.name),
    }
}

/// Reads one tensor-info record, checking dims.
fn read_tensor_info(r: &mut Reader) -> Result<GgufTensorInfo, ModelError> {
    let name = r.string("tensor name")?;
    let n_dims = r.u32(&format!("dimension count of tensor '{name}'"))?;
    if n_dims == 0 || n_dims > MAX_DIMS {
        return Err(tensor_err(r.path, &name, format!("{n_dims} dimensions (ggml allows 1 to {MAX_DIMS})")));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    let mut n_elems: u64 = 1;
    for _ in 0..n_dims {
        let d = r.u64(&format!("dimensions of tensor '{name}'"))?;
        n_elems = n_elems
            .checked_mul(d)
            .filter(|&n| n <= isize::MAX as u64 / 4)
            .ok_or_else(|| tensor_err(r.path, &name, "absurd dimensions (element count overflows)".into()))?;
        dims.push(d as usize);
    }
    let ggml_type = GgmlType::from_id(r.u32(&format!("type of tensor '{name}'"))?);
    let offset = r.u64(&format!("data offset of tensor '{name}'"))?;
    Ok(GgufTensorInfo { name, dims, ggml_type, offset })
}

impl GgufFile {
    /// Opens and validates a GGUF file; tensor data stays memory-mapped.
    pub fn open(path: &Path) -> Result<GgufFile, ModelError> {
        let file = std::fs::File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ModelError::NotFound { path: path.into() },
            _ => ModelError::Io { path: path.into(), source: e },
        })?;
        let len = file.metadata().map_err(|e| ModelError::Io { path: path.into(), source: e })?.len();
        if len < 24 {
            let msg = format!("truncated header: {len} bytes, a GGUF header needs 24");
            return Err(ModelError::Corrupt { path: path.into(), msg });
        }
        // SAFETY: the map is read-only; kiln never writes model files while serving them.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::Io { path: path.into(), source: e })?;
        let (version, metadata, tensors, header_end) = parse_header(&mmap, path)?;
        let alignment = alignment_of(&metadata, path)?;
        let data_start = header_end.div_ceil(alignment) * alignment;
        let mut index = HashMap::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            if index.insert(t.name.clone(), i).is_some() {
                return Err(tensor_err(path, &t.name, "appears twice in the tensor table".into()));
            }
        }
        let g = GgufFile { path: path.into(), version, alignment, metadata, tensors, data_start, index, mmap };
        for t in &g.tensors {
            g.check_tensor(t)?;
        }
        Ok(g)
    }

    /// Alignment, whole blocks per row and bounds of one tensor (types kiln
    /// cannot read are only checked for alignment).
    fn check_tensor(&self, t: &GgufTensorInfo) -> Result<(), ModelError> {
        let path = &self.path;
        if t.offset % self.alignment != 0 {
            return Err(tensor_err(path, &t.name, format!("data offset {} is not a multiple of the alignment {}", t.offset, self.alignment)));
        }
        let Some((block_elems, _)) = t.ggml_type.block_layout() else { return Ok(()) };
        if t.dims[0] % block_elems != 0 {
            let msg = format!("row length {} is not a multiple of the {} block size {block_elems}", t.dims[0], t.ggml_type.name());
            return Err(tensor_err(path, &t.name, msg));
        }
        let n_bytes = t.n_bytes().unwrap_or(0) as u64;
        let file_len = self.mmap.len() as u64;
        let start = self.data_start.checked_add(t.offset).filter(|&s| s <= file_len);
        let Some(start) = start else {
            let msg = format!("tensor data out of bounds: offset {} past the end of the file ({file_len} bytes)", t.offset);
            return Err(tensor_err(path, &t.name, msg));
        };
        if start + n_bytes > file_len {
            let msg = format!("truncated tensor data: needs bytes {start}..{} but the file has {file_len}", start + n_bytes);
            return Err(tensor_err(path, &t.name, msg));
        }
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key)?.as_f64()
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }

    /// An array whose elements are all strings.
    pub fn get_str_array(&self, key: &str) -> Option<Vec<&str>> {
        self.get(key)?.as_array()?.iter().map(|v| v.as_str()).collect()
    }

    /// An array whose elements are all numbers.
    pub fn get_f32_array(&self, key: &str) -> Option<Vec<f32>> {
        self.get(key)?.as_array()?.iter().map(|v| v.as_f64().map(|x| x as f32)).collect()
    }

    /// An array whose elements are all integers fitting an i32.
    pub fn get_i32_array(&self, key: &str) -> Option<Vec<i32>> {
        self.get(key)?.as_array()?.iter().map(|v| v.as_i64().and_then(|x| i32::try_from(x).ok())).collect()
    }

    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor's bytes inside the map (supported types only).
    pub fn raw_bytes(&self, t: &GgufTensorInfo) -> Result<&[u8], ModelError> {
        let n_bytes = t.n_bytes().ok_or_else(|| unsupported_type(&self.path, t))?;
        // In bounds: checked by `check_tensor` at open for every tensor of a supported type.
        let start = (self.data_start + t.offset) as usize;
        self.mmap
            .get(start..start + n_bytes)
            .ok_or_else(|| tensor_err(&self.path, &t.name, "tensor data out of bounds".into()))
    }

    /// The tensor dequantized to f32, with its row-major (PyTorch) shape.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), ModelError> {
        let t = self
            .tensor(name)
            .ok_or_else(|| ModelError::MissingTensor { path: self.path.clone(), tensor: name.into() })?;
        let bytes = self.raw_bytes(t)?;
        let data = dequant::dequantize(t.ggml_type, bytes, t.n_elements())
            .map_err(|e| tensor_err(&self.path, &t.name, e.to_string()))?;
        Ok((t.shape(), data))
    }
}

/// Parses magic, version, metadata and tensor infos; returns them with the
/// offset where the header ends.
#[allow(clippy::type_complexity)]
fn parse_header(
    buf: &[u8],
    path: &Path,
) -> Result<(u32, BTreeMap<String, GgufValue>, Vec<GgufTensorInfo>, u64), ModelError> {
    let mut r = Reader { buf, pos: 0, path };
    let magic = r.array::<4>("header")?;
    if &magic != MAGIC {
        let msg = format!("not a GGUF file (magic {:02x?}, expected \"GGUF\")", magic);
        return Err(ModelError::Corrupt { path: path.into(), msg });
    }
    let version = r.u32("header")?;
    if version != 2 && version != 3 {
        let what = "GGUF version";
        return Err(ModelError::Unsupported { path: path.into(), what, name: format!("{version} (kiln reads 2 and 3)") });
    }
    let tensor_count_at = r.pos;
    let n_tensors = r.u64("header")?;
    // Smallest key/value: key len 8 + type 4 + one byte.
    let n_kv = r.count("metadata count", 13)?;
    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = r.string("metadata key")?;
        let ty = r.u32(&format!("type of metadata key '{key}'"))?;
        let v = r.value(ty, &key, 0)?;
        metadata.insert(key, v);
    }
    // Smallest tensor info: name len 8 + n_dims 4 + one dim 8 + type 4 + offset 8.
    // A count the whole file cannot hold is refused; one the rest of a
    // truncated file cannot hold fails below, naming the tensor cut short.
    if n_tensors.saturating_mul(32) > buf.len() as u64 {
        let msg = format!(
            "tensor count {n_tensors} (at offset {tensor_count_at}) is impossible (file truncated or corrupt): the file has {} bytes",
            buf.len()
        );
        return Err(r.corrupt(msg));
    }
    let mut tensors = Vec::with_capacity((n_tensors as usize).min(r.left() / 32));
    for _ in 0..n_tensors {
        tensors.push(read_tensor_info(&mut r)?);
    }
    Ok((version, metadata, tensors, r.pos as u64))
}

fn alignment_of(metadata: &BTreeMap<String, GgufValue>, path: &Path) -> Result<u64, ModelError> {
    let Some(v) = metadata.get("general.alignment") else { return Ok(DEFAULT_ALIGNMENT) };
    match v.as_u64() {
        Some(a) if a.is_power_of_two() && a <= 1 << 20 => Ok(a),
        _ => Err(ModelError::Corrupt { path: path.into(), msg: format!("general.alignment {v:?} is not a power of two") }),
    }
}
