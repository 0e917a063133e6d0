//! TEMPORARY stand-in for `worker::store::prepare`, deleted when the worker lands on main.

use std::path::Path;

/// Stand-in for `worker::store::prepare`: the worker creates its tables itself for now.
pub fn prepare_store(path: &Path) -> Result<(), String> {
    let _ = path;
    Ok(())
}
