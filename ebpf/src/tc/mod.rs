//! tc programs (tcx links): on the host side of each Pod's veth, ingress (`from_container`:
//! what the Pod sends) and egress (`to_container`: what the node's stack hands the Pod), and on
//! the node's uplink, ingress (`from_netdev`) and egress (`to_netdev`).

mod from_container;
mod from_netdev;
mod to_container;
mod to_netdev;
