//! The maps of the datapath, declared from the one list in `keelson_common::maps`: names,
//! kinds, layouts and sizes are written there, each kind becomes its `aya_ebpf` type here.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};

/// Declares one pinned static per entry of the list.
macro_rules! declare_maps {
    ($(
        $(#[$doc:meta])*
        $konst:ident $field:ident $name:tt
        $kind:ident < $k:ty, $v:ty > ($max:expr, $flags:expr);
    )*) => {$(
        $(#[$doc])*
        #[map(name = $name)]
        pub static $konst: declare_maps!(@ty $kind $k, $v) = declare_maps!(@new $kind $max, $flags);
    )*};
    (@ty Hash $k:ty, $v:ty) => { HashMap<$k, $v> };
    (@ty Lru $k:ty, $v:ty) => { LruHashMap<$k, $v> };
    (@ty Array $k:ty, $v:ty) => { Array<$v> };
    (@ty PerCpuArray $k:ty, $v:ty) => { PerCpuArray<$v> };
    (@ty Lpm $k:ty, $v:ty) => { LpmTrie<$k, $v> };
    (@ty RingBuf $k:ty, $v:ty) => { RingBuf };
    (@new Hash $max:expr, $flags:expr) => { HashMap::pinned($max, $flags) };
    (@new Lru $max:expr, $flags:expr) => { LruHashMap::pinned($max, $flags) };
    (@new Array $max:expr, $flags:expr) => { Array::pinned($max, $flags) };
    (@new PerCpuArray $max:expr, $flags:expr) => { PerCpuArray::pinned($max, $flags) };
    (@new Lpm $max:expr, $flags:expr) => { LpmTrie::pinned($max, $flags) };
    (@new RingBuf $max:expr, $flags:expr) => { RingBuf::pinned($max, $flags) };
}

keelson_common::datapath_maps!(declare_maps);
