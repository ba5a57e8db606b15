//! The CUDA side of [`crate::weight_stream`]: page-locked host copies, a copy stream and the
//! two events per slot that order it with candle's compute stream.

use std::sync::Arc;

use candle_core::cuda::CudaStorageSlice;
use candle_core::{Device, Storage, Tensor};
use cudarc::driver::{CudaEvent, CudaStream, DevicePtr, PinnedHostSlice, result};

use super::GpuKernels;
use crate::KernelError;

const KERNEL: &str = "weight_stream";

/// One group's bytes in page-locked host memory, tensor after tensor in template order.
pub(crate) struct PinnedGroup {
    bytes: PinnedHostSlice<u8>,
    /// Byte range of each tensor in `bytes`.
    ranges: Vec<(usize, usize)>,
}

/// A slot's device addresses and its events.
struct SlotState {
    /// Device address and byte length of each tensor of the slot.
    targets: Vec<(u64, usize)>,
    ready: CudaEvent,
    released: CudaEvent,
}

pub(crate) struct CopyStream {
    compute: Arc<CudaStream>,
    copy: Arc<CudaStream>,
    slots: Vec<SlotState>,
}

/// Copies a tensor's raw bytes (from the host; a device tensor is brought there first) into
/// `dst`, which is exactly their size.
fn copy_raw_bytes(tensor: &Tensor, dst: &mut [u8]) -> Result<(), KernelError> {
    let tensor = tensor.to_device(&Device::Cpu)?.contiguous()?;
    let (storage, layout) = tensor.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(bad("staging needs a CPU tensor"));
    };
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| bad("staging needs a contiguous tensor"))?;
    let element = tensor.dtype().size_in_bytes();
    let raw: &[u8] = match cpu {
        candle_core::CpuStorage::U8(v) => bytes_of(v),
        candle_core::CpuStorage::U32(v) => bytes_of(v),
        candle_core::CpuStorage::BF16(v) => bytes_of(v),
        candle_core::CpuStorage::F16(v) => bytes_of(v),
        candle_core::CpuStorage::F32(v) => bytes_of(v),
        candle_core::CpuStorage::F8E4M3(v) => bytes_of(v),
        _ => {
            return Err(bad(&format!(
                "dtype {:?} cannot be streamed",
                tensor.dtype()
            )));
        }
    };
    let raw = &raw[start * element..end * element];
    if raw.len() != dst.len() {
        return Err(bad(
            "a tensor's bytes do not fit its place in the pinned group",
        ));
    }
    dst.copy_from_slice(raw);
    Ok(())
}

fn bytes_of<T: Copy>(values: &[T]) -> &[u8] {
    // SAFETY: candle's CPU element types are plain numbers without padding; the slice covers
    // exactly the values' memory and lives as long as `values`.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), size_of_val(values)) }
}

/// The device address of a contiguous CUDA tensor of any streamable dtype.
fn device_address(tensor: &Tensor, stream: &Arc<CudaStream>) -> Result<u64, KernelError> {
    let (storage, layout) = tensor.storage_and_layout();
    let Storage::Cuda(cuda) = &*storage else {
        return Err(bad("slot tensors must be on the CUDA device"));
    };
    let (start, _) = layout
        .contiguous_offsets()
        .ok_or_else(|| bad("slot tensors must be contiguous"))?;
    let base = match &cuda.slice {
        CudaStorageSlice::U8(s) => s.device_ptr(stream).0,
        CudaStorageSlice::U32(s) => s.device_ptr(stream).0,
        CudaStorageSlice::BF16(s) => s.device_ptr(stream).0,
        CudaStorageSlice::F16(s) => s.device_ptr(stream).0,
        CudaStorageSlice::F32(s) => s.device_ptr(stream).0,
        CudaStorageSlice::F8E4M3(s) => s.device_ptr(stream).0,
        _ => {
            return Err(bad(&format!(
                "dtype {:?} cannot be streamed",
                tensor.dtype()
            )));
        }
    };
    Ok(base + (start * tensor.dtype().size_in_bytes()) as u64)
}

