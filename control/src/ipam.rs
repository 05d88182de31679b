//! Address allocation over IPv4 CIDRs and port ranges: the one allocator behind ClusterIPs,
//! NodePorts, Node podCIDRs and LoadBalancer addresses.
//!
//! As kube-apiserver's `pkg/registry/core/service/ipallocator` (a range of items over a
//! CIDR, backed by `allocator.AllocationBitmap`), a [`Range`] numbers the items of one or more
//! CIDRs (single addresses, or blocks of a longer prefix for Node podCIDRs) leaving out the
//! addresses that must never be handed out, and a [`Bitmap`] records which item numbers are
//! taken. CIDR arithmetic is `ipnetwork`'s; this module only maps items to offsets.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

/// Errors of the allocators.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// The item size does not fit in the CIDR.
    #[error("/{item} blocks do not fit in {cidr}")]
    ItemTooLarge { cidr: Ipv4Network, item: u8 },
    /// Two CIDRs of one range overlap.
    #[error("CIDRs {0} and {1} overlap")]
    Overlap(Ipv4Network, Ipv4Network),
    /// The range has no item at all.
    #[error("the range has no usable address")]
    Empty,
    /// The item is not one of the range (kube-apiserver's `ErrNotInRange`).
    #[error("provided IP is not in the valid range")]
    NotInRange,
    /// The item is taken (kube-apiserver's `ErrAllocated`).
    #[error("provided IP is already allocated")]
    Allocated,
    /// No item is free (kube-apiserver's `ErrFull`).
    #[error("range is full")]
    Full,
}

/// Which addresses of a CIDR of single addresses are left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    /// None: every address (and every block) is an item.
    Nothing,
    /// The network and broadcast addresses, for prefixes shorter than /31 (both addresses of
    /// a /31 are usable, RFC 3021).
    NetworkAndBroadcast,
    /// As [`Reserve::NetworkAndBroadcast`], and the first address after the network's, which
    /// kube-apiserver gives the `kubernetes` Service (Service CIDRs) and a node's bridge takes
    /// (pod CIDRs).
    NetworkBroadcastAndFirst,
}

/// One CIDR's share of a range: items `first..first + len` of the range are blocks
/// `skip..skip + len` of `net`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Part {
    net: Ipv4Network,
    skip: u64,
    len: u64,
    first: u64,
}

/// The items of one or more non-overlapping IPv4 CIDRs, numbered in order: each CIDR's blocks of
/// prefix `item` in ascending order (`item` 32: its addresses), less the reserved ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    parts: Vec<Part>,
    item: u8,
}

impl Range {
    /// The addresses of `cidrs` (normalised to their network address), less `reserve`.
    pub fn addresses(cidrs: &[Ipv4Network], reserve: Reserve) -> Result<Self, IpamError> {
        Self::build(cidrs, 32, reserve)
    }

    /// The blocks of prefix `item` of `cidr`, e.g. the /24 podCIDRs of a /16 cluster CIDR.
    pub fn blocks(cidr: Ipv4Network, item: u8) -> Result<Self, IpamError> {
        Self::build(&[cidr], item, Reserve::Nothing)
    }

    fn build(cidrs: &[Ipv4Network], item: u8, reserve: Reserve) -> Result<Self, IpamError> {
        let mut parts: Vec<Part> = Vec::new();
        let mut first = 0;
        for cidr in cidrs {
            let net =
                Ipv4Network::new(cidr.network(), cidr.prefix()).map_err(|_| IpamError::Empty)?;
            if item < net.prefix() || item > 32 {
                return Err(IpamError::ItemTooLarge { cidr: net, item });
            }
            if let Some(other) = parts.iter().find(|p| p.net.overlaps(net)) {
                return Err(IpamError::Overlap(other.net, net));
            }
            let blocks = 1u64 << (item - net.prefix());
            let (skip, tail) = match reserve {
                _ if item != 32 => (0, 0),
                Reserve::Nothing => (0, 0),
                Reserve::NetworkAndBroadcast if net.prefix() >= 31 => (0, 0),
                Reserve::NetworkAndBroadcast => (1, 1),
                Reserve::NetworkBroadcastAndFirst => (2, 1),
            };
            let len = blocks.saturating_sub(skip + tail);
            parts.push(Part {
                net,
                skip,
                len,
                first,
            });
            first += len;
        }
        if first == 0 {
            return Err(IpamError::Empty);
        }
        Ok(Self { parts, item })
    }

