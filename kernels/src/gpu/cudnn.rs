//! cuDNN's fused flash attention and channels-last convolutions through our C++ shim
//! (`cudnn/shim.cpp`).
//!
//! The shim is linked statically; libcudnn itself is opened at run time from the first path
//! that loads, so a machine without cuDNN runs our own kernel instead. A context owns one cuDNN
//! handle and its plan cache; handles must not be used from two threads at once, so callers
//! hold it behind a mutex.

use std::ffi::{CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};

const ERROR_LEN: usize = 1024;

unsafe extern "C" {
    fn stillmotion_cudnn_open(
        library_path: *const c_char,
        out_context: *mut *mut c_void,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
    fn stillmotion_cudnn_version() -> i64;
    fn stillmotion_cudnn_close(context: *mut c_void);
    fn stillmotion_cudnn_sdpa_prepare(
        context: *mut c_void,
        dtype: c_int,
        b: i64,
        h: i64,
        sq: i64,
        sk: i64,
        d: i64,
        scale: f32,
        workspace_bytes: *mut i64,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
    fn stillmotion_cudnn_sdpa_run(
        context: *mut c_void,
        stream: *mut c_void,
        dtype: c_int,
        b: i64,
        h: i64,
        sq: i64,
        sk: i64,
        d: i64,
        scale: f32,
        q: *const c_void,
        k: *const c_void,
        v: *const c_void,
        o: *mut c_void,
        workspace: *mut c_void,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
    fn stillmotion_cudnn_conv_prepare(
        context: *mut c_void,
        dtype: c_int,
        shape: *const i64,
        workspace_bytes: *mut i64,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
    fn stillmotion_cudnn_conv_run(
        context: *mut c_void,
        stream: *mut c_void,
        dtype: c_int,
        shape: *const i64,
        x: *const c_void,
        filter: *const c_void,
        y: *mut c_void,
        workspace: *mut c_void,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
}

/// One convolution as the shim keys its plans: dtype (0 bfloat16, 1 float16, 2 float32) and
/// n, c, d, h, w (input), k, t, r, s (filter), pre-padding d/h/w, post-padding d/h/w, stride
/// d/h/w.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvCall {
    pub dtype: c_int,
    pub shape: [i64; 18],
}

/// The shape of one attention call, as the shim keys its plans.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SdpaShape {
    /// 0 bfloat16, 1 float16.
    pub dtype: c_int,
    pub batch: i64,
    pub heads: i64,
    pub queries: i64,
    pub keys: i64,
    pub head_dim: i64,
    pub scale: f32,
}

/// One cuDNN handle with its plan cache.
pub(crate) struct Cudnn {
    context: *mut c_void,
    pub(crate) library: String,
    pub(crate) version: i64,
}

// SAFETY: the context is only used through `&mut self` (callers keep it in a mutex), and a
// cuDNN handle may move between threads as long as two never use it at once.
unsafe impl Send for Cudnn {}

fn message(buffer: &[u8]) -> String {
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

/// Calls the shim with an error buffer of `ERROR_LEN` bytes (it writes at most that many,
/// NUL-terminated); a nonzero status becomes the sentence it wrote.
fn checked(call: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<(), String> {
    let mut error = [0u8; ERROR_LEN];
    let status = call(error.as_mut_ptr().cast(), ERROR_LEN);
    if status == 0 {
        Ok(())
    } else {
        Err(message(&error))
    }
}

impl Cudnn {
    /// Opens the first candidate that loads (a full path, or a soname for the system loader).
    pub(crate) fn open_first(candidates: &[PathBuf]) -> Result<Self, String> {
        let mut reasons = Vec::new();
        for candidate in candidates {
            match Self::open(candidate) {
                Ok(cudnn) => return Ok(cudnn),
                Err(reason) => reasons.push(reason),
            }
        }
        if reasons.is_empty() {
            return Err("no cuDNN library to try".to_owned());
        }
        Err(reasons.join("; "))
    }

    fn open(path: &Path) -> Result<Self, String> {
        let name = CString::new(path.to_string_lossy().as_bytes())
            .map_err(|_| format!("{} contains a NUL byte", path.display()))?;
        let mut context = std::ptr::null_mut();
        let mut error = [0u8; ERROR_LEN];
        // SAFETY: the pointers are valid for the call; the shim writes at most `ERROR_LEN`
        // bytes into `error`, NUL-terminated.
        let status = unsafe {
            stillmotion_cudnn_open(
                name.as_ptr(),
                &raw mut context,
                error.as_mut_ptr().cast(),
                ERROR_LEN,
            )
        };
        if status != 0 || context.is_null() {
            return Err(message(&error));
        }
        // SAFETY: no arguments; reads the version of the library opened above.
        let version = unsafe { stillmotion_cudnn_version() };
        Ok(Self {
            context,
            library: path.display().to_string(),
            version,
        })
    }

    /// Builds the plan for `shape` (cached) and returns the workspace it needs in bytes.
    pub(crate) fn prepare(&mut self, shape: SdpaShape) -> Result<usize, String> {
        let mut workspace = 0_i64;
        // SAFETY: `self.context` came from `stillmotion_cudnn_open`; output pointers are valid.
        checked(|error, len| unsafe {
            stillmotion_cudnn_sdpa_prepare(
                self.context,
                shape.dtype,
                shape.batch,
                shape.heads,
                shape.queries,
                shape.keys,
                shape.head_dim,
                shape.scale,
                &raw mut workspace,
                error,
                len,
            )
        })?;
        usize::try_from(workspace).map_err(|_| format!("negative workspace size {workspace}"))
    }

    /// Queues attention on `stream` with a plan `prepare` built.
    ///
    /// # Safety
    /// `q`, `k`, `v`, `o` and `workspace` must be device addresses of buffers laid out as
    /// `shape` says (`[B, S, H, D]` contiguous, workspace of the prepared size) that stay
    /// alive until the stream has run the kernel.
    #[allow(
        clippy::too_many_arguments,
        reason = "one device address per tensor of the call"
    )]
    pub(crate) unsafe fn run(
        &mut self,
        stream: *mut c_void,
        shape: SdpaShape,
        q: u64,
        k: u64,
        v: u64,
        o: u64,
        workspace: u64,
    ) -> Result<(), String> {
        // SAFETY: guaranteed by the caller (see above); the context is ours.
        checked(|error, len| unsafe {
            stillmotion_cudnn_sdpa_run(
                self.context,
                stream,
                shape.dtype,
                shape.batch,
                shape.heads,
                shape.queries,
                shape.keys,
                shape.head_dim,
                shape.scale,
                q as *const c_void,
                k as *const c_void,
                v as *const c_void,
                o as *mut c_void,
                workspace as *mut c_void,
                error,
                len,
            )
        })
    }
}

impl Cudnn {
    /// Builds the plan for a convolution (cached) and returns the workspace it needs in bytes.
    pub(crate) fn prepare_conv(&mut self, call: &ConvCall) -> Result<usize, String> {
        let mut workspace = 0_i64;
        // SAFETY: `self.context` came from `stillmotion_cudnn_open`; `shape` holds the 18
        // values the shim reads; output pointers are valid.
        checked(|error, len| unsafe {
            stillmotion_cudnn_conv_prepare(
                self.context,
                call.dtype,
                call.shape.as_ptr(),
                &raw mut workspace,
                error,
                len,
            )
        })?;
        usize::try_from(workspace).map_err(|_| format!("negative workspace size {workspace}"))
    }

    /// Queues a convolution `prepare_conv` planned on `stream`.
    ///
    /// # Safety
    /// `x`, `filter`, `y` and `workspace` must be device addresses of contiguous channels-last
    /// buffers of the sizes `call` implies (and the prepared workspace size), alive until the
    /// stream has run the kernel.
    pub(crate) unsafe fn run_conv(
        &mut self,
        stream: *mut c_void,
        call: &ConvCall,
        x: u64,
        filter: u64,
        y: u64,
        workspace: u64,
    ) -> Result<(), String> {
        // SAFETY: guaranteed by the caller (see above); the context is ours.
        checked(|error, len| unsafe {
            stillmotion_cudnn_conv_run(
                self.context,
                stream,
                call.dtype,
                call.shape.as_ptr(),
                x as *const c_void,
                filter as *const c_void,
                y as *mut c_void,
                workspace as *mut c_void,
                error,
                len,
            )
        })
    }
}

impl Drop for Cudnn {
    fn drop(&mut self) {
        // SAFETY: the context came from `stillmotion_cudnn_open` and is closed once.
        unsafe { stillmotion_cudnn_close(self.context) };
    }
}
