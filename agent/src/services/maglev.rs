//! Maglev consistent hashing: the lookup table that maps a packet's flow hash to a backend
//! (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load Balancer", NSDI 2016,
//! section 3.4).
//!
//! Every node computes the table on its own and a flow may reach a different node after an
//! ECMP or ingress change, so the table must be a function of the backend *set* alone: the
//! backends are sorted by their stable key before filling, and the per-backend permutation
//! comes from SipHash-2-4 with a fixed key over the key's bytes, which is specified (Aumasson
//! and Bernstein, 2012) and so the same on every build, architecture and Rust version (std's
//! `DefaultHasher` promises none of that).

use siphasher::sip128::SipHasher24;

/// The fixed SipHash key. Changing it reshuffles every table in a cluster at once (an upgrade
/// with mixed versions would send flows of one Service to different backends per node), so it
/// never changes.
const SIP_KEY: (u64, u64) = (0x6b65_656c_736f_6e2d, 0x6d61_676c_6576_2d31);

/// A backend as the table sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MaglevBackend {
    /// The backend id written into the table's slots.
    pub id: u32,
    /// Stable identity of the backend across nodes and restarts, e.g. `10.244.1.5:8080/TCP`.
    /// Its permutation depends only on this.
    pub key: String,
}

/// The backend's preference list (the paper's `permutation[i]`) is
/// `(offset + j * skip) mod size` for `j = 0, 1, ...`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Permutation {
    offset: u64,
    skip: u64,
}

impl Permutation {
    fn new(key: &str, size: u64) -> Self {
        let (h0, h1) = SipHasher24::new_with_keys(SIP_KEY.0, SIP_KEY.1)
            .hash(key.as_bytes())
            .as_u64();
        let offset = h0 % size;
        if size < 2 {
            return Permutation { offset, skip: 1 };
        }
        // The paper's skip, in [1, size-1]. With a prime size every skip is coprime with it and
        // the preference list visits every slot; for any other size walk on to the next coprime
        // skip, so the fill below terminates whatever size it is given (a prime still gives
        // exactly the paper's table).
        let mut skip = h1 % (size - 1) + 1;
        while gcd(skip, size) != 1 {
            skip = skip % (size - 1) + 1;
        }
        Permutation { offset, skip }
    }

    fn slot(self, j: u64, size: u64) -> usize {
        // offset < size and j < size, so the product fits in u64 for any u32 size.
        ((self.offset + (j % size) * self.skip) % size) as usize
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Builds the Maglev lookup table of `size` slots (a prime, normally
/// `keelson_common::limits::MAGLEV_TABLE_SIZE`), each holding the id of a backend.
///
/// The result depends only on the set of `(key, id)` pairs, not on their order. Each backend
/// gets `size / n` or `size / n + 1` slots. No backends (or a size of 0) gives an empty table.
pub fn table(backends: &[MaglevBackend], size: u32) -> Vec<u32> {
    if backends.is_empty() || size == 0 {
        return Vec::new();
    }
    let m = u64::from(size);
    let mut sorted: Vec<&MaglevBackend> = backends.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key).then(a.id.cmp(&b.id)));
    let perms: Vec<Permutation> = sorted.iter().map(|b| Permutation::new(&b.key, m)).collect();

    // The paper's Populate: backends take turns, each claiming the next still-empty slot on
    // its preference list, until every slot is taken.
    let mut slots: Vec<Option<u32>> = vec![None; size as usize];
    let mut next = vec![0u64; sorted.len()];
    let mut filled = 0usize;
    'fill: loop {
        for (i, backend) in sorted.iter().enumerate() {
            let mut c = perms[i].slot(next[i], m);
            while slots[c].is_some() {
                next[i] += 1;
                c = perms[i].slot(next[i], m);
            }
            slots[c] = Some(backend.id);
            next[i] += 1;
            filled += 1;
            if filled == slots.len() {
                break 'fill;
            }
        }
    }
    slots.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// The table size the datapath uses (prime).
    const SIZE: u32 = keelson_common::limits::MAGLEV_TABLE_SIZE;

    fn backends(n: u32) -> Vec<MaglevBackend> {
        (1..=n)
            .map(|i| MaglevBackend {
                id: i,
                key: format!("10.244.{}.{}:8080/TCP", i / 200, i % 200 + 2),
            })
            .collect()
    }

    fn counts(t: &[u32]) -> BTreeMap<u32, usize> {
        let mut c = BTreeMap::new();
        for id in t {
            *c.entry(*id).or_insert(0) += 1;
        }
        c
    }

    fn changed(a: &[u32], b: &[u32]) -> Vec<usize> {
        assert_eq!(a.len(), b.len());
        (0..a.len()).filter(|&i| a[i] != b[i]).collect()
    }

    #[test]
    fn empty_backends_give_an_empty_table() {
        assert!(table(&[], SIZE).is_empty());
        assert!(table(&backends(3), 0).is_empty());
    }

    #[test]
    fn one_backend_takes_every_slot() {
        let t = table(&backends(1), SIZE);
        assert_eq!(t.len(), SIZE as usize);
        assert!(t.iter().all(|&id| id == 1));
    }

