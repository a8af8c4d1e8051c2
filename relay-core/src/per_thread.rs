//! [`PerThread`]: one value per thread for one owner.
//!
//! A pooled connection (HTTP or Redis) is driven by a task on the runtime that opened it.
//! A server running one single-threaded runtime per thread that shares such a pool sends
//! every call through another thread and back; a value per thread keeps the call on the
//! thread that makes it.

use std::any::Any;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::{Arc, Weak};

/// An owner (by a `Weak` of its marker) and its value on this thread. A live `Weak` keeps
/// its allocation, so an owner's address is never reused while it is listed.
type Slot = (Weak<()>, Box<dyn Any>);

thread_local! {
    /// Every owner's value on this thread.
    static SLOTS: RefCell<Vec<Slot>> = const { RefCell::new(Vec::new()) };
}

/// One `T` per thread, set on each thread by [`PerThread::set`]. Clones share the values;
/// a thread's value lives until the thread ends or a new one replaces it, and the values of
/// a dropped owner are dropped when that thread next sets one.
pub struct PerThread<T> {
    owner: Arc<()>,
    _value: PhantomData<fn() -> T>,
}

impl<T> Clone for PerThread<T> {
    fn clone(&self) -> Self {
        Self {
            owner: Arc::clone(&self.owner),
            _value: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for PerThread<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerThread").finish_non_exhaustive()
    }
}

impl<T> Default for PerThread<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> PerThread<T> {
    /// No value on any thread yet.
    pub fn new() -> Self {
        Self {
            owner: Arc::new(()),
            _value: PhantomData,
        }
    }
}

impl<T: 'static> PerThread<T> {
    /// `f` of this thread's value, if it has one.
    pub fn with<R>(&self, f: impl FnOnce(&T) -> R) -> Option<R> {
        let mine = Arc::as_ptr(&self.owner);
        SLOTS.with_borrow(|slots| {
            slots
                .iter()
                .find(|(owner, _)| std::ptr::eq(owner.as_ptr(), mine))
                .and_then(|(_, value)| value.downcast_ref::<T>())
                .map(f)
        })
    }

    /// `f` of this thread's value, made by `make` first if it has none. (`make` and `f` run
    /// while this thread's list is borrowed: they must not use a `PerThread` themselves.)
    pub fn with_or_insert<R>(&self, make: impl FnOnce() -> T, f: impl FnOnce(&T) -> R) -> R {
        let mine = Arc::as_ptr(&self.owner);
        SLOTS.with_borrow_mut(|slots| {
            let found = slots.iter().find_map(|(owner, value)| {
                std::ptr::eq(owner.as_ptr(), mine)
                    .then(|| value.downcast_ref::<T>())
                    .flatten()
            });
            if let Some(value) = found {
                return f(value);
            }
            let value = make();
            let result = f(&value);
            slots.retain(|(owner, _)| {
                owner.strong_count() > 0 && !std::ptr::eq(owner.as_ptr(), mine)
            });
            slots.push((Arc::downgrade(&self.owner), Box::new(value)));
            result
        })
    }

    /// Set (or replace) this thread's value.
    pub fn set(&self, value: T) {
        let mine = Arc::as_ptr(&self.owner);
        SLOTS.with_borrow_mut(|slots| {
            slots.retain(|(owner, _)| {
                owner.strong_count() > 0 && !std::ptr::eq(owner.as_ptr(), mine)
            });
            slots.push((Arc::downgrade(&self.owner), Box::new(value)));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_thread_and_each_owner_has_its_own_value() {
        let a: PerThread<u32> = PerThread::new();
        let b: PerThread<u32> = PerThread::new();
        assert_eq!(a.with(|v| *v), None);
        a.set(1);
        b.set(2);
        a.clone().set(3);
        assert_eq!(a.with(|v| *v), Some(3), "clones share, a set replaces");
        assert_eq!(b.with(|v| *v), Some(2));
        let other = a.clone();
        std::thread::spawn(move || {
            assert_eq!(other.with(|v| *v), None, "another thread starts empty");
            other.set(4);
            assert_eq!(other.with(|v| *v), Some(4));
        })
        .join()
        .unwrap();
        assert_eq!(a.with(|v| *v), Some(3));
    }

    #[test]
    fn with_or_insert_makes_a_value_once_per_thread() {
        let p: PerThread<u32> = PerThread::new();
        let mut made = 0;
        for _ in 0..3 {
            let v = p.with_or_insert(
                || {
                    made += 1;
                    7
                },
                |v| *v,
            );
            assert_eq!(v, 7);
        }
        assert_eq!(made, 1);
        let q = p.clone();
        let on_other = std::thread::spawn(move || q.with_or_insert(|| 8, |v| *v))
            .join()
            .unwrap();
        assert_eq!(on_other, 8);
        assert_eq!(p.with(|v| *v), Some(7));
    }

    #[test]
    fn a_dropped_owners_values_go_when_the_thread_next_sets_one() {
        let value = Arc::new(());
        let gone: PerThread<Arc<()>> = PerThread::new();
        gone.set(Arc::clone(&value));
        drop(gone);
        assert_eq!(Arc::strong_count(&value), 2, "still listed");
        PerThread::<u8>::new().set(0);
        assert_eq!(
            Arc::strong_count(&value),
            1,
            "dropped with its owner's entry"
        );
    }
}
