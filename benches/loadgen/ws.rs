//! Opening WebSocket (and plain TCP) client connections, optionally from a chosen loopback source address.
//!
//! One source address has about 28k ephemeral ports (`net.ipv4.ip_local_port_range`), so runs
//! with more connections bind each client socket to `127.0.0.2`, `127.0.0.3`, … before
//! connecting (the whole of 127.0.0.0/8 is loopback on Linux).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::Context;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// Where to connect: the URL, its resolved address and the subprotocol to offer.
#[derive(Debug, Clone)]
pub struct Endpoint {
    url: String,
    addr: SocketAddr,
    subprotocol: Option<&'static str>,
}

impl Endpoint {
    pub async fn resolve(url: &str, subprotocol: Option<&'static str>) -> anyhow::Result<Self> {
        let addr = resolve(url).await?;
        Ok(Self {
            url: url.to_owned(),
            addr,
            subprotocol,
        })
    }

    /// Opens one connection; `source` binds the client socket first.
    pub async fn connect(&self, source: Option<IpAddr>) -> anyhow::Result<Ws> {
        let stream = connect_tcp(self.addr, source).await?;
        let mut request = self.url.as_str().into_client_request()?;
        if let Some(protocol) = self.subprotocol {
            request
                .headers_mut()
                .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
        }
        // Small buffers: an idle run holds tens of thousands of these.
        let config = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .write_buffer_size(0);
        let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .with_context(|| format!("WebSocket handshake with {}", self.url))?;
        Ok(ws)
    }
}

/// A TCP connection to `addr` (no Nagle delay); `source` binds the client socket first.
pub async fn connect_tcp(addr: SocketAddr, source: Option<IpAddr>) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("binding the client socket to {ip}"))?;
    }
    let stream = socket
        .connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The host and port of an `http://`/`ws://` URL, resolved.
pub async fn resolve(url: &str) -> anyhow::Result<SocketAddr> {
    let uri: Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
    let host = uri.host().with_context(|| format!("no host in {url}"))?;
    let port = uri.port_u16().unwrap_or(80);
    let mut addrs = tokio::net::lookup_host((host, port)).await?;
    addrs
        .find(SocketAddr::is_ipv4)
        .with_context(|| format!("{host} has no IPv4 address"))
}

/// The source address of connection `index` when each address carries at most `per_address`
/// connections: none (the default 127.0.0.1) for the first batch, then 127.0.0.2, 127.0.0.3, …
pub fn source_address(index: usize, per_address: usize) -> Option<IpAddr> {
    let batch = index / per_address.max(1);
    (batch > 0).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, (1 + batch).min(254) as u8)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_spread_in_batches() {
        assert_eq!(source_address(0, 25_000), None);
        assert_eq!(source_address(24_999, 25_000), None);
        assert_eq!(source_address(25_000, 25_000), Some("127.0.0.2".parse().unwrap()));
        assert_eq!(source_address(60_000, 25_000), Some("127.0.0.3".parse().unwrap()));
    }
}
