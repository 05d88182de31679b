//! tc programs on the host side of each Pod's veth (tcx links).

mod from_container;
