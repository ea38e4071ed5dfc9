//! No echo: the positions of a link's remote log whose messages this replica already
//! holds because it pushed them ([`KnownRanges`]). The node answers each pushed batch
//! with the positions it gave what it applied; they are kept in memory and in the
//! ledger (`Links::save_known`, buffered: a lost save only costs a download), and every
//! pull page asks the node to leave the ones after the pull checkpoint out. The page's
//! cursor still reaches past them, so the checkpoint rules do not change.

use sync_ledger::Durability;
use sync_types::{KnownRanges, LinkKey, ProgressToken};

use crate::error::Result;

use super::{Connector, Engine, lock};

impl<C: Connector> Engine<C> {
    /// Runs `f` on the link's known ranges (loaded from the ledger on first use).
    fn with_known<T>(
        &self,
        key: &LinkKey,
        f: impl FnOnce(&mut Option<KnownRanges>) -> T,
    ) -> Result<T> {
        let mut all = lock(&self.inner.known);
        if !all.contains_key(key) {
            let stored = self.ledger().links().known(key)?;
            all.insert(key.clone(), stored);
        }
        Ok(f(all.get_mut(key).expect("inserted above")))
    }

    /// Records where the remote placed messages this replica pushed.
    pub(super) fn note_placed(&self, key: &LinkKey, placed: &KnownRanges) -> Result<()> {
        if placed.is_empty() {
            return Ok(());
        }
        // Saved outside the lock: two saves racing can only lose ranges, which costs
        // downloads, never messages.
        let save = self.with_known(key, |known| {
            match known {
                Some(k) => k.merge(placed),
                None => *known = Some(placed.clone()),
            }
            known.clone()
        })?;
        self.save_known(key, save)
    }

    /// The known ranges a pull from `checkpoint` asks the node to leave out: those
    /// after it, of the checkpoint's log (`None`: nothing to leave out).
    pub(crate) fn known_after(
        &self,
        key: &LinkKey,
        checkpoint: Option<ProgressToken>,
    ) -> Result<Option<KnownRanges>> {
        self.with_known(key, |known| {
            let k = known.as_ref()?;
            let k = match checkpoint {
                Some(t) if !k.same_log(&t) => return None,
                Some(t) => {
                    let mut k = k.clone();
                    k.forget_through(t.position);
                    k
                }
                None => k.clone(),
            };
            (!k.is_empty()).then_some(k)
        })
    }

    /// Forgets the known positions a pull checkpoint has passed.
    pub(super) fn forget_known_through(
        &self,
        key: &LinkKey,
        checkpoint: ProgressToken,
    ) -> Result<()> {
        let save = self.with_known(key, |known| {
            let k = known.as_mut()?;
            let before = k.clone();
            if k.same_log(&checkpoint) {
                k.forget_through(checkpoint.position);
            }
            (*k != before).then(|| k.clone())
        })?;
        self.save_known(key, save)
    }

    /// Saves `known` for `key` when there is something to save.
    fn save_known(&self, key: &LinkKey, known: Option<KnownRanges>) -> Result<()> {
        if let Some(k) = known {
            self.ledger()
                .links()
                .save_known(key, &k, Durability::Buffered)?;
        }
        Ok(())
    }
}