fn bad(problem: &str) -> KernelError {
    KernelError::BadInput {
        kernel: KERNEL,
        problem: problem.to_owned(),
    }
}

impl CopyStream {
    /// A copy stream beside `gpu`'s compute stream, for `slots` allocated on the compute stream.
    pub(crate) fn new(gpu: &GpuKernels, slots: &[Vec<Tensor>]) -> Result<Self, KernelError> {
        let compute = gpu.device.cuda_stream();
        let context = compute.context();
        let copy = context.new_stream()?;
        let slots = slots
            .iter()
            .map(|tensors| {
                let targets = tensors
                    .iter()
                    .map(|t| {
                        let bytes = t.elem_count() * t.dtype().size_in_bytes();
                        device_address(t, &compute).map(|address| (address, bytes))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let released = context.new_event(None)?;
                // The slot's memory was allocated and zeroed on the compute stream: the first
                // upload waits for that.
                released.record(&compute)?;
                Ok(SlotState {
                    targets,
                    ready: context.new_event(None)?,
                    released,
                })
            })
            .collect::<Result<Vec<_>, KernelError>>()?;
        Ok(Self {
            compute,
            copy,
            slots,
        })
    }

    pub(crate) fn stage(
        &self,
        tensors: &[Tensor],
        total: usize,
    ) -> Result<PinnedGroup, KernelError> {
        let context = self.compute.context();
        // SAFETY: every byte is written below before any copy reads it.
        let mut bytes = unsafe { context.alloc_pinned::<u8>(total.max(1)) }?;
        let host = bytes.as_mut_slice()?;
        let mut ranges = Vec::with_capacity(tensors.len());
        let mut offset = 0;
        for tensor in tensors {
            let len = tensor.elem_count() * tensor.dtype().size_in_bytes();
            let place = host
                .get_mut(offset..offset + len)
                .ok_or_else(|| bad("the group is larger than its pinned allocation"))?;
            copy_raw_bytes(tensor, place)?;
            ranges.push((offset, len));
            offset += len;
        }
        Ok(PinnedGroup { bytes, ranges })
    }

    fn slot(&self, slot: usize) -> Result<&SlotState, KernelError> {
        self.slots
            .get(slot)
            .ok_or_else(|| bad(&format!("slot {slot} does not exist")))
    }

    pub(crate) fn upload(&self, slot: usize, group: &PinnedGroup) -> Result<(), KernelError> {
        let state = self.slot(slot)?;
        if group.ranges.len() != state.targets.len() {
            return Err(bad("the group does not match the slot"));
        }
        self.copy.wait(&state.released)?;
        let base = group.bytes.as_ptr()?;
        for (&(offset, len), &(address, capacity)) in group.ranges.iter().zip(&state.targets) {
            if len != capacity || offset + len > group.bytes.len() {
                return Err(bad("the group does not match the slot"));
            }
            // SAFETY: the source range lies inside the pinned allocation, which the model keeps
            // alive as long as its slots; the destination is the slot tensor's own memory,
            // `capacity` bytes, owned by the stream's slots and not freed while copies run
            // (dropping the stream synchronises, see `Drop`). The `released` event orders this
            // copy after every kernel that read the slot.
            unsafe {
                let source = std::slice::from_raw_parts(base.add(offset), len);
                result::memcpy_htod_async(address, source, self.copy.cu_stream())?;
            }
        }
        state.ready.record(&self.copy)?;
        Ok(())
    }

    pub(crate) fn acquire(&self, slot: usize) -> Result<(), KernelError> {
        self.compute.wait(&self.slot(slot)?.ready)?;
        Ok(())
    }

    pub(crate) fn release(&self, slot: usize) -> Result<(), KernelError> {
        self.slot(slot)?.released.record(&self.compute)?;
        Ok(())
    }
}

impl Drop for CopyStream {
    fn drop(&mut self) {
        // Copies still queued write into the slots and read the pinned groups: let them finish
        // before either is freed.
        if let Err(error) = self.copy.synchronize() {
            tracing::warn!(%error, "waiting for weight copies before freeing them");
        }
    }
}
