//! Price overrides set while the server runs (admin API), shared by every clone of a
//! [`PriceBook`](super::PriceBook).
//!
//! The table is swapped whole on each change (copy on write); reading it is one atomic
//! load, and a book without live overrides skips the lookup after that load.

use foldhash::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::{ModelPrice, PriceError};

type Table = HashMap<String, Arc<ModelPrice>>;

/// The live overrides: model name -> price, ahead of everything else in the book.
#[derive(Debug, Clone, Default)]
pub struct LiveOverrides(Arc<ArcSwap<Table>>);

impl LiveOverrides {
    /// Set (or replace) the price of `model`. Negative prices are refused and nothing
    /// changes.
    pub fn set(&self, model: &str, price: ModelPrice) -> Result<(), PriceError> {
        price.check(model)?;
        let price = Arc::new(price);
        self.0.rcu(|t| {
            let mut t = Table::clone(t);
            t.insert(model.to_owned(), Arc::clone(&price));
            t
        });
        Ok(())
    }

    /// Remove the override of `model`; `false` when there was none.
    pub fn clear(&self, model: &str) -> bool {
        let mut found = false;
        self.0.rcu(|t| {
            let mut t = Table::clone(t);
            found = t.remove(model).is_some();
            t
        });
        found
    }

    /// Replace every override at once (loading the persisted ones at start-up).
    pub fn replace_all(&self, prices: Vec<(String, ModelPrice)>) -> Result<(), PriceError> {
        let mut t = Table::default();
        for (model, price) in prices {
            price.check(&model)?;
            t.insert(model, Arc::new(price));
        }
        self.0.store(Arc::new(t));
        Ok(())
    }

    /// The override of exactly `model`.
    pub fn get(&self, model: &str) -> Option<Arc<ModelPrice>> {
        self.0.load().get(model).cloned()
    }

    /// Every override, by model name.
    pub fn list(&self) -> Vec<(String, Arc<ModelPrice>)> {
        let mut all: Vec<_> = self
            .0
            .load()
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The table as it is now (one atomic load).
    pub(super) fn load(&self) -> arc_swap::Guard<Arc<Table>> {
        self.0.load()
    }
}
