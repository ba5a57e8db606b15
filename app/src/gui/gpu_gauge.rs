//! The GPU memory gauge beside the VRAM reserve: total, used by us, used by others. The driver
//! reports device-wide use only, so "others" is what was in use at the first reading (before
//! this app loaded anything) and "ours" is the growth since; both are estimates, said so in the
//! tooltip.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Sender, bounded};
use stillmotion_engine::gpu_memory::{GpuMemory, GpuMemoryReader};

use crate::ui::theme;

/// How often the helper thread reads the driver.
const READ_EVERY: Duration = Duration::from_secs(2);

/// What the gauge shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GaugeReading {
    /// No CUDA GPU (or no CUDA in this build): nothing to measure.
    NoGpu,
    /// The first reading has not arrived.
    Waiting,
    Reading {
        total_bytes: u64,
        ours_bytes: u64,
        others_bytes: u64,
    },
}

impl GaugeReading {
    /// Splits `now` into ours and others, given what was used at the first reading.
    #[must_use]
    pub fn from_memory(now: GpuMemory, used_at_start: u64) -> Self {
        let used = now.used_bytes();
        // Others may have freed memory since: then all of what is used may be someone's else.
        let others = used_at_start.min(used);
        Self::Reading {
            total_bytes: now.total_bytes,
            ours_bytes: used - others,
            others_bytes: others,
        }
    }
}

/// Reads GPU memory on a named helper thread while the app runs.
pub struct GpuGauge {
    latest: Arc<Mutex<GaugeReading>>,
    /// Dropping it (with the app) ends the helper thread.
    _stop: Option<Sender<()>>,
}

impl GpuGauge {
    /// Starts reading when `gpu_available`; otherwise the gauge says there is no GPU.
    #[must_use]
    pub fn start(ctx: &egui::Context, gpu_available: bool) -> Self {
        if !gpu_available {
            return Self {
                latest: Arc::new(Mutex::new(GaugeReading::NoGpu)),
                _stop: None,
            };
        }
        let latest = Arc::new(Mutex::new(GaugeReading::Waiting));
        let (stop, stopped) = bounded::<()>(0);
        let slot = latest.clone();
        let ctx = ctx.clone();
        let spawned = std::thread::Builder::new()
            .name("gpu-gauge".to_owned())
            .spawn(move || {
                let reader = GpuMemoryReader::open();
                let mut used_at_start = None;
                loop {
                    let reading = match reader.as_ref().and_then(GpuMemoryReader::read) {
                        Some(memory) => {
                            let start = *used_at_start.get_or_insert(memory.used_bytes());
                            GaugeReading::from_memory(memory, start)
                        }
                        None => GaugeReading::NoGpu,
                    };
                    if let Ok(mut slot) = slot.lock() {
                        *slot = reading;
                    }
                    ctx.request_repaint();
                    if reading == GaugeReading::NoGpu
                        || !matches!(
                            stopped.recv_timeout(READ_EVERY),
                            Err(crossbeam_channel::RecvTimeoutError::Timeout)
                        )
                    {
                        return;
                    }
                }
            });
        if let Err(error) = spawned {
            tracing::warn!("no GPU memory gauge: {error}");
        }
        Self {
            latest,
            _stop: Some(stop),
        }
    }

    #[must_use]
    pub fn reading(&self) -> GaugeReading {
        self.latest
            .lock()
            .map_or(GaugeReading::NoGpu, |reading| *reading)
    }
}

/// Draws the gauge: a bar of the device's memory (ours + others) and the reserve in words.
pub fn show(ui: &mut egui::Ui, reading: GaugeReading, reserve_gb: f64) {
    const GB: f64 = 1e9;
    match reading {
        GaugeReading::NoGpu => {
            ui.colored_label(theme::WEAK_TEXT, "No CUDA GPU: no memory gauge")
                .on_hover_text("The reserve only matters when rendering on a GPU");
        }
        GaugeReading::Waiting => {
            ui.colored_label(theme::WEAK_TEXT, "reading GPU memory…");
        }
        GaugeReading::Reading {
            total_bytes,
            ours_bytes,
            others_bytes,
        } => {
            #[allow(clippy::cast_precision_loss, reason = "sizes shown to one decimal")]
            let (total, ours, others) = (
                total_bytes as f64 / GB,
                ours_bytes as f64 / GB,
                others_bytes as f64 / GB,
            );
            #[allow(clippy::cast_possible_truncation, reason = "a fraction in 0..=1")]
            let fraction = ((ours + others) / total.max(f64::MIN_POSITIVE)) as f32;
            ui.add(egui::ProgressBar::new(fraction).text(format!(
                "GPU memory: ours {ours:.1} GB · others {others:.1} GB · total {total:.1} GB"
            )))
            .on_hover_text(format!(
                "The driver reports use for the whole GPU. \"Others\" is what was in use when \
                 the app started (the desktop, other programs); \"ours\" is the growth since. \
                 Renders plan to leave {reserve_gb:.1} GB free."
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_since_the_first_reading_is_ours() {
        let memory = GpuMemory {
            total_bytes: 24_000,
            free_bytes: 14_000,
        };
        assert_eq!(
            GaugeReading::from_memory(memory, 3_000),
            GaugeReading::Reading {
                total_bytes: 24_000,
                ours_bytes: 7_000,
                others_bytes: 3_000
            }
        );
        // Others freed memory since the start: what is in use is not counted as ours twice.
        assert_eq!(
            GaugeReading::from_memory(memory, 12_000),
            GaugeReading::Reading {
                total_bytes: 24_000,
                ours_bytes: 0,
                others_bytes: 10_000
            }
        );
    }
}
