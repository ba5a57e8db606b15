//! Launches of `cuda/glue.cu`.

use candle_core::{D, DType, Shape, Tensor};
use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::{device_ptr, empty_like_shape, grid_1d, int, loaded, output_tensor};
use crate::glue::Modulation;
use crate::{KernelError, Kernels};

const ROW_THREADS: u32 = 256;

fn suffix(kernel: &'static str, dtype: DType) -> Result<&'static str, KernelError> {
    match dtype {
        DType::BF16 => Ok("bf16"),
        DType::F16 => Ok("f16"),
        DType::F32 => Ok("f32"),
        other => Err(KernelError::BadInput {
            kernel,
            problem: format!("dtype {other:?} is not supported"),
        }),
    }
}

/// One block of `ROW_THREADS` per row (at least one block): the row kernels' launch.
fn row_blocks(kernel: &'static str, rows: usize) -> Result<LaunchConfig, KernelError> {
    Ok(LaunchConfig {
        grid_dim: (int(kernel, rows.max(1))? as u32, 1, 1),
        block_dim: (ROW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

fn f32_table(kernel: &'static str, t: &Tensor) -> Result<(Tensor, u64), KernelError> {
    let t = t.to_dtype(DType::F32)?.contiguous()?;
    let ptr = device_ptr(&t, kernel)?;
    Ok((t, ptr))
}

/// Float32 contiguous copies of optional tables and their device addresses (0 for none); the
/// copies must outlive the launch that reads them.
fn optional_tables<const N: usize>(
    kernel: &'static str,
    tables: [Option<&Tensor>; N],
) -> Result<(Vec<Tensor>, [u64; N]), KernelError> {
    let mut keep = Vec::with_capacity(N);
    let mut pointers = [0; N];
    for (pointer, table) in pointers.iter_mut().zip(tables) {
        if let Some(table) = table {
            let (table, address) = f32_table(kernel, table)?;
            keep.push(table);
            *pointer = address;
        }
    }
    Ok((keep, pointers))
}

pub(crate) fn layer_norm_modulate(
    kernels: &Kernels,
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    modulation: Option<Modulation<'_>>,
    eps: f32,
    out_dtype: DType,
) -> Result<Tensor, KernelError> {
    const KERNEL: &str = "layer_norm_modulate";
    let gpu = loaded(kernels)?;
    let x = x.contiguous()?;
    let cols = x.dim(D::Minus1)?;
    let rows = x.elem_count() / cols.max(1);
    let xp = device_ptr(&x, KERNEL)?;
    let (keep, [wp, bp, sp, cp]) = optional_tables(
        KERNEL,
        [
            affine.map(|a| a.0),
            affine.map(|a| a.1),
            modulation.map(|m| m.shift),
            modulation.map(|m| m.scale),
        ],
    )?;
    let rows_per_entry = modulation.map_or(rows.max(1), |m| m.rows_per_entry.max(1));
    let name = format!(
        "stillmotion_layer_norm_modulate_f32_{}",
        suffix(KERNEL, out_dtype)?
    );
    let function = gpu.glue_function(&name)?;
    let (storage, yp) = empty_like_shape(&gpu.device, out_dtype, x.shape())?;
    let (cols32, per32) = (int(KERNEL, cols)?, int(KERNEL, rows_per_entry)?);
    let stream = gpu.device.cuda_stream();
    let mut launch = stream.launch_builder(&function);
    launch
        .arg(&xp)
        .arg(&wp)
        .arg(&bp)
        .arg(&sp)
        .arg(&cp)
        .arg(&yp)
        .arg(&cols32)
        .arg(&per32)
        .arg(&eps);
    let config = row_blocks(KERNEL, rows)?;
    // SAFETY: the arguments match the kernel's signature; null tables are allowed by it; one
    // block per row writes every element of its row.
    unsafe { launch.launch(config) }?;
    drop(keep);
    Ok(output_tensor(storage, x.shape().clone()))
}

pub(crate) fn rms_norm(
    kernels: &Kernels,
    x: &Tensor,
    weight: &Tensor,
    eps: f32,
) -> Result<Tensor, KernelError> {
    const KERNEL: &str = "rms_norm";
    let gpu = loaded(kernels)?;
    let x = x.contiguous()?;
    let cols = x.dim(D::Minus1)?;
    let rows = x.elem_count() / cols.max(1);
    let xp = device_ptr(&x, KERNEL)?;
    let (weight, wp) = f32_table(KERNEL, weight)?;
    let name = format!("stillmotion_rms_norm_{}", suffix(KERNEL, x.dtype())?);
    let function = gpu.glue_function(&name)?;
    let (storage, yp) = empty_like_shape(&gpu.device, x.dtype(), x.shape())?;
    let cols32 = int(KERNEL, cols)?;
    let stream = gpu.device.cuda_stream();
    let mut launch = stream.launch_builder(&function);
    launch.arg(&xp).arg(&wp).arg(&yp).arg(&cols32).arg(&eps);
    let config = row_blocks(KERNEL, rows)?;
    // SAFETY: matches the kernel's signature; one block per row.
    unsafe { launch.launch(config) }?;
    drop(weight);
    Ok(output_tensor(storage, x.shape().clone()))
}

pub(crate) fn gated_residual(
    kernels: &Kernels,
    x: &Tensor,
    y: &Tensor,
    gate: Option<(&Tensor, usize)>,
) -> Result<Tensor, KernelError> {
    const KERNEL: &str = "gated_residual";
    let gpu = loaded(kernels)?;
    let (x, y) = (x.contiguous()?, y.contiguous()?);
    let cols = x.dim(D::Minus1)?;
    let n = x.elem_count();
    let (xp, yp) = (device_ptr(&x, KERNEL)?, device_ptr(&y, KERNEL)?);
    let (gate_tensor, gp, per) = match gate {
        None => (None, 0, 1),
        Some((g, per)) => {
            let (g, p) = f32_table(KERNEL, g)?;
            (Some(g), p, per.max(1))
        }
    };
    let name = format!("stillmotion_gated_residual_{}", suffix(KERNEL, y.dtype())?);
    let function = gpu.glue_function(&name)?;
    let (storage, op) = empty_like_shape(&gpu.device, DType::F32, x.shape())?;
    let (n64, cols32, per32) = (n as i64, int(KERNEL, cols)?, int(KERNEL, per)?);
    let stream = gpu.device.cuda_stream();
    let mut launch = stream.launch_builder(&function);
    launch
        .arg(&xp)
        .arg(&yp)
        .arg(&gp)
        .arg(&op)
        .arg(&n64)
        .arg(&cols32)
        .arg(&per32);
    // SAFETY: matches the kernel's signature; a grid-stride loop covers all n elements.
    unsafe { launch.launch(grid_1d(n, 256)) }?;
    drop(gate_tensor);
    Ok(output_tensor(storage, x.shape().clone()))
}

pub(crate) fn rope(
    kernels: &Kernels,
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
) -> Result<Tensor, KernelError> {
    const KERNEL: &str = "rope";
    let gpu = loaded(kernels)?;
    let x = x.contiguous()?;
    let (_, s, h, d) = x.dims4()?;
    let xp = device_ptr(&x, KERNEL)?;
    let (cos, cp) = f32_table(KERNEL, cos)?;
    let (sin, sp) = f32_table(KERNEL, sin)?;
    let name = format!("stillmotion_rope_{}", suffix(KERNEL, x.dtype())?);
    let function = gpu.glue_function(&name)?;
    let (storage, yp) = empty_like_shape(&gpu.device, x.dtype(), x.shape())?;
    let pairs = x.elem_count() / 2;
    let (pairs64, s32, h32, half32) = (
        pairs as i64,
        int(KERNEL, s)?,
        int(KERNEL, h)?,
        int(KERNEL, d / 2)?,
    );
    let stream = gpu.device.cuda_stream();
    let mut launch = stream.launch_builder(&function);
    launch
        .arg(&xp)
        .arg(&cp)
        .arg(&sp)
        .arg(&yp)
        .arg(&pairs64)
        .arg(&s32)
        .arg(&h32)
        .arg(&half32);
    // SAFETY: matches the kernel's signature; a grid-stride loop covers every pair.
    unsafe { launch.launch(grid_1d(pairs, 256)) }?;
    drop((cos, sin));
    Ok(output_tensor(storage, x.shape().clone()))
}

/// `rope(rms_norm(x))` for x `[B, S, H, D]` (the norm over each token's H·D values), one block
/// a token.
pub(crate) fn rms_norm_rope(
    kernels: &Kernels,
    x: &Tensor,
    weight: &Tensor,
    eps: f32,
    (cos, sin): (&Tensor, &Tensor),
) -> Result<Tensor, KernelError> {
    const KERNEL: &str = "rms_norm_rope";
    let gpu = loaded(kernels)?;
    let x = x.contiguous()?;
    let (b, s, h, d) = x.dims4()?;
    let xp = device_ptr(&x, KERNEL)?;
    let (weight, wp) = f32_table(KERNEL, weight)?;
    let (cos, cp) = f32_table(KERNEL, cos)?;
    let (sin, sp) = f32_table(KERNEL, sin)?;
    let name = format!("stillmotion_rms_norm_rope_{}", suffix(KERNEL, x.dtype())?);
    let function = gpu.glue_function(&name)?;
    let (storage, yp) = empty_like_shape(&gpu.device, x.dtype(), x.shape())?;
    let (cols32, s32, half32) = (int(KERNEL, h * d)?, int(KERNEL, s)?, int(KERNEL, d / 2)?);
    let stream = gpu.device.cuda_stream();
    let mut launch = stream.launch_builder(&function);
    launch
        .arg(&xp)
        .arg(&wp)
        .arg(&cp)
        .arg(&sp)
        .arg(&yp)
        .arg(&cols32)
        .arg(&s32)
        .arg(&half32)
        .arg(&eps);
    let config = row_blocks(KERNEL, b * s)?;
    // SAFETY: matches the kernel's signature; one block per token row writes all its values;
    // the tables hold S·D/2 floats each.
    unsafe { launch.launch(config) }?;
    drop((weight, cos, sin));
    Ok(output_tensor(storage, x.shape().clone()))
}

/// Columns a thread of the fused residual + norm holds (`residual_norm`'s `kPerThread`).
pub(crate) const RESIDUAL_NORM_MAX_COLS: usize = ROW_THREADS as usize * 24;

/// `x + y·gate` and the layer norm (with its optional affine and modulation) of that, one block
/// a row; `y` and the norm's output share a dtype, `cols` ≤ [`RESIDUAL_NORM_MAX_COLS`], and
/// the gate and the modulation (when both are given) the same rows per entry.
pub(crate) fn residual_norm(
    kernels: &Kernels,
    x: &Tensor,
    y: &Tensor,
    gate: Option<&Tensor>,
    affine: Option<(&Tensor, &Tensor)>,
    modulation: Option<Modulation<'_>>,
    (rows_per_entry, eps): (usize, f32),
) -> Result<(Tensor, Tensor), KernelError> {
    const KERNEL: &str = "residual_norm";
    let gpu = loaded(kernels)?;
    let (x, y) = (x.contiguous()?, y.contiguous()?);
    let cols = x.dim(D::Minus1)?;
    let rows = x.elem_count() / cols.max(1);
    let (xp, yp) = (device_ptr(&x, KERNEL)?, device_ptr(&y, KERNEL)?);
    let (keep, [gp, wp, bp, sp, cp]) = optional_tables(
        KERNEL,
        [
            gate,
            affine.map(|a| a.0),
            affine.map(|a| a.1),
            modulation.map(|m| m.shift),
            modulation.map(|m| m.scale),
        ],
    )?;
    let tag = suffix(KERNEL, y.dtype())?;
    let function = gpu.glue_function(&format!("stillmotion_residual_norm_{tag}_{tag}"))?;
    let (x_storage, xo) = empty_like_shape(&gpu.device, DType::F32, x.shape())?;
    let (h_storage, ho) = empty_like_shape(&gpu.device, y.dtype(), x.shape())?;
    let (cols32, per32) = (int(KERNEL, cols)?, int(KERNEL, rows_per_entry.max(1))?);
    let stream = gpu.device.cuda_stream();
    let mut launch = stream.launch_builder(&function);
    launch
        .arg(&xp)
        .arg(&yp)
        .arg(&gp)
        .arg(&wp)
        .arg(&bp)
        .arg(&sp)
        .arg(&cp)
        .arg(&xo)
        .arg(&ho)
        .arg(&cols32)
        .arg(&per32)
        .arg(&eps);
    let config = row_blocks(KERNEL, rows)?;
    // SAFETY: matches the kernel's signature; null tables are allowed by it; the caller checked
    // cols ≤ RESIDUAL_NORM_MAX_COLS, so one block holds and writes a whole row of both outputs.
    unsafe { launch.launch(config) }?;
    drop(keep);
    Ok((
        output_tensor(x_storage, x.shape().clone()),
        output_tensor(h_storage, x.shape().clone()),
    ))
}

pub(crate) fn fp8_dequantize(
    kernels: &Kernels,
    weight: &Tensor,
    scale: f64,
    dtype: DType,
) -> Result<Tensor, KernelError> {
    const KERNEL: &str = "fp8_dequantize";
    let gpu = loaded(kernels)?;
    let weight = weight.contiguous()?;
    let n = weight.elem_count();
    let wp = {
        let (storage, layout) = weight.storage_and_layout();
        let candle_core::Storage::Cuda(cuda) = &*storage else {
            return Err(KernelError::BadInput {
                kernel: KERNEL,
                problem: "tensor is not on a CUDA device".to_owned(),
            });
        };
        let candle_core::cuda::CudaStorageSlice::F8E4M3(slice) = &cuda.slice else {
            return Err(KernelError::BadInput {
                kernel: KERNEL,
                problem: format!("needs float8 e4m3, got {:?}", weight.dtype()),
            });
        };
        let stream = gpu.device.cuda_stream();
        let offset = layout.start_offset() as u64;
        cudarc::driver::DevicePtr::device_ptr(slice, &stream).0 + offset
    };
    let name = format!("stillmotion_fp8_dequantize_{}", suffix(KERNEL, dtype)?);
    let function = gpu.glue_function(&name)?;
    let (storage, op) = empty_like_shape(&gpu.device, dtype, weight.shape())?;
    #[allow(
        clippy::cast_possible_truncation,
        reason = "the scale is a float32 in the file"
    )]
    let (scale32, n64) = (scale as f32, n as i64);
    let stream = gpu.device.cuda_stream();
    let mut launch = stream.launch_builder(&function);
    launch.arg(&wp).arg(&op).arg(&scale32).arg(&n64);
    // SAFETY: matches the kernel's signature; a grid-stride loop covers all n elements; the
    // weight stays alive (held by `weight`) while candle's stream runs the kernel.
    unsafe { launch.launch(grid_1d(n, 256)) }?;
    let shape = weight.shape().clone();
    drop(weight);
    Ok(output_tensor(storage, shape))
}

pub(crate) fn channel_rms_norm(
    kernels: &Kernels,
    x: &Tensor,
    gamma: &Tensor,
    scale: f64,
    silu: bool,
) -> Result<Tensor, KernelError> {
    const KERNEL: &str = "channel_rms_norm";
    let gpu = loaded(kernels)?;
    let x = x.contiguous()?;
    let (t, c, h, w) = x.dims4()?;
    let xp = device_ptr(&x, KERNEL)?;
    let (gamma, gp) = f32_table(KERNEL, &gamma.flatten_all()?)?;
    let name = format!("stillmotion_channel_norm_{}", suffix(KERNEL, x.dtype())?);
    let function = gpu.glue_function(&name)?;
    let (storage, yp) = empty_like_shape(&gpu.device, x.dtype(), x.shape())?;
    let pixels = t * h * w;
    #[allow(
        clippy::cast_possible_truncation,
        reason = "the scale is √channels, a few tens"
    )]
    let scale32 = scale as f32;
    let (pixels64, plane64) = (pixels as i64, (h * w) as i64);
    let (channels, silu32) = (int(KERNEL, c)?, i32::from(silu));
    let stream = gpu.device.cuda_stream();
    let mut launch = stream.launch_builder(&function);
    launch
        .arg(&xp)
        .arg(&gp)
        .arg(&yp)
        .arg(&pixels64)
        .arg(&channels)
        .arg(&plane64)
        .arg(&scale32)
        .arg(&silu32);
    // SAFETY: matches the kernel's signature; a grid-stride loop covers every pixel, each
    // thread touching its pixel's c values of the contiguous (t, c, h·w) input and output.
    unsafe { launch.launch(grid_1d(pixels, 256)) }?;
    drop((x, gamma));
    Ok(output_tensor(storage, Shape::from((t, c, h, w))))
}

/// `x` `(batch, rows, cols)` → `(batch, cols, rows)` contiguous, plus `bias` (`cols` values of
/// x's dtype) along the new rows: one tiled pass.
pub(crate) fn transpose_last2(
    kernels: &Kernels,
    x: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor, KernelError> {
    const KERNEL: &str = "transpose";
    const TILE: usize = 32;
    let gpu = loaded(kernels)?;
    let x = x.contiguous()?;
    let (batch, rows, cols) = x.dims3()?;
    let bias = bias.map(Tensor::contiguous).transpose()?;
    if let Some(bias) = &bias
        && (bias.elem_count() != cols || bias.dtype() != x.dtype())
    {
        return Err(KernelError::BadInput {
            kernel: KERNEL,
            problem: format!(
                "bias {:?} {:?} for {cols} columns",
                bias.dims(),
                bias.dtype()
            ),
        });
    }
    let xp = device_ptr(&x, KERNEL)?;
    let bp = bias
        .as_ref()
        .map(|b| device_ptr(b, KERNEL))
        .transpose()?
        .unwrap_or(0);
    let name = format!("stillmotion_transpose_{}", suffix(KERNEL, x.dtype())?);
    let function = gpu.glue_function(&name)?;
    let out_shape = Shape::from((batch, cols, rows));
    let (storage, yp) = empty_like_shape(&gpu.device, x.dtype(), &out_shape)?;
    let (rows32, cols32) = (int(KERNEL, rows)?, int(KERNEL, cols)?);
    let config = LaunchConfig {
        grid_dim: (
            int(KERNEL, cols.div_ceil(TILE).max(1))? as u32,
            int(KERNEL, rows.div_ceil(TILE).clamp(1, 65_535))? as u32,
            int(KERNEL, batch.clamp(1, 65_535))? as u32,
        ),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    };
    if batch > 65_535 {
        return Err(KernelError::BadInput {
            kernel: KERNEL,
            problem: format!("{batch} matrices: at most 65,535 a launch"),
        });
    }
    let stream = gpu.device.cuda_stream();
    let mut launch = stream.launch_builder(&function);
    launch.arg(&xp).arg(&yp).arg(&bp).arg(&rows32).arg(&cols32);
    // SAFETY: matches the kernel's signature; blocks cover every column tile, loop over row
    // tiles and take one matrix each along z; x, bias and the output are contiguous and alive
    // (held here) while candle's stream runs the kernel. A null bias pointer means none.
    unsafe { launch.launch(config) }?;
    drop((x, bias));
    Ok(output_tensor(storage, out_shape))
}
