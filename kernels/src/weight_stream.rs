//! Weights streamed from host memory into a few device slots: block swapping for a model whose
//! transformer blocks do not all fit the GPU.
//!
//! Every streamed group (one transformer block's tensors) has the same shapes and dtypes, so
//! the device holds a fixed number of *slots*, each one group of tensors allocated once. A
//! group's host copy is staged once, in page-locked memory on CUDA; [`WeightStream::upload`]
//! copies it into a slot on a copy stream of its own, so the next block's weights travel over
//! PCIe while the current block computes. Two events per slot order the streams without
//! blocking the host:
//! - `ready`: recorded on the copy stream after an upload; the compute stream waits on it in
//!   [`WeightStream::acquire`] before the block's kernels are queued;
//! - `released`: recorded on the compute stream in [`WeightStream::release`], after the
//!   block's kernels are queued; the next upload into that slot waits on it.
//!
//! On the CPU the same calls run synchronously: an upload copies the host tensors into the
//! slot's tensors in place, so the bookkeeping (which group sits in which slot) is exercised by
//! the CPU tests exactly as on the GPU.

use candle_core::{DType, Device, Shape, Tensor};

use crate::{KernelError, Kernels};

const KERNEL: &str = "weight_stream";

/// A group's host copy.
pub struct HostGroup {
    data: HostData,
    bytes: usize,
}

enum HostData {
    Cpu(Vec<Tensor>),
    #[cfg(feature = "cuda")]
    Pinned(crate::gpu::stream::PinnedGroup),
}

impl HostGroup {
    /// Bytes of weights this copy holds.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The device slots and the copy machinery of one streamed model.
pub struct WeightStream {
    /// First, so it drops first: dropping it waits for queued copies into the slots.
    #[cfg(feature = "cuda")]
    cuda: Option<crate::gpu::stream::CopyStream>,
    layout: Vec<(Shape, DType)>,
    slots: Vec<Vec<Tensor>>,
}

impl std::fmt::Debug for WeightStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "WeightStream({} slots of {} tensors, {} bytes each)",
            self.slots.len(),
            self.layout.len(),
            self.slot_bytes()
        )
    }
}

fn group_bytes(layout: &[(Shape, DType)]) -> usize {
    layout
        .iter()
        .map(|(shape, dtype)| shape.elem_count() * dtype.size_in_bytes())
        .sum()
}