    /// The CIDRs of the range.
    pub fn cidrs(&self) -> impl Iterator<Item = Ipv4Network> + '_ {
        self.parts.iter().map(|p| p.net)
    }

    /// The prefix length of the items.
    pub fn item_prefix(&self) -> u8 {
        self.item
    }

    /// The number of items.
    pub fn len(&self) -> u64 {
        self.parts.last().map_or(0, |p| p.first + p.len)
    }

    /// True when the range has no item (never, for a built range).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`th item.
    pub fn item(&self, i: u64) -> Option<Ipv4Network> {
        let part = self
            .parts
            .iter()
            .find(|p| (p.first..p.first + p.len).contains(&i))?;
        let block = part.skip + (i - part.first);
        let step = 1u64 << (32 - u32::from(self.item));
        let addr = u64::from(u32::from(part.net.network())) + block * step;
        Ipv4Network::new(Ipv4Addr::from(u32::try_from(addr).ok()?), self.item).ok()
    }

    /// The `i`th item's (first) address.
    pub fn address(&self, i: u64) -> Option<Ipv4Addr> {
        self.item(i).map(|n| n.network())
    }

    /// The number of the item holding `ip`, if `ip` is in an item of the range.
    pub fn index_of(&self, ip: Ipv4Addr) -> Option<u64> {
        let part = self.parts.iter().find(|p| p.net.contains(ip))?;
        let block = u64::from(u32::from(ip) - u32::from(part.net.network())) >> (32 - self.item);
        (part.skip..part.skip + part.len)
            .contains(&block)
            .then(|| part.first + block - part.skip)
    }

    /// True when `ip` is in an item of the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.index_of(ip).is_some()
    }

    /// The numbers of the items `net` overlaps (a CIDR larger than an item overlaps several).
    pub fn overlapping(&self, net: Ipv4Network) -> impl Iterator<Item = u64> + '_ {
        let lo = u32::from(net.network());
        let hi = u32::from(net.broadcast());
        self.parts.iter().flat_map(move |p| {
            let (plo, phi) = (u32::from(p.net.network()), u32::from(p.net.broadcast()));
            let (from, to) = (lo.max(plo), hi.min(phi));
            let shift = 32 - u32::from(self.item);
            let blocks = if from <= to {
                u64::from((from - plo) >> shift)..u64::from((to - plo) >> shift) + 1
            } else {
                0..0
            };
            blocks
                .filter(move |b| (p.skip..p.skip + p.len).contains(b))
                .map(move |b| p.first + b - p.skip)
        })
    }

    /// Every item, in order.
    pub fn items(&self) -> impl Iterator<Item = Ipv4Network> + '_ {
        (0..self.len()).filter_map(|i| self.item(i))
    }
}

/// Which of `len` item numbers are taken, as kube-apiserver's `AllocationBitmap`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    words: Vec<u64>,
    len: u64,
    taken: u64,
}

impl Bitmap {
    /// All `len` items free.
    pub fn new(len: u64) -> Self {
        let words = usize::try_from(len.div_ceil(64)).unwrap_or(usize::MAX);
        Self {
            words: vec![0; words],
            len,
            taken: 0,
        }
    }

    /// The number of items.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when there is no item.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The number of items taken.
    pub fn taken(&self) -> u64 {
        self.taken
    }

    /// The number of items free.
    pub fn free(&self) -> u64 {
        self.len - self.taken
    }

    fn slot(i: u64) -> (usize, u64) {
        (usize::try_from(i / 64).unwrap_or(usize::MAX), 1 << (i % 64))
    }

    /// True when `i` is taken (items beyond the bitmap are never taken).
    pub fn has(&self, i: u64) -> bool {
        let (w, bit) = Self::slot(i);
        i < self.len && self.words[w] & bit != 0
    }

    /// Takes `i`; false when it was taken already or is beyond the bitmap.
    pub fn set(&mut self, i: u64) -> bool {
        if i >= self.len || self.has(i) {
            return false;
        }
        let (w, bit) = Self::slot(i);
        self.words[w] |= bit;
        self.taken += 1;
        true
    }

    /// Frees `i`; false when it was free.
    pub fn clear(&mut self, i: u64) -> bool {
        if !self.has(i) {
            return false;
        }
        let (w, bit) = Self::slot(i);
        self.words[w] &= !bit;
        self.taken -= 1;
        true
    }

    /// The first free item at or after `start`, wrapping around, for which `also_free` holds:
    /// kube-apiserver's random-scan strategy when `start` is random, first-fit when it is 0.
    /// Skips whole taken words, so a nearly full bitmap costs `len / 64` steps, not `len`.
    pub fn next_free(&self, start: u64, also_free: impl Fn(u64) -> bool) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        let start = start % self.len;
        let mut i = start;
        let mut scanned = 0;
        while scanned < self.len {
            let (w, bit) = Self::slot(i);
            if bit == 1 && self.words[w] == u64::MAX && i + 64 <= self.len {
                let step = 64.min(self.len - scanned);
                scanned += step;
                i = (i + step) % self.len;
                continue;
            }
            if !self.has(i) && also_free(i) {
                return Some(i);
            }
            scanned += 1;
            i = (i + 1) % self.len;
        }
        None
    }
}

