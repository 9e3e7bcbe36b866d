//! `zos net access`: the WireGuard configuration (wg-quick format) for a user's own machine
//! that the owner added as a peer of a deployed network.

use zos_types::{Deployment, NetworkResult, WorkloadSpec};

/// The wg-quick configuration for the peer with public key `pubkey` of network `network` in
/// `d` (as the node returned it, with results). `endpoint` overrides the node's
/// (`ADDRESS:PORT`); `private_key` fills in the peer's own key, else a placeholder says
/// where it goes. The error says what to change.
pub fn access_config(
    d: &Deployment,
    network: &str,
    pubkey: &str,
    endpoint: Option<&str>,
    private_key: Option<&str>,
) -> Result<String, String> {
    let w = d
        .workloads
        .iter()
        .find(|w| w.name.as_str() == network)
        .ok_or_else(|| format!("deployment {:?} has no workload {network:?}", d.name))?;
    let WorkloadSpec::Network(net) = &w.spec else {
        return Err(format!("{network:?} in {:?} is not a network", d.name));
    };
    let peers = net.wireguard.as_ref().map_or(&[][..], |wg| &wg.peers[..]);
    let peer = peers
        .iter()
        .find(|p| p.public_key == pubkey)
        .ok_or_else(|| {
            format!(
                "{pubkey} is not a peer of network {network:?}: add it under wireguard.peers \
             (with a subnet inside {} for your machine, e.g. a /32) and deploy first",
                net.ip_range
            )
        })?;
    let result: Option<NetworkResult> = w
        .result
        .as_ref()
        .and_then(|r| serde_json::from_value(r.data.clone()).ok());
    let end = result.and_then(|r| r.wireguard).ok_or_else(|| {
        format!("network {network:?} is not up with WireGuard yet: wait until its state is ok")
    })?;
    let endpoint = match (endpoint, &end.endpoint) {
        (Some(e), _) => e.to_string(),
        (None, Some(e)) => e.clone(),
        (None, None) => {
            return Err(format!(
                "the node does not say which address it is reached at (its config has no \
                 wireguard_host): pass --endpoint ADDRESS:{}",
                end.listen_port
            ))
        }
    };
    let address = peer.subnet.hosts().next().unwrap_or(peer.subnet.addr());
    let key_line = match private_key {
        Some(k) => format!("PrivateKey = {k}"),
        None => "PrivateKey = <the private key whose public key is above: wg genkey made it>"
            .to_string(),
    };
    Ok(format!(
        "# Network {network:?} of deployment {:?}, for the peer {pubkey}.\n\
         # Save as zos-{network}.conf and run: wg-quick up ./zos-{network}.conf\n\
         [Interface]\n\
         Address = {address}/32\n\
         {key_line}\n\
         \n\
         [Peer]\n\
         PublicKey = {}\n\
         Endpoint = {endpoint}\n\
         AllowedIPs = {}\n\
         PersistentKeepalive = 25\n",
        d.name, end.public_key, net.ip_range
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_names_the_node_key_endpoint_and_range() {
        let key = "yqtQfO+slSAdeu50WF6RCSrx6OXTk0FqEMYGOxn7lBY=";
        let mut d: Deployment = serde_json::from_value(serde_json::json!({
            "name": "app", "version": 0, "owner": "00".repeat(32), "node": "00".repeat(32),
            "workloads": [{"name": "lan", "version": 0, "type": "network", "data": {
                "ip_range": "10.20.0.0/16", "subnet": "10.20.1.0/24",
                "wireguard": {"peers": [{"subnet": "10.20.200.5/32", "public_key": key}]}},
                "result": {"state": "ok", "message": "up", "created": 0, "data": {
                    "gateway": "10.20.1.1", "subnet": "10.20.1.0/24",
                    "wireguard": {"public_key": "NODEKEY", "listen_port": 24000}}}}]
        }))
        .unwrap();
        let err = access_config(&d, "lan", key, None, None).unwrap_err();
        assert!(err.contains("--endpoint ADDRESS:24000"), "{err}");
        let conf = access_config(&d, "lan", key, Some("192.0.2.1:24000"), Some("PRIV")).unwrap();
        for line in [
            "Address = 10.20.200.5/32",
            "PrivateKey = PRIV",
            "PublicKey = NODEKEY",
            "Endpoint = 192.0.2.1:24000",
            "AllowedIPs = 10.20.0.0/16",
        ] {
            assert!(conf.contains(line), "{line} in\n{conf}");
        }
        let err = access_config(&d, "lan", "other", None, None).unwrap_err();
        assert!(err.contains("is not a peer of network"), "{err}");
        d.workloads[0].result = None;
        let err = access_config(&d, "lan", key, None, None).unwrap_err();
        assert!(err.contains("not up with WireGuard yet"), "{err}");
    }
}
