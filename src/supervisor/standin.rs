//! TEMPORARY stand-ins for pieces other engineers are landing (config loading, the proxy
//! loop). Deleted as each lands on main.

use std::path::Path;

use crate::config::ProxySettings;

/// Stand-in for `proxy::LoopInputs`.
#[allow(dead_code)]
pub struct LoopInputs {
    pub name: String,
    pub listener: std::net::TcpListener,
    pub backends: Vec<crate::proxy::control::BackendSpec>,
    pub settings: ProxySettings,
    pub control: Option<std::os::unix::net::UnixStream>,
}

/// Stand-in for `proxy::run_loop`: answers control messages, serves nothing.
pub fn run_loop(inputs: LoopInputs) -> i32 {
    use crate::proxy::control::{Down, Up};
    use std::io::{BufRead, Write};
    let _keep = inputs.listener;
    let Some(control) = inputs.control else {
        return 1;
    };
    let Ok(mut w) = control.try_clone() else {
        return 1;
    };
    for line in std::io::BufReader::new(control).lines() {
        let Ok(line) = line else { return 0 };
        let Ok(msg) = serde_json::from_str::<Down>(&line) else {
            continue;
        };
        let seq = match &msg {
            Down::Backends { seq, .. } | Down::Settings { seq, .. } | Down::Drain { seq, .. } => {
                *seq
            }
        };
        let ack = Up::Ack {
            seq,
            ok: true,
            error: None,
        };
        let mut out = serde_json::to_string(&ack).unwrap_or_default();
        out.push('\n');
        let _ = w.write_all(out.as_bytes());
        if matches!(msg, Down::Drain { .. }) {
            return 0;
        }
    }
    0
}

/// Stand-in for `worker::store::prepare`: the worker creates its tables itself for now.
pub fn prepare_store(path: &Path) -> Result<(), String> {
    let _ = path;
    Ok(())
}
