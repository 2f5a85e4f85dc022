use std::collections::BTreeMap;

use serde::Serialize;

use crate::cli::{GlobalOpts, ListArgs, ListFormat};
use crate::delegate::Delegate;
use crate::error::Result;
use crate::state::{OciState, Store};
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
    // Each delegate found once; None when its binary is gone.
    let mut delegates: BTreeMap<String, Option<Delegate>> = BTreeMap::new();
    let mut entries: Vec<Entry> = Vec::new();
    for id in store.ids()? {
        // A container deleted while we list is simply not listed.
        let Ok(Some(record)) = store.load(&id) else {
            continue;
        };
        let state = if router::is_delegate(&record.backend) {
            let d = delegates.entry(record.backend.clone()).or_insert_with(|| {
                router::open_delegate(&record.backend, &settings, store.root()).ok()
            });
            let (status, pid) = match d {
                Some(d) => forward::live(d, &id),
                None => (crate::state::Status::Stopped, 0),
            };
            OciState {
                pid,
                ..record.oci_state(status)
            }
        } else {
            record.oci_state(lifecycle::status(&store, &record))
        };
        entries.push(Entry {
            state,
            backend: record.backend.clone(),
        });
    }
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
