//! tc programs (tcx links): on the host side of each Pod's veth (`from_container`) and on the
//! node's uplink, ingress (`from_netdev`) and egress (`to_netdev`).

mod from_container;
mod from_netdev;
mod to_netdev;
