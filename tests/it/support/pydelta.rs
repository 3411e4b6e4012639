//! The `deltalake` Python package (delta-rs's binding, from PyPI, pinned), reading tables
//! back as a user of the cold path would: installed on first use into a virtual
//! environment under `$HOME/.cache/weir-test-tools` ([`super::tools`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const PACKAGES: &[&str] = &["deltalake==1.6.6", "pyarrow"];
const VENV: &str = "deltalake-1.6.6";

/// Every row of the table at `uri` as a JSON object (timestamps as epoch microseconds),
/// read by Python's `deltalake` with `storage_options`; `env` is the Python process's
/// extra environment.
pub fn rows(
    uri: &str,
    storage_options: &HashMap<String, String>,
    env: &[(&str, &str)],
) -> Vec<serde_json::Value> {
    const SCRIPT: &str = r#"
import json, sys
import pyarrow as pa
from deltalake import DeltaTable
uri, options = sys.argv[1], json.loads(sys.argv[2])
table = DeltaTable(uri, storage_options=options).to_pyarrow_table()
columns = {}
for name in table.column_names:
    column = table.column(name)
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.timestamp("us")).cast(pa.int64())
    columns[name] = column.to_pylist()
for i in range(table.num_rows):
    print(json.dumps({k: v[i] for k, v in columns.items() if v[i] is not None}))
"#;
    let output = Command::new(python())
        .arg("-c")
        .arg(SCRIPT)
        .arg(uri)
        .arg(serde_json::to_string(storage_options).unwrap())
        .envs(env.iter().copied())
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "Python's deltalake could not read {uri}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON row"))
        .collect()
}

/// The virtual environment's Python, once its packages are installed (`.installed` is
/// written last: a venv whose install failed is made again).
fn python() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let marker = super::tools::installed(&format!("{VENV}/.installed"), |prefix| {
            let venv = prefix.join(VENV);
            super::tools::run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
            super::tools::run(
                Command::new(venv.join("bin/pip"))
                    .args(["install", "--quiet", "--disable-pip-version-check"])
                    .args(PACKAGES),
            );
            std::fs::write(venv.join(".installed"), PACKAGES.join("\n")).unwrap();
        });
        marker.with_file_name("bin").join("python")
    })
}
