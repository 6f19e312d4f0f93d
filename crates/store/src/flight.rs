//! Single flight and failure hold-off ([`Flights`]): concurrent lookups of one span share one load, and
//! a span whose load failed keeps failing at once, with the same error, for [`crate::failure_holdoff`].
//! Errors are shared as `Arc<StoreError>`, so every reader keeps the typed error.

use clip_format::{LayerIndex, SpanId};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use crate::{lock, Clock, SpanBytes, StoreError};

/// One load shared by everyone asking for its span meanwhile.
type Flight = Arc<OnceCell<Result<SpanBytes, Arc<StoreError>>>>;

/// The loads in flight and the recent failures, by span index.
pub(crate) struct Flights {
    inflight: Mutex<HashMap<SpanId, Flight>>,
    /// Spans whose last load failed: when, and the error.
    failures: Mutex<HashMap<SpanId, (Instant, Arc<StoreError>)>>,
    clock: Arc<dyn Clock>,
    holdoff: Duration,
}

impl Flights {
    /// No loads, no failures; a failure is held for `holdoff` as `clock` measures it.
    pub fn new(clock: Arc<dyn Clock>, holdoff: Duration) -> Flights {
        Flights { inflight: Mutex::default(), failures: Mutex::default(), clock, holdoff }
    }

    /// The error of span `index`'s last load, if it failed less than the hold-off ago, as
    /// [`StoreError::Joined`].
    pub fn recent_failure(&self, layer: LayerIndex, index: SpanId) -> Option<StoreError> {
        let mut failures = lock(&self.failures);
        let (at, error) = failures.get(&index)?;
        if self.clock.now().duration_since(*at) < self.holdoff {
            return Some(StoreError::Joined { layer, span: index, source: Arc::clone(error) });
        }
        failures.remove(&index);
        None
    }

    /// How many spans failed less than the hold-off ago (their lookups fail at once).
    pub fn failing(&self) -> usize {
        let now = self.clock.now();
        lock(&self.failures).values().filter(|(at, _)| now.duration_since(*at) < self.holdoff).count()
    }

    /// Runs `load` for span `index` of `layer`, or waits for the load of it already in flight. The reader
    /// whose `load` ran gets its error as [`StoreError::Shared`]; readers who joined get
    /// [`StoreError::Joined`] around the same error, and so does every lookup during the hold-off.
    pub async fn run(
        &self,
        layer: LayerIndex,
        index: SpanId,
        load: impl Future<Output = Result<SpanBytes, StoreError>>,
    ) -> Result<SpanBytes, StoreError> {
        let flight = {
            let mut inflight = lock(&self.inflight);
            let flight = inflight.entry(index).or_default();
            // A flight is retired by whoever finishes it. Should a failed one ever linger, its error must
            // not stick to the span: start afresh.
            if flight.get().is_some_and(|result| result.is_err()) {
                *flight = Flight::default();
            }
            flight.clone()
        };
        let mut ran = false;
        let shared = flight
            .get_or_init(|| async {
                ran = true;
                load.await.map_err(Arc::new)
            })
            .await;
        let result = match shared {
            Ok(bytes) => Ok(bytes.clone()),
            Err(error) if ran => Err(StoreError::Shared(Arc::clone(error))),
            Err(error) => Err(StoreError::Joined { layer, span: index, source: Arc::clone(error) }),
        };
        // The first finisher retires the flight; later arrivals find the bytes in memory or on disk, or
        // try again after an error (and the hold-off).
        let mut inflight = lock(&self.inflight);
        if inflight.get(&index).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
            inflight.remove(&index);
            let mut failures = lock(&self.failures);
            match shared {
                Ok(_) => drop(failures.remove(&index)),
                Err(error) => {
                    let now = self.clock.now();
                    failures.retain(|_, (at, _)| now.duration_since(*at) < self.holdoff);
                    failures.insert(index, (now, Arc::clone(error)));
                }
            }
        }
        result
    }
}
