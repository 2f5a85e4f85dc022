use std::collections::BTreeMap;

use serde::Serialize;

use crate::cli::{GlobalOpts, ListArgs, ListFormat};
use crate::config::Settings;
use crate::error::Result;
use crate::state::{OciState, Record, Status, Store};
use crate::{forward, lifecycle, router};

/// One container of `list --format json`: runc's fields and its backend.
#[derive(Serialize)]
struct Entry {
    #[serde(flatten)]
    state: OciState,
    backend: String,
}

pub fn run(global: &GlobalOpts, args: &ListArgs) -> Result<i32> {
    let store = Store::open(&global.root)?;
    let settings = router::load_settings()?;
    // A container deleted while we list is simply not listed.
    let records: Vec<Record> = store
        .ids()?
        .iter()
        .filter_map(|id| store.load(id).ok().flatten())
        .collect();
    let live = delegated(&records, &settings, &store);
    let entries: Vec<Entry> = records
        .iter()
        .map(|record| {
            let state = if router::is_delegate(&record.backend) {
                let (status, pid) = live
                    .get(&record.id)
                    .copied()
                    .unwrap_or((Status::Stopped, 0));
                OciState {
                    pid,
                    ..record.oci_state(status)
                }
            } else {
                record.oci_state(lifecycle::status(&store, record))
            };
            Entry {
                state,
                backend: record.backend.clone(),
            }
        })
        .collect();
    if args.quiet {
        for e in &entries {
            println!("{}", e.state.id);
        }
        return Ok(0);
    }
    match args.format {
        ListFormat::Json => println!("{}", serde_json::to_string(&entries).expect("serializes")),
        ListFormat::Table => {
            let rows: Vec<[String; 7]> = entries
                .iter()
                .map(|e| {
                    let s = &e.state;
                    [
                        s.id.clone(),
                        s.pid.to_string(),
                        s.status.to_string(),
                        s.bundle.display().to_string(),
                        s.created.clone(),
                        s.owner.clone(),
                        e.backend.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                super::table(
                    &["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER", "BACKEND"],
                    &rows
                )
            );
        }
    }
    Ok(0)
}

/// Status and pid of each delegated container its runtime lists, one run
/// per runtime; a runtime whose binary is gone lists none.
fn delegated(
    records: &[Record],
    settings: &Settings,
    store: &Store,
) -> BTreeMap<String, (Status, i32)> {
    let mut by_backend: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in records.iter().filter(|r| router::is_delegate(&r.backend)) {
        by_backend.entry(&r.backend).or_default().push(&r.id);
    }
    let mut live = BTreeMap::new();
    for (name, ids) in by_backend {
        if let Ok(d) = router::open_delegate(name, settings, store.root()) {
            live.extend(forward::live(&d, &ids));
        }
    }
    live
}

#[cfg(test)]
mod tests {
    #[test]
    fn table_columns_line_up() {
        let t = crate::commands::table(
            &["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"],
            &[[
                "c1".into(),
                "42".into(),
                "running".into(),
                "/b".into(),
                "t".into(),
                "".into(),
            ]],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0].find("PID"), lines[1].find("42"));
        assert_eq!(lines[0].find("STATUS"), lines[1].find("running"));
    }
}