/// A [`Range`] with a [`Bitmap`] of its taken items: allocation of addresses or blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocator {
    range: Range,
    used: Bitmap,
}

impl Allocator {
    /// Every item of `range` free.
    pub fn new(range: Range) -> Self {
        let used = Bitmap::new(range.len());
        Self { range, used }
    }

    /// The range allocated from.
    pub fn range(&self) -> &Range {
        &self.range
    }

    /// The bitmap of taken items.
    pub fn bitmap(&self) -> &Bitmap {
        &self.used
    }

    /// Takes the item holding `ip`.
    pub fn allocate(&mut self, ip: Ipv4Addr) -> Result<(), IpamError> {
        let i = self.range.index_of(ip).ok_or(IpamError::NotInRange)?;
        if self.used.set(i) {
            Ok(())
        } else {
            Err(IpamError::Allocated)
        }
    }

    /// Takes every item `net` overlaps (a CIDR held elsewhere, whatever its size); items taken
    /// already stay taken.
    pub fn occupy(&mut self, net: Ipv4Network) {
        let items: Vec<u64> = self.range.overlapping(net).collect();
        for i in items {
            self.used.set(i);
        }
    }

    /// Frees the item holding `ip`; false when it was free or is not in the range.
    pub fn release(&mut self, ip: Ipv4Addr) -> bool {
        self.range.index_of(ip).is_some_and(|i| self.used.clear(i))
    }

    /// True when the item holding `ip` is taken.
    pub fn is_allocated(&self, ip: Ipv4Addr) -> bool {
        self.range.index_of(ip).is_some_and(|i| self.used.has(i))
    }

    /// The first free item at or after item `start` (wrapping) that `also_free` accepts,
    /// without taking it.
    pub fn next_free(
        &self,
        start: u64,
        also_free: impl Fn(Ipv4Network) -> bool,
    ) -> Option<Ipv4Network> {
        let i = self
            .used
            .next_free(start, |i| self.range.item(i).is_some_and(&also_free))?;
        self.range.item(i)
    }

    /// Takes the first free item at or after item `start` (wrapping).
    pub fn allocate_next(&mut self, start: u64) -> Result<Ipv4Network, IpamError> {
        let i = self
            .used
            .next_free(start, |_| true)
            .ok_or(IpamError::Full)?;
        self.used.set(i);
        self.range.item(i).ok_or(IpamError::Full)
    }

    /// The number of free items.
    pub fn free(&self) -> u64 {
        self.used.free()
    }
}

/// An inclusive range of port numbers with a [`Bitmap`] of the taken ones, as kube-apiserver's
/// `portallocator` over the same bitmap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortAllocator {
    lo: u16,
    hi: u16,
    used: Bitmap,
}

impl PortAllocator {
    /// Ports `lo..=hi`, all free.
    pub fn new(lo: u16, hi: u16) -> Self {
        let len = if hi >= lo { u64::from(hi - lo) + 1 } else { 0 };
        Self {
            lo,
            hi,
            used: Bitmap::new(len),
        }
    }

    /// The range's bounds.
    pub fn bounds(&self) -> (u16, u16) {
        (self.lo, self.hi)
    }

    /// True when `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }

    fn index(&self, port: u16) -> Option<u64> {
        self.contains(port).then(|| u64::from(port - self.lo))
    }

    /// Takes `port`.
    pub fn allocate(&mut self, port: u16) -> Result<(), IpamError> {
        let i = self.index(port).ok_or(IpamError::NotInRange)?;
        if self.used.set(i) {
            Ok(())
        } else {
            Err(IpamError::Allocated)
        }
    }

    /// Frees `port`; false when it was free.
    pub fn release(&mut self, port: u16) -> bool {
        self.index(port).is_some_and(|i| self.used.clear(i))
    }

    /// True when `port` is taken.
    pub fn is_allocated(&self, port: u16) -> bool {
        self.index(port).is_some_and(|i| self.used.has(i))
    }

    /// The first free port at or after offset `start` (wrapping) that `also_free` accepts.
    pub fn next_free(&self, start: u64, also_free: impl Fn(u16) -> bool) -> Option<u16> {
        let port = |i: u64| u16::try_from(u64::from(self.lo) + i).ok();
        let i = self
            .used
            .next_free(start, |i| port(i).is_some_and(&also_free))?;
        port(i)
    }