    #[test]
    fn every_slot_holds_a_backend_and_shares_differ_by_at_most_one() {
        for n in [2u32, 3, 7, 10, 33, 100, 1021, 1500] {
            let b = backends(n);
            let t = table(&b, SIZE);
            assert_eq!(t.len(), SIZE as usize, "n={n}");
            assert!(t.iter().all(|id| (1..=n).contains(id)), "n={n}");
            let c = counts(&t);
            let lo = (SIZE / n) as usize;
            let hi = SIZE.div_ceil(n) as usize;
            // Round-robin filling: every backend claims one slot per round, so shares are
            // floor(M/N) or ceil(M/N); with N > M some backends get none.
            if n <= SIZE {
                assert_eq!(c.len(), n as usize, "n={n}: every backend has a slot");
            }
            for (id, k) in &c {
                assert!(
                    (lo..=hi).contains(k) || (n > SIZE && *k == 1),
                    "n={n} id={id} k={k}"
                );
            }
        }
    }

    #[test]
    fn input_order_does_not_matter() {
        let b = backends(17);
        let t = table(&b, SIZE);
        let mut reversed = b.clone();
        reversed.reverse();
        assert_eq!(table(&reversed, SIZE), t);
        let mut rotated = b.clone();
        rotated.rotate_left(5);
        assert_eq!(table(&rotated, SIZE), t);
        let mut interleaved: Vec<_> = b.iter().step_by(2).cloned().collect();
        interleaved.extend(b.iter().skip(1).step_by(2).cloned());
        assert_eq!(table(&interleaved, SIZE), t);
    }

    #[test]
    fn ids_do_not_move_slots_keys_do() {
        // The slot layout follows the keys; renumbering ids only relabels the slots.
        let b = backends(5);
        let t = table(&b, SIZE);
        let renumbered: Vec<_> = b
            .iter()
            .map(|x| MaglevBackend {
                id: x.id + 100,
                key: x.key.clone(),
            })
            .collect();
        let t2 = table(&renumbered, SIZE);
        assert!(t.iter().zip(&t2).all(|(a, b)| a + 100 == *b));
    }

    #[test]
    fn permutation_is_pinned_across_builds() {
        // Nodes running different builds must compute identical tables: pin the hash output
        // for a fixed key so a change of hash, key or derivation fails here.
        let p = Permutation::new("10.244.1.5:8080/TCP", u64::from(SIZE));
        assert_eq!(p, PINNED);
        let t = table(&backends(3), SIZE);
        assert_eq!(&t[..16], &PINNED_PREFIX);
    }

    const PINNED: Permutation = Permutation {
        offset: 823,
        skip: 161,
    };
    const PINNED_PREFIX: [u32; 16] = [2, 2, 2, 2, 1, 1, 1, 3, 3, 3, 3, 3, 3, 3, 1, 1];

    /// Removing one of N backends: every slot of the removed backend moves to a survivor; a few
    /// survivors' slots move as well, because the survivors' turns in the fill shift (the
    /// paper's section 3.4 and Figure 13: Maglev trades perfect stability for balance, and the
    /// slack shrinks as M/N grows). Bound asserted: ceil(M/N) + M/16 changed slots. Measured
    /// with M=1021 (worst over every removed backend): N=3 346 (ideal 341), N=5 219 (205),
    /// N=10 131 (103), N=20 92 (52), N=50 77 (21).
    #[test]
    fn removing_a_backend_moves_about_one_nth() {
        for n in [3u32, 5, 10, 20, 50] {
            let b = backends(n);
            let before = table(&b, SIZE);
            let mut worst = 0usize;
            for removed in 1..=n {
                let rest: Vec<_> = b.iter().filter(|x| x.id != removed).cloned().collect();
                let after = table(&rest, SIZE);
                assert!(after.iter().all(|&id| id != removed));
                let ch = changed(&before, &after);
                // Every slot the removed backend held changed (to a survivor).
                let own = before.iter().filter(|&&id| id == removed).count();
                assert!(ch.iter().filter(|&&i| before[i] == removed).count() == own);
                worst = worst.max(ch.len());
                let bound = SIZE.div_ceil(n) as usize + SIZE as usize / 16;
                assert!(
                    ch.len() <= bound,
                    "n={n} removed={removed}: {} slots changed, bound {bound}",
                    ch.len()
                );
            }
            eprintln!(
                "maglev remove: n={n} ideal={} worst={worst}",
                SIZE.div_ceil(n)
            );
        }
    }

    /// Adding one backend to N: every slot the newcomer takes changes, plus the same rebalancing
    /// slack among the others; same bound, ceil(M/(N+1)) + M/16. Measured figures equal the
    /// removal ones (adding is removal run backwards).
    #[test]
    fn adding_a_backend_moves_about_one_n_plus_oneth() {
        for n in [2u32, 4, 9, 19, 49] {
            let all = backends(n + 1);
            let mut worst = 0usize;
            for added in 1..=n + 1 {
                let rest: Vec<_> = all.iter().filter(|x| x.id != added).cloned().collect();
                let before = table(&rest, SIZE);
                let after = table(&all, SIZE);
                let ch = changed(&before, &after);
                let taken = after.iter().filter(|&&id| id == added).count();
                assert!(ch.iter().filter(|&&i| after[i] == added).count() == taken);
                worst = worst.max(ch.len());
                let bound = SIZE.div_ceil(n + 1) as usize + SIZE as usize / 16;
                assert!(
                    ch.len() <= bound,
                    "n={n} added={added}: {} slots changed, bound {bound}",
                    ch.len()
                );
            }
            eprintln!(
                "maglev add: n={n}->{} ideal={} worst={worst}",
                n + 1,
                SIZE.div_ceil(n + 1)
            );
        }
    }

    #[test]
    fn non_prime_sizes_still_fill_every_slot() {
        for size in [1u32, 2, 4, 12, 1000] {
            let t = table(&backends(7), size);
            assert_eq!(t.len(), size as usize);
        }
    }
}
