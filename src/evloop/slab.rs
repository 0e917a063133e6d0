//! A slab: values at stable indices, O(1) insert and remove, and a generation per index so a
//! key kept after its entry was freed (a timer, a late event, an owner index) finds nothing
//! instead of the index's next occupant.
//!
//! A [`Key`] is also a mio token ([`Key::token`], [`Key::from_token`]): the generation rides
//! in the token's upper half, so an event for a socket already closed is recognised as stale
//! even when its index was reused. An entry can be taken out while it runs ([`Slab::take`])
//! and put back ([`Slab::put`]): its index stays reserved meanwhile, so the running value can
//! borrow the rest of the slab mutably.

use mio::Token;

// Tokens carry the generation in their upper 32 bits.
const _: () = assert!(usize::BITS >= 64);

/// Generations wrap below 2^31, so no token ever reaches `usize::MAX` (which mio reserves on
/// some platforms).
const GEN_MASK: u32 = 0x7fff_ffff;

/// Where an entry lives: its index and the generation of that index when it was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    index: u32,
    generation: u32,
}

impl Key {
    /// The entry's index (stable for the entry's life; reused after it is removed).
    pub fn index(self) -> usize {
        self.index as usize
    }

    /// The generation the key was issued with.
    pub fn generation(self) -> u32 {
        self.generation
    }

    /// The mio token for this key, with the loop's reserved tokens `0..base` kept out.
    pub fn token(self, base: usize) -> Token {
        Token(((self.generation as usize) << 32) | (self.index as usize + base))
    }

    /// The key a token from [`Key::token`] stands for; None for the reserved tokens below
    /// `base`.
    pub fn from_token(token: Token, base: usize) -> Option<Key> {
        let low = token.0 & 0xffff_ffff;
        let index = u32::try_from(low.checked_sub(base)?).ok()?;
        let generation = u32::try_from(token.0 >> 32).ok()?;
        Some(Key { index, generation })
    }
}

/// One index of the slab.
enum Entry<T> {
    /// Free (on the free list).
    Vacant,
    /// Reserved: the value is out running, or not stored yet ([`Slab::reserve`]).
    Taken,
    /// Holds a value.
    Occupied(T),
}

/// Values at stable, generation-checked indices.
pub struct Slab<T> {
    entries: Vec<Entry<T>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    /// Occupied plus taken entries.
    used: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Slab<T> {
        Slab::new()
    }
}

impl<T> Slab<T> {
    /// An empty slab.
    pub fn new() -> Slab<T> {
        Slab {
            entries: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            used: 0,
        }
    }

    /// Entries in use (stored or taken out).
    pub fn len(&self) -> usize {
        self.used
    }

    /// Whether no entry is in use.
    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    fn allocate(&mut self, entry: Entry<T>) -> Key {
        self.used += 1;
        if let Some(i) = self.free.pop() {
            self.entries[i as usize] = entry;
            return Key {
                index: i,
                generation: self.generations[i as usize],
            };
        }
        // More than 2^32 live entries would need more sockets than a process can open.
        let index = u32::try_from(self.entries.len()).unwrap_or(u32::MAX);
        self.entries.push(entry);
        self.generations.push(0);
        Key {
            index,
            generation: 0,
        }
    }

    /// Stores `value` and returns its key.
    pub fn insert(&mut self, value: T) -> Key {
        self.allocate(Entry::Occupied(value))
    }

    /// Reserves an index without a value yet (register a socket under the key's token first,
    /// then [`Slab::put`] the value that owns it).
    pub fn reserve(&mut self) -> Key {
        self.allocate(Entry::Taken)
    }

    fn is_current(&self, key: Key) -> bool {
        self.generations.get(key.index()) == Some(&key.generation)
    }

    /// Whether `key` still names an entry in use (stored or taken out).
    pub fn contains(&self, key: Key) -> bool {
        self.is_current(key) && !matches!(self.entries[key.index()], Entry::Vacant)
    }