impl WeightStream {
    /// `slots` groups of device tensors on `device`, shaped like `template` (one group's
    /// tensors, in the order every later call passes them).
    pub fn new(
        kernels: &Kernels,
        device: &Device,
        template: &[Tensor],
        slots: usize,
    ) -> Result<Self, KernelError> {
        if slots == 0 {
            return Err(KernelError::BadInput {
                kernel: KERNEL,
                problem: "needs at least one slot".to_owned(),
            });
        }
        let layout: Vec<(Shape, DType)> = template
            .iter()
            .map(|t| (t.shape().clone(), t.dtype()))
            .collect();
        let slots = (0..slots)
            .map(|_| {
                layout
                    .iter()
                    .map(|(shape, dtype)| Tensor::zeros(shape, *dtype, device))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        #[cfg(feature = "cuda")]
        let cuda = match device {
            Device::Cuda(_) => Some(crate::gpu::stream::CopyStream::new(
                crate::gpu::loaded(kernels)?,
                &slots,
            )?),
            _ => None,
        };
        let _ = kernels;
        Ok(Self {
            #[cfg(feature = "cuda")]
            cuda,
            layout,
            slots,
        })
    }

    /// The number of slots.
    #[must_use]
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// The device tensors of slot `slot`, in template order. Layers built on them read
    /// whatever group was last uploaded there.
    pub fn slot(&self, slot: usize) -> Result<&[Tensor], KernelError> {
        self.slots
            .get(slot)
            .map(Vec::as_slice)
            .ok_or_else(|| out_of_range(slot, self.slots.len()))
    }

    /// Device bytes of one slot.
    #[must_use]
    pub fn slot_bytes(&self) -> usize {
        group_bytes(&self.layout)
    }

    /// The host copy of one group, `tensors` in template order (CPU tensors or tensors on any
    /// device; they are copied, not kept, on CUDA).
    pub fn stage(&self, tensors: &[Tensor]) -> Result<HostGroup, KernelError> {
        self.check_layout(tensors)?;
        let bytes = group_bytes(&self.layout);
        #[cfg(feature = "cuda")]
        if let Some(cuda) = &self.cuda {
            return Ok(HostGroup {
                data: HostData::Pinned(cuda.stage(tensors, bytes)?),
                bytes,
            });
        }
        let copies = tensors
            .iter()
            .map(|t| t.to_device(&Device::Cpu)?.contiguous())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HostGroup {
            data: HostData::Cpu(copies),
            bytes,
        })
    }

    /// Queues the copy of `group` into `slot`, after the last block that read the slot.
    pub fn upload(&self, slot: usize, group: &HostGroup) -> Result<(), KernelError> {
        let targets = self.slot(slot)?;
        match &group.data {
            HostData::Cpu(tensors) => {
                for (target, source) in targets.iter().zip(tensors) {
                    let source = source.to_device(target.device())?;
                    target
                        .flatten_all()?
                        .slice_set(&source.flatten_all()?, 0, 0)?;
                }
                Ok(())
            }
            #[cfg(feature = "cuda")]
            HostData::Pinned(pinned) => match &self.cuda {
                Some(cuda) => cuda.upload(slot, pinned),
                None => Err(KernelError::BadInput {
                    kernel: KERNEL,
                    problem: "a pinned group can only go to a CUDA slot".to_owned(),
                }),
            },
        }
    }

    /// Makes the compute stream wait for the last upload into `slot`.
    pub fn acquire(&self, slot: usize) -> Result<(), KernelError> {
        self.slot(slot)?;
        #[cfg(feature = "cuda")]
        if let Some(cuda) = &self.cuda {
            cuda.acquire(slot)?;
        }
        Ok(())
    }

    /// Marks `slot` free for the next upload once the kernels queued so far have run.
    pub fn release(&self, slot: usize) -> Result<(), KernelError> {
        self.slot(slot)?;
        #[cfg(feature = "cuda")]
        if let Some(cuda) = &self.cuda {
            cuda.release(slot)?;
        }
        Ok(())
    }

    fn check_layout(&self, tensors: &[Tensor]) -> Result<(), KernelError> {
        let matches = tensors.len() == self.layout.len()
            && tensors
                .iter()
                .zip(&self.layout)
                .all(|(t, (shape, dtype))| t.shape() == shape && t.dtype() == *dtype);
        if matches {
            return Ok(());
        }
        let describe = |items: Vec<String>| items.join(", ");
        Err(KernelError::BadInput {
            kernel: KERNEL,
            problem: format!(
                "a streamed group must have the slots' tensors [{}], got [{}]",
                describe(
                    self.layout
                        .iter()
                        .map(|(s, d)| format!("{d:?}{:?}", s.dims()))
                        .collect()
                ),
                describe(
                    tensors
                        .iter()
                        .map(|t| format!("{:?}{:?}", t.dtype(), t.dims()))
                        .collect()
                )
            ),
        })
    }
}

fn out_of_range(slot: usize, count: usize) -> KernelError {
    KernelError::BadInput {
        kernel: KERNEL,
        problem: format!("slot {slot} does not exist ({count} slots)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(seed: f32) -> Vec<Tensor> {
        let dev = Device::Cpu;
        let a: Vec<f32> = (0..6).map(|i| seed + i as f32).collect();
        vec![
            Tensor::from_vec(a, (2, 3), &dev).unwrap(),
            Tensor::new(&[seed * 0.5, -seed], &dev)
                .unwrap()
                .to_dtype(DType::F8E4M3)
                .unwrap(),
            Tensor::new(&[seed], &dev)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap(),
        ]
    }

    fn values(tensors: &[Tensor]) -> Vec<f32> {
        tensors
            .iter()
            .flat_map(|t| {
                t.to_dtype(DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn uploads_land_in_their_slot_and_leave_the_others() {
        let kernels = Kernels::cpu();
        let stream = WeightStream::new(&kernels, &Device::Cpu, &group(0.0), 2).unwrap();
        assert_eq!(stream.slot_bytes(), 6 * 4 + 2 + 2);
        let staged: Vec<HostGroup> = [1.0, 2.0, 4.0]
            .iter()
            .map(|&s| stream.stage(&group(s)).unwrap())
            .collect();
        // Tensors taken from a slot before an upload see the upload (layers hold them).
        let held = stream.slot(1).unwrap().to_vec();
        stream.upload(0, &staged[0]).unwrap();
        stream.upload(1, &staged[1]).unwrap();
        stream.acquire(0).unwrap();
        assert_eq!(values(stream.slot(0).unwrap()), values(&group(1.0)));
        stream.release(0).unwrap();
        stream.upload(0, &staged[2]).unwrap();
        assert_eq!(values(stream.slot(0).unwrap()), values(&group(4.0)));
        assert_eq!(values(&held), values(&group(2.0)));
        assert!(stream.upload(2, &staged[0]).is_err());
    }

    #[test]
    fn a_group_of_another_layout_is_refused() {
        let kernels = Kernels::cpu();
        let stream = WeightStream::new(&kernels, &Device::Cpu, &group(0.0), 1).unwrap();
        let mut other = group(1.0);
        other[2] = other[2].to_dtype(DType::F32).unwrap();
        let error = stream.stage(&other).err().unwrap().to_string();
        assert!(
            error.contains("BF16[1]") && error.contains("F32[1]"),
            "{error}"
        );
        assert!(stream.stage(&group(1.0)[..2]).is_err());
        assert!(WeightStream::new(&kernels, &Device::Cpu, &group(0.0), 0).is_err());
    }
}
