//! Map keys, values, events and names shared by the eBPF programs and userspace.
#![no_std]