    /// The value of `key`; None if the key is stale, the entry free or taken out.
    pub fn get(&self, key: Key) -> Option<&T> {
        match self.entries.get(key.index()) {
            Some(Entry::Occupied(v)) if self.is_current(key) => Some(v),
            _ => None,
        }
    }

    /// The value of `key`, mutably; None if the key is stale, the entry free or taken out.
    pub fn get_mut(&mut self, key: Key) -> Option<&mut T> {
        if !self.is_current(key) {
            return None;
        }
        match self.entries.get_mut(key.index()) {
            Some(Entry::Occupied(v)) => Some(v),
            _ => None,
        }
    }

    /// Frees the entry of `key` (stored or taken out) and returns its value if it held one.
    /// Keys issued for it become stale. A stale key frees nothing.
    pub fn remove(&mut self, key: Key) -> Option<T> {
        if !self.contains(key) {
            return None;
        }
        let i = key.index();
        let old = std::mem::replace(&mut self.entries[i], Entry::Vacant);
        self.generations[i] = self.generations[i].wrapping_add(1) & GEN_MASK;
        self.free.push(key.index);
        self.used -= 1;
        match old {
            Entry::Occupied(v) => Some(v),
            _ => None,
        }
    }

    /// Takes the value out while it runs; its index stays reserved (same key) until
    /// [`Slab::put`] or [`Slab::remove`].
    pub fn take(&mut self, key: Key) -> Option<T> {
        if !self.is_current(key) {
            return None;
        }
        let entry = self.entries.get_mut(key.index())?;
        if !matches!(entry, Entry::Occupied(_)) {
            return None;
        }
        match std::mem::replace(entry, Entry::Taken) {
            Entry::Occupied(v) => Some(v),
            _ => None,
        }
    }

    /// Puts a value back into its reserved entry; Err(value) if the key is stale or the
    /// entry holds a value (the caller decides what to do with it).
    pub fn put(&mut self, key: Key, value: T) -> Result<(), T> {
        if !self.is_current(key) {
            return Err(value);
        }
        match self.entries.get_mut(key.index()) {
            Some(entry @ Entry::Taken) => {
                *entry = Entry::Occupied(value);
                Ok(())
            }
            _ => Err(value),
        }
    }

    /// Replaces the value of an entry in use (stored or taken out) without freeing it: the
    /// key stays valid. Returns the previous value, or Err(value) for a stale key.
    pub fn replace(&mut self, key: Key, value: T) -> Result<Option<T>, T> {
        if !self.contains(key) {
            return Err(value);
        }
        match std::mem::replace(&mut self.entries[key.index()], Entry::Occupied(value)) {
            Entry::Occupied(v) => Ok(Some(v)),
            _ => Ok(None),
        }
    }

    /// Every stored value with its key (taken-out entries are skipped).
    pub fn iter(&self) -> impl Iterator<Item = (Key, &T)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e {
                Entry::Occupied(v) => Some((self.key_at(i), v)),
                _ => None,
            })
    }

    /// Every stored value with its key, mutably (taken-out entries are skipped).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Key, &mut T)> {
        let generations = &self.generations;
        self.entries
            .iter_mut()
            .enumerate()
            .filter_map(move |(i, e)| match e {
                Entry::Occupied(v) => Some((key_at(generations, i), v)),
                _ => None,
            })
    }

    /// The current key of index `i`.
    fn key_at(&self, i: usize) -> Key {
        key_at(&self.generations, i)
    }

    /// Keys of the stored values `pick` selects (collected, so the caller can then take
    /// them out one by one).
    pub fn keys_where(&self, mut pick: impl FnMut(&T) -> bool) -> Vec<Key> {
        self.iter()
            .filter(|(_, v)| pick(v))
            .map(|(k, _)| k)
            .collect()
    }
}

