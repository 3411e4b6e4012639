//! The simulated fleet: device ids, their keys (derived from one fleet key, as an
//! enrollment group derives them, so the generator and the registry agree without a key
//! file), the CSV `weir devices import` takes, and each device's MQTT credentials.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use weir::registry::{keys, sas};

/// The IoT hub's API version the SDKs of 2021 and later announce in the username.
const API_VERSION: &str = "2021-04-12";

/// Devices `{prefix}{first:07}` … `{prefix}{first + count - 1:07}`.
pub struct Fleet {
    prefix: String,
    first: u32,
    count: u32,
    fleet_key: Vec<u8>,
}

impl Fleet {
    pub fn new(prefix: &str, first: u32, count: u32, fleet_key: &str) -> anyhow::Result<Self> {
        let fleet_key = keys::decode(fleet_key)
            .filter(|key| key.len() >= 16)
            .context("--fleet-key must be Base64 of at least 16 bytes")?;
        anyhow::ensure!(count > 0, "--devices must be at least 1");
        Ok(Self {
            prefix: prefix.to_owned(),
            first,
            count,
            fleet_key,
        })
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// The id of the `n`th device of this run (0-based).
    pub fn id(&self, n: u32) -> String {
        format!("{}{:07}", self.prefix, self.first + n)
    }

    /// The device's primary key, Base64 (what the registry stores).
    pub fn key(&self, id: &str) -> String {
        keys::derive(&self.fleet_key, id)
    }

    /// Writes the import file `weir devices import` reads: `id,primary_key`, one device a
    /// line.
    pub fn write_csv(&self, path: &Path) -> anyhow::Result<()> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut out = std::io::BufWriter::new(file);
        writeln!(out, "id,primary_key")?;
        for n in 0..self.count {
            let id = self.id(n);
            writeln!(out, "{id},{}", self.key(&id))?;
        }
        out.flush()
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// The CONNECT username and password (a SAS token valid for `ttl_s`) of device `id`,
    /// as the device SDKs build them for a hub named `hub_host`.
    pub fn credentials(&self, hub_host: &str, id: &str, ttl_s: u64) -> (String, String) {
        let username = format!("{hub_host}/{id}/?api-version={API_VERSION}");
        let expiry = jiff::Timestamp::now().as_second().max(0) as u64 + ttl_s;
        // `derive` gives Base64, which always decodes.
        let key = keys::decode(&self.key(id)).unwrap_or_default();
        let resource = format!("{hub_host}/{}", sas::device_resource(id));
        (username, sas::sign(&resource, &key, expiry))
    }
}
