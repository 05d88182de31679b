//! tc programs (tcx links): on the host side of each Pod's veth (`from_container`) and on the
//! node's uplink (`from_netdev`).

mod from_container;
mod from_netdev;