    /// The number of free ports.
    pub fn free(&self) -> u64 {
        self.used.free()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().expect("cidr")
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    #[test]
    fn ipam_service_range_skips_network_first_and_broadcast() {
        let r = Range::addresses(&[net("10.96.0.0/29")], Reserve::NetworkBroadcastAndFirst)
            .expect("range");
        assert_eq!(r.len(), 5);
        assert_eq!(r.address(0), Some(ip("10.96.0.2")));
        assert_eq!(r.address(4), Some(ip("10.96.0.6")));
        assert_eq!(r.address(5), None);
        for outside in ["10.96.0.0", "10.96.0.1", "10.96.0.7", "10.96.0.8"] {
            assert!(!r.contains(ip(outside)), "{outside}");
        }
        assert_eq!(r.index_of(ip("10.96.0.3")), Some(1));
    }

    #[test]
    fn ipam_pool_of_several_cidrs_in_order() {
        let r = Range::addresses(
            &[
                net("172.30.0.0/30"),
                net("172.30.1.5/32"),
                net("172.30.2.0/31"),
            ],
            Reserve::NetworkAndBroadcast,
        )
        .expect("range");
        let all: Vec<Ipv4Addr> = r.items().map(|n| n.network()).collect();
        assert_eq!(
            all,
            [
                "172.30.0.1",
                "172.30.0.2",
                "172.30.1.5",
                "172.30.2.0",
                "172.30.2.1"
            ]
            .map(ip)
            .to_vec()
        );
        assert_eq!(
            Range::addresses(
                &[net("10.0.0.0/24"), net("10.0.0.128/25")],
                Reserve::Nothing
            ),
            Err(IpamError::Overlap(net("10.0.0.0/24"), net("10.0.0.128/25")))
        );
    }

    #[test]
    fn ipam_blocks_and_overlaps() {
        let r = Range::blocks(net("10.244.0.0/16"), 24).expect("range");
        assert_eq!(r.len(), 256);
        assert_eq!(r.item(3), Some(net("10.244.3.0/24")));
        assert_eq!(r.index_of(ip("10.244.3.77")), Some(3));
        let wide: Vec<u64> = r.overlapping(net("10.244.4.0/23")).collect();
        assert_eq!(wide, vec![4, 5]);
        let narrow: Vec<u64> = r.overlapping(net("10.244.9.128/25")).collect();
        assert_eq!(narrow, vec![9]);
        assert_eq!(r.overlapping(net("10.0.0.0/8")).count(), 256);
        assert_eq!(r.overlapping(net("10.245.0.0/24")).count(), 0);
        assert!(matches!(
            Range::blocks(net("10.244.0.0/16"), 8),
            Err(IpamError::ItemTooLarge { .. })
        ));
    }

    #[test]
    fn ipam_allocator_takes_each_item_once() {
        let range = Range::addresses(&[net("10.96.0.0/29")], Reserve::NetworkBroadcastAndFirst)
            .expect("range");
        let mut a = Allocator::new(range);
        a.allocate(ip("10.96.0.4")).expect("free");
        assert_eq!(a.allocate(ip("10.96.0.4")), Err(IpamError::Allocated));
        assert_eq!(a.allocate(ip("10.96.0.1")), Err(IpamError::NotInRange));
        let mut got = vec![a.allocate_next(2).expect("free").network()];
        while let Ok(n) = a.allocate_next(0) {
            got.push(n.network());
        }
        assert_eq!(
            got,
            ["10.96.0.5", "10.96.0.2", "10.96.0.3", "10.96.0.6"]
                .map(ip)
                .to_vec()
        );
        assert_eq!(a.free(), 0);
        assert!(a.release(ip("10.96.0.3")));
        assert!(!a.release(ip("10.96.0.3")));
        assert_eq!(a.next_free(0, |_| true), Some(net("10.96.0.3/32")));
        assert_eq!(a.next_free(0, |n| n.network() != ip("10.96.0.3")), None);
    }

    #[test]
    fn ipam_bitmap_scan_skips_full_words_and_wraps() {
        let mut b = Bitmap::new(200);
        for i in 0..200 {
            assert!(b.set(i));
        }
        assert_eq!(b.next_free(7, |_| true), None);
        b.clear(150);
        b.clear(3);
        assert_eq!(b.next_free(0, |_| true), Some(3));
        assert_eq!(b.next_free(4, |_| true), Some(150));
        assert_eq!(b.next_free(151, |_| true), Some(3));
        assert_eq!(b.next_free(151, |i| i != 3), Some(150));
        assert_eq!(b.taken(), 198);
        assert!(!b.set(200), "beyond the bitmap");
    }

    #[test]
    fn ipam_ports() {
        let mut p = PortAllocator::new(30000, 30002);
        p.allocate(30001).expect("free");
        assert_eq!(p.allocate(30001), Err(IpamError::Allocated));
        assert_eq!(p.allocate(29999), Err(IpamError::NotInRange));
        assert_eq!(p.next_free(1, |_| true), Some(30002));
        assert_eq!(p.next_free(1, |n| n != 30002), Some(30000));
        assert!(p.release(30001));
        assert_eq!(p.free(), 3);
    }
}
