//! Where interpolation's time goes: a lap clock over the stages of
//! [`interpolate_stream`](super::interpolate_stream), for the bench.
//!
//! candle's CUDA work is queued, not done, when an op returns, so each lap first waits for the
//! device: a stage is charged for the work it queued, not for the work before it. That wait
//! also stops the CPU from running ahead of the GPU, so a clocked run is slower than a plain
//! one; its stages add up to its own wall time, not to the plain run's.

use std::time::{Duration, Instant};

use candle_core::Device;

use crate::EngineError;

/// A stage of interpolating a clip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RifeStage {
    /// Pulling input frames from the caller's iterator (decoding, in the interpolate job).
    Read,
    /// Scene-cut signatures and the decisions.
    SceneCuts,
    /// Frames to the device, to the network's dtype and padded.
    Upload,
    /// The Head's per-frame features.
    Head,
    /// The IFBlocks.
    Network,
    /// The backward warps between blocks and the final blend, cropped back to the frame.
    WarpMerge,
    /// Output frames to 8 bits and back to the host.
    Download,
    /// Handing frames to the caller (the writer, in the jobs) and reporting progress.
    Write,
}

impl RifeStage {
    pub const ALL: [Self; 8] = [
        Self::Read,
        Self::SceneCuts,
        Self::Upload,
        Self::Head,
        Self::Network,
        Self::WarpMerge,
        Self::Download,
        Self::Write,
    ];

    /// A short snake-case name, for tables and result lines.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::SceneCuts => "scene_cuts",
            Self::Upload => "upload",
            Self::Head => "head",
            Self::Network => "network",
            Self::WarpMerge => "warp_merge",
            Self::Download => "download",
            Self::Write => "write",
        }
    }
}

/// Wall time by [`RifeStage`]: each [`StageClock::lap`] charges the time since the previous
/// lap (or since the clock started) to one stage.
#[derive(Debug)]
pub struct StageClock {
    device: Device,
    last: Instant,
    totals: [Duration; RifeStage::ALL.len()],
}

impl StageClock {
    /// A clock for work on `device`, started now.
    #[must_use]
    pub fn new(device: &Device) -> Self {
        Self {
            device: device.clone(),
            last: Instant::now(),
            totals: [Duration::ZERO; RifeStage::ALL.len()],
        }
    }

    /// Waits for the device's queued work, then charges the time since the previous lap to
    /// `stage`.
    pub fn lap(&mut self, stage: RifeStage) -> Result<(), EngineError> {
        self.device.synchronize()?;
        let now = Instant::now();
        self.totals[stage as usize] += now - self.last;
        self.last = now;
        Ok(())
    }

    /// The time charged to `stage` so far.
    #[must_use]
    pub fn total(&self, stage: RifeStage) -> Duration {
        self.totals[stage as usize]
    }

    /// All stages' times added up: the wall time from the start to the last lap.
    #[must_use]
    pub fn sum(&self) -> Duration {
        self.totals.iter().sum()
    }
}

/// Laps `clock` if there is one: the engine's calls pass `None` outside the bench.
pub(crate) fn lap(
    clock: &mut Option<&mut StageClock>,
    stage: RifeStage,
) -> Result<(), EngineError> {
    match clock {
        Some(clock) => clock.lap(stage),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn laps_charge_the_time_since_the_previous_lap() {
        let mut clock = StageClock::new(&Device::Cpu);
        std::thread::sleep(Duration::from_millis(5));
        clock.lap(RifeStage::Head).unwrap();
        clock.lap(RifeStage::Write).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        clock.lap(RifeStage::Head).unwrap();
        assert!(clock.total(RifeStage::Head) >= Duration::from_millis(7));
        assert!(clock.total(RifeStage::Write) < Duration::from_millis(5));
        assert_eq!(clock.total(RifeStage::Network), Duration::ZERO);
        assert_eq!(
            clock.sum(),
            RifeStage::ALL
                .iter()
                .map(|&s| clock.total(s))
                .sum::<Duration>()
        );
    }
}
