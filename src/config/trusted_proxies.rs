//! `trusted_proxies`: the CIDRs of the proxies whose headers name the client's address (see
//! [`crate::transport::client_addr`]).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

/// Parses a CIDR such as `10.0.0.0/8` or `::1/128`; a bare address is that one host.
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    match text.parse::<IpAddr>() {
        Ok(address) => Ok(IpNet::from(address)),
        Err(_) => Err(format!(
            "bad CIDR {text:?} in trusted_proxies (use e.g. 10.0.0.0/8, 127.0.0.1/32 or ::1)"
        )),
    }
}

/// `trusted_proxies` in a file: a list of CIDR strings.
pub(super) fn deserialize_cidrs<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|text| parse_cidr(text).map_err(serde::de::Error::custom))
        .collect()
}