/// The key of index `i` given the slab's generations.
fn key_at(generations: &[u32], i: usize) -> Key {
    Key {
        index: i as u32,
        generation: generations[i],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_remove_reuse() {
        let mut s = Slab::new();
        let a = s.insert("a");
        let b = s.insert("b");
        assert_eq!(s.len(), 2);
        assert_eq!(s.get(a), Some(&"a"));
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.get(a), None);
        assert_eq!(s.remove(a), None, "a stale key frees nothing");
        let c = s.insert("c");
        assert_eq!(c.index(), a.index(), "the freed index is reused");
        assert_ne!(c, a, "with a new generation");
        assert_eq!(
            s.get(a),
            None,
            "the old key does not reach the new occupant"
        );
        assert_eq!(s.get(c), Some(&"c"));
        assert_eq!(s.remove(a), None);
        assert_eq!(s.get(b), Some(&"b"));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn take_and_put_back() {
        let mut s = Slab::new();
        let a = s.insert(1);
        let v = s.take(a).unwrap();
        assert!(s.contains(a), "a taken entry keeps its index");
        assert_eq!(s.get(a), None);
        assert_eq!(s.take(a), None);
        let b = s.insert(2);
        assert_ne!(a.index(), b.index(), "a taken index is not handed out");
        assert_eq!(s.put(a, v + 10), Ok(()));
        assert_eq!(s.get(a), Some(&11));
        assert_eq!(s.put(a, 5), Err(5), "put needs a taken entry");
        // Removed while taken out: the value is the caller's, the index is freed.
        s.take(b);
        assert_eq!(s.remove(b), None);
        assert!(!s.contains(b));
        assert_eq!(s.put(b, 3), Err(3), "stale after removal");
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn reserve_then_fill_and_replace() {
        let mut s: Slab<&str> = Slab::new();
        let k = s.reserve();
        assert!(s.contains(k));
        assert_eq!(s.get(k), None);
        assert_eq!(s.put(k, "x"), Ok(()));
        assert_eq!(s.replace(k, "y"), Ok(Some("x")));
        assert_eq!(s.get(k), Some(&"y"), "replace keeps the key");
        s.remove(k);
        assert_eq!(s.replace(k, "z"), Err("z"));
    }

    #[test]
    fn tokens_round_trip_and_reserved_ones_are_not_keys() {
        let mut s = Slab::new();
        let mut keys = Vec::new();
        for i in 0..5 {
            keys.push(s.insert(i));
        }
        s.remove(keys[2]);
        let reused = s.insert(9);
        for &k in keys.iter().chain([&reused]) {
            assert_eq!(Key::from_token(k.token(8), 8), Some(k));
        }
        assert_ne!(
            reused.token(8),
            keys[2].token(8),
            "a reused index has a new token"
        );
        assert_eq!(Key::from_token(Token(0), 8), None);
        assert_eq!(Key::from_token(Token(7), 8), None);
        assert_eq!(Key::from_token(Token(8), 8).map(Key::index), Some(0));
    }

    #[test]
    fn generations_wrap_without_reaching_the_top_token() {
        let mut s = Slab::new();
        let mut k = s.insert(0u8);
        s.generations[0] = GEN_MASK;
        k.generation = GEN_MASK;
        s.remove(k);
        let k2 = s.insert(1);
        assert_eq!(k2.generation(), 0);
        assert_ne!(k.token(8), Token(usize::MAX));
    }

    #[test]
    fn iteration_skips_free_and_taken() {
        let mut s = Slab::new();
        let a = s.insert('a');
        let b = s.insert('b');
        let c = s.insert('c');
        s.remove(a);
        s.take(b);
        let seen: Vec<(Key, char)> = s.iter().map(|(k, v)| (k, *v)).collect();
        assert_eq!(seen, vec![(c, 'c')]);
        for (_, v) in s.iter_mut() {
            *v = 'C';
        }
        assert_eq!(s.keys_where(|v| *v == 'C'), vec![c]);
    }
}
