//! Where a decode's time goes, by kind of layer, for the benchmark. Each timed part waits for
//! the device before and after, which serialises the decode a little: the parts compare with
//! each other, and their sum is close to, not equal to, the untimed decode.

use std::time::{Duration, Instant};

use candle_core::{Device, Result};

/// Total time and calls per kind of layer, in the order each kind was first seen.
#[derive(Clone, Debug, Default)]
pub struct StageTimes {
    entries: Vec<(&'static str, Duration, usize)>,
}

impl StageTimes {
    fn add(&mut self, label: &'static str, elapsed: Duration) {
        match self.entries.iter_mut().find(|(l, ..)| *l == label) {
            Some((_, total, calls)) => {
                *total += elapsed;
                *calls += 1;
            }
            None => self.entries.push((label, elapsed, 1)),
        }
    }

    /// `(kind, total time, calls)`.
    pub fn entries(&self) -> &[(&'static str, Duration, usize)] {
        &self.entries
    }
}

/// Runs `f`, adding its time to `times` under `label` when there is a `times` to add to.
pub fn timed<T>(
    times: Option<&mut StageTimes>,
    label: &'static str,
    device: &Device,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let Some(times) = times else {
        return f();
    };
    device.synchronize()?;
    let start = Instant::now();
    let out = f()?;
    device.synchronize()?;
    times.add(label, start.elapsed());
    Ok(out)
}
