//! A cancellation flag shared between whoever may cancel a job and the job itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::EngineError;

/// Cheap to clone; all clones see the same flag.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the job to stop at its next check.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    #[must_use]
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// `Err(Cancelled)` once cancelled: use with `?` at every step boundary.
    /// The flag itself, for APIs that poll an `AtomicBool` (the video writer).
    #[must_use]
    pub fn flag(&self) -> &AtomicBool {
        &self.0
    }

    pub fn check(&self) -> Result<(), EngineError> {
        if self.is_cancelled() {
            Err(EngineError::Cancelled)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_flag() {
        let token = CancelToken::new();
        let seen_by_job = token.clone();
        assert!(seen_by_job.check().is_ok());
        token.cancel();
        assert!(matches!(seen_by_job.check(), Err(EngineError::Cancelled)));
    }
}
